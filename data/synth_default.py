"""The embedded SynthMAD default: generate it and shard it on first use, reuse it afterwards.

Every launcher falls back to this when no shards are configured, so ``deepspeed launch/stage2.sh`` runs on a
fresh machine with no data. It goes through the same ``distinctad-shards`` commands a user runs on real MAD data
(and logs them), and the builder's resumability makes a second call almost free.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from distinctad.data import cli
from distinctad.data.kinds import get_kind

logger = logging.getLogger(__name__)

SPLITS = {"train": "TRAIN", "eval": "EVAL"}


def run_shards_command(args: list[str]) -> None:
    """Run ``distinctad-shards ARGS`` in-process, logging it as the command a user would type."""
    logger.info("$ distinctad-shards %s", shlex.join(args))
    rc = cli.main(args)
    if rc:
        raise RuntimeError(f"distinctad-shards {args[0]} failed (exit {rc})")


def ensure_synthmad(
    root: str | Path,
    *,
    kinds: tuple[str, ...] = ("window",),
    movies: int = 4,
    ads_per_movie: int = 48,
    seed: int = 0,
    feature_dim: int = 512,
    maxcount: int = 2,
    progress: bool = False,
) -> dict[str, str]:
    """SynthMAD under ``root`` with shards of ``kinds``; returns ``{"<kind>-<split>": shard_dir}``.

    ``maxcount`` is small so that even the tiny default has several shards per split (training needs at least
    one shard per worker and rank).
    """
    root = Path(root)
    synth = root / "synth"
    inputs = {"features": synth / "features.h5", "videos": synth / "videos"}  # what each kind may read
    need_videos = any("videos" in get_kind(kind).inputs for kind in kinds)
    if not (synth / "annotations.json").is_file() or (need_videos and not (synth / "videos").is_dir()):
        run_shards_command(
            [
                "synth",
                "--out",
                str(synth),
                "--movies",
                str(movies),
                "--ads-per-movie",
                str(ads_per_movie),
                "--seed",
                str(seed),
                "--features",
                "--feature-dim",
                str(feature_dim),
                *(["--videos"] if need_videos else []),
            ]
        )
    out: dict[str, str] = {}
    for kind in kinds:
        for split, key in SPLITS.items():
            shard_dir = root / "shards" / f"{kind}-{split}"
            source = [arg for name in get_kind(kind).inputs for arg in (f"--{name}", str(inputs[name]))]
            run_shards_command(
                [
                    "build",
                    "--annotations",
                    str(synth / "annotations.json"),
                    *source,
                    "--kind",
                    kind,
                    "--split",
                    split,
                    "--split-file",
                    str(synth / "splits.json"),
                    "--split-key",
                    key,
                    "--maxcount",
                    str(maxcount),
                    "--out",
                    str(shard_dir),
                    *([] if progress else ["--no-progress"]),
                ]
            )
            out[f"{kind}-{split}"] = str(shard_dir)
    return out
