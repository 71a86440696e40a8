"""MAD curation (supplementary F): movie include/exclude lists, split lists, duration checks.

MAD-train lists 488 movies; 3 have no raw video (4797, 4839, 5900) and 3 were removed because their
annotation duration does not match the movie (4017, 4902, 5634), leaving 482 movies / 326,632 ADs (Table F.4).
The builder applies these lists and prints what it kept and dropped, so every shard set says how it was made.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

MAD_TRAIN_MISSING = ("4797", "4839", "5900")  # no raw movie (tt0395571, tt4846340, tt0408306)
MAD_TRAIN_DURATION_MISMATCH = ("4017", "4902", "5634")
PRESETS = {
    "mad-train": MAD_TRAIN_MISSING + MAD_TRAIN_DURATION_MISMATCH,
    "mad-train-missing": MAD_TRAIN_MISSING,
    "mad-train-duration": MAD_TRAIN_DURATION_MISMATCH,
}
DURATION_TOLERANCE_S = 60.0  # supplementary F flags movies whose duration differs by more than one minute


def load_movie_list(spec: str) -> list[str]:
    """Movie ids from ``preset:NAME``, a JSON list file, or a text file (one id a line, ``#`` comments).

    Raises:
        ValueError: unknown preset or unreadable file (one line).
    """
    if spec.startswith("preset:"):
        name = spec.removeprefix("preset:")
        if name not in PRESETS:
            raise ValueError(f"unknown movie-list preset {name!r}; known: {sorted(PRESETS)}")
        return list(PRESETS[name])
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec}: no such movie-list file (or use preset:{'|'.join(sorted(PRESETS))})")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{spec}: expected a JSON list of movie ids")
        return [str(x) for x in data]
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [x for x in ids if x]


def load_split(path: str | os.PathLike, key: str) -> list[str]:
    """The movie ids of split ``key`` in a split file like ``mad_split.json`` (``{"TRAIN": [...], ...}``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read split file: {e}") from None
    if key not in data:
        raise ValueError(f"{path}: no split {key!r}; available: {sorted(data)}")
    return [str(x) for x in data[key]]


def load_duration_reference(
    path: str | os.PathLike, *, unit: str = "minutes", imdb_map: str | os.PathLike | None = None
) -> dict[str, float]:
    """Reference movie durations in seconds, keyed by movie id.

    Accepted files: a JSON object ``{movie_or_imdb_id: duration}``, or an IMDb ``title.basics.tsv`` (columns
    ``tconst`` and ``runtimeMinutes``, always minutes). With ``imdb_map`` (``mad2imdb.json``: movie → ttID),
    keys that are IMDb ids are mapped back to movie ids.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such duration reference file")
    scale = {"minutes": 60.0, "seconds": 1.0}.get(unit)
    if scale is None:
        raise ValueError(f"duration unit must be 'minutes' or 'seconds', got {unit!r}")
    ref: dict[str, float] = {}
    if path.suffix in (".tsv", ".tab"):
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                minutes = row.get("runtimeMinutes", "")
                if minutes and minutes != "\\N":
                    ref[row["tconst"]] = float(minutes) * 60.0
    else:
        for k, v in json.loads(path.read_text(encoding="utf-8")).items():
            if v is not None:
                ref[str(k)] = float(v) * scale
    if imdb_map is not None:
        mapping = json.loads(Path(imdb_map).read_text(encoding="utf-8"))
        for movie, tt in mapping.items():
            if tt in ref and movie not in ref:
                ref[movie] = ref[tt]
    return ref


@dataclass
class CurationReport:
    """Which movies were kept and why the others were dropped (``dropped[movie] = reason``)."""

    kept: list[str]
    dropped: dict[str, str] = field(default_factory=dict)
    duration_flags: dict[str, tuple[float, float]] = field(default_factory=dict)  # movie: (duration, reference)
    missing_requested: list[str] = field(default_factory=list)  # in include/split lists but not annotated


def curate(
    movies: list[str],
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    durations: dict[str, float | None] | None = None,
    reference: dict[str, float] | None = None,
    drop_duration_mismatch: bool = False,
    tolerance_s: float = DURATION_TOLERANCE_S,
) -> CurationReport:
    """Select movies: keep ``include`` (all when ``None``), remove ``exclude``, check durations.

    Args:
        movies: movie ids present in the annotations.
        include: only these movies (a split list), or ``None`` for all.
        exclude: movies to remove (presets or files via :func:`load_movie_list`).
        durations: each movie's duration in seconds (annotation ``movie_duration`` or feature length).
        reference: reference durations in seconds; |Δ| > ``tolerance_s`` is flagged (and dropped when
            ``drop_duration_mismatch``).
        drop_duration_mismatch: drop flagged movies instead of only reporting them.
        tolerance_s: allowed |Δ| in seconds.

    Returns:
        A :class:`CurationReport`; ``kept`` preserves the sorted order of ``movies``.
    """
    report = CurationReport(kept=[])
    present = set(movies)
    include_set = set(include) if include is not None else None
    exclude_set = set(exclude or [])
    if include_set is not None:
        report.missing_requested = sorted(include_set - present)
        if report.missing_requested:
            logger.warning(
                "%d requested movies have no annotations: %s",
                len(report.missing_requested),
                ", ".join(report.missing_requested[:10]),
            )
    for movie in sorted(movies):
        if include_set is not None and movie not in include_set:
            report.dropped[movie] = "not in split/include list"
            continue
        if movie in exclude_set:
            report.dropped[movie] = "excluded"
            continue
        if reference is not None and durations is not None:
            dur, ref = durations.get(movie), reference.get(movie)
            if dur is not None and ref is not None and abs(dur - ref) > tolerance_s:
                report.duration_flags[movie] = (dur, ref)
                logger.warning(
                    "%s: duration %.1f min vs reference %.1f min (|Δ| > %.0f s)%s",
                    movie,
                    dur / 60,
                    ref / 60,
                    tolerance_s,
                    "; dropped" if drop_duration_mismatch else "",
                )
                if drop_duration_mismatch:
                    report.dropped[movie] = "duration mismatch"
                    continue
        report.kept.append(movie)
    return report
