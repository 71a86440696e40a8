"""``distinctad-train JOB [CONFIG.yaml] [--section.key VALUE ...]``: the entry point of every training job.

The launchers in ``launch/`` call this (directly, or once per rank under the ``deepspeed`` launcher, which also
passes ``--local_rank``; the rank is read from the environment instead).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from distinctad.common import init_logger
from distinctad.train.core.config import ConfigError, load_config

logger = logging.getLogger(__name__)


def _trivial() -> tuple[type, Callable[[Any], dict]]:
    from distinctad.train.core.loop import fit
    from distinctad.train.trivial.task import TrivialJob, TrivialTask

    return TrivialJob, lambda cfg: fit(TrivialTask(cfg), cfg, job="trivial")


def _stage1() -> tuple[type, Callable[[Any], dict]]:
    from distinctad.train.stage1.task import Stage1Job, run

    return Stage1Job, run


def _stage2() -> tuple[type, Callable[[Any], dict]]:
    from distinctad.train.stage2.task import Stage2Job, run

    return Stage2Job, run


def _recon() -> tuple[type, Callable[[Any], dict]]:
    from distinctad.train.recon.task import ReconJob, run

    return ReconJob, run


# job name -> lazy (config class, runner); imports stay lazy so --help is instant.
JOBS: dict[str, Callable[[], tuple[type, Callable[[Any], dict]]]] = {
    "trivial": _trivial,
    "stage1": _stage1,
    "stage2": _stage2,
    "recon": _recon,
}

USAGE = """usage: distinctad-train JOB [CONFIG.yaml] [--section.key VALUE ...]

Train a DistinctAD job under DeepSpeed (one CPU, one GPU, or many nodes via the deepspeed launcher).
JOB is one of: {jobs}. CONFIG is a YAML file of sections (see launch/configs/); every key can be
overridden on the command line as --section.key VALUE (or --section.key=VALUE).
`distinctad-train JOB --help` lists every key of that job with its type, default and meaning."""


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """The deepspeed launcher appends --local_rank=N; the rank comes from the environment instead."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a.startswith("--local_rank=") or a.startswith("--local-rank="):
            continue
        elif a in ("--local_rank", "--local-rank"):
            skip = True
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point (returns nothing: a console script's return value becomes its exit status)."""
    run_job(argv)


def run_job(argv: list[str] | None = None) -> dict:
    """Parse ``JOB [CONFIG] [overrides]``, run the job, return its summary."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the model hub: weights come from local paths
    argv = _strip_launcher_args(list(sys.argv[1:] if argv is None else argv))
    usage = USAGE.format(jobs=", ".join(JOBS))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        raise SystemExit(0 if argv else 2)
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        raise SystemExit(f"error: unknown job '{job}' (choose from {', '.join(JOBS)})")
    cfg_cls, runner = JOBS[job]()
    if "-h" in rest or "--help" in rest:
        from distinctad.train.core.config import describe

        print(usage.splitlines()[0].replace("JOB", job) + "\n\nkeys:\n" + "\n".join(describe(cfg_cls)))
        raise SystemExit(0)
    path = rest[0] if rest and not rest[0].startswith("--") else None
    overrides = rest[1:] if path else rest
    try:
        cfg = load_config(cfg_cls, path, overrides)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None

    from distinctad.train.core.distributed import init_distributed, shutdown

    _, rank, _ = init_distributed()
    init_logger(rank=rank)
    from distinctad.train.core.checkpoint import CheckpointError
    from distinctad.train.core.loop import NonFiniteLossError

    try:
        result = runner(cfg)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    except (CheckpointError, NonFiniteLossError) as e:
        # raised on every rank at once: rank 0 says it, the others just exit non-zero
        raise SystemExit(f"error: {e}" if rank == 0 else 1) from None
    shutdown()
    return result


def launch(job: str, argv: list[str], default_config) -> None:
    """What ``launch/<job>.sh`` runs on every rank: ``main`` with the job's default config unless one is given."""
    argv = _strip_launcher_args(argv)
    if not argv or argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
        argv = [str(default_config), *argv]
    run_job([job, *argv])


if __name__ == "__main__":
    main()
