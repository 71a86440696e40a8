"""The recon job's ADs: training and eval sets read from an annotation file (or the SynthMAD default) and split by
movie (:func:`load_data`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from distinctad.common import resolve_path
from distinctad.data.annotations import AD, read_annotations
from distinctad.train.core import distributed as D
from distinctad.train.core.config import ConfigError
from distinctad.train.recon.config import ReconDataArgs, ReconJob

logger = logging.getLogger(__name__)


@dataclass
class ReconData:
    """The ADs of one recon run."""

    train: list[AD]
    """ADs the projector trains on (non-empty sentences)."""
    eval: list[AD]
    """ADs reconstructed and scored."""


def evenly_spaced(items: list, k: int) -> list:
    """``k`` items spread evenly over ``items`` (all of them when k is 0 or at least their number)."""
    if not k or k >= len(items):
        return list(items)
    return [items[(i * len(items)) // k] for i in range(k)]


def _read(path: str, d: ReconDataArgs) -> list[AD]:
    """The non-empty ADs of one annotation file; a missing or malformed file is a one-line ConfigError.

    A relative path that does not exist from the working directory is looked up in the source checkout, so the
    shipped ``data/assets/madeval_anno.csv`` of the YAMLs is found from any directory.
    """
    path = str(resolve_path(path))
    if not Path(path).is_file():
        raise ConfigError(f"annotation file not found: {path}")
    try:
        ads = read_annotations(
            path, columns=d.columns or None, bad_utf8=d.bad_utf8, timestamp_field=d.timestamp_field
        ).ads
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return [a for a in ads if a.sentence.strip()]


def _pick(ads: list[AD], movies: list[str], path: str, what: str) -> list[AD]:
    """The ADs of ``movies`` (all when empty); a movie the file lacks is a ConfigError naming ``data.{what}_movies``."""
    if not movies:
        return ads
    present = {a.movie for a in ads}
    missing = [m for m in movies if m not in present]
    if missing:
        raise ConfigError(
            f"data.{what}_movies: movie '{missing[0]}' is not in {path} (it has e.g. {sorted(present)[:3]})"
        )
    wanted = set(movies)
    return [a for a in ads if a.movie in wanted]


def load_data(cfg: ReconJob) -> ReconData:
    """Training and eval ADs as the data section says (the SynthMAD default when no annotation file is given)."""
    d = cfg.data
    if not d.train_annotations:
        from distinctad.data.synth_default import ensure_synthmad

        if D.is_master():
            ensure_synthmad(d.synth_dir, kinds=())
        D.barrier()
        synth = Path(d.synth_dir) / "synth"
        d.train_annotations = str(synth / "annotations.json")
        splits = json.loads((synth / "splits.json").read_text())
        d.train_movies = d.train_movies or list(splits["TRAIN"])
        d.eval_movies = d.eval_movies or list(splits["EVAL"])
    train_path, eval_path = d.train_annotations, d.eval_annotations or d.train_annotations
    train_all = _read(train_path, d)
    eval_all = train_all if eval_path == train_path else _read(eval_path, d)
    eval_ads = _pick(eval_all, d.eval_movies, eval_path, "eval")
    train_ads = _pick(train_all, d.train_movies, train_path, "train")
    if d.exclude_eval_movies:
        eval_movies = {a.movie for a in eval_ads}
        train_ads = [a for a in train_ads if a.movie not in eval_movies]
    elif eval_path == train_path and {a.movie for a in eval_ads} & {a.movie for a in train_ads}:
        logger.warning("the training ADs include eval movies (data.exclude_eval_movies is false)")
    if not train_ads:
        raise ConfigError(
            f"no training ADs left in {train_path} (after data.train_movies and removing the eval "
            "movies); list data.eval_movies, or give a separate data.eval_annotations"
        )
    if not eval_ads:
        raise ConfigError(f"no eval ADs in {eval_path}")
    data = ReconData(train=evenly_spaced(train_ads, d.max_train_ads), eval=evenly_spaced(eval_ads, d.max_eval_ads))
    logger.info(
        "reconstruction data: %d training ADs over %d movies, %d eval ADs over %d movies",
        len(data.train),
        len({a.movie for a in data.train}),
        len(data.eval),
        len({a.movie for a in data.eval}),
    )
    return data
