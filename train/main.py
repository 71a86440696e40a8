"""``distinctad-train JOB [CONFIG.yaml] [--section.key VALUE ...]``: the entry point of every training job.

The jobs come from the registry (:mod:`distinctad.train.jobs`). The launchers in ``launch/`` call :func:`launch`
(directly, or once per rank under the ``deepspeed`` launcher, which also passes ``--local_rank``; the rank is read
from the environment instead). ``--help`` imports only the job's config module, so it returns in about a second.
"""

from __future__ import annotations

import os
import sys

from distinctad.common import init_logger, resolve_path
from distinctad.train.core.config import ConfigError, describe, load_config

USAGE = """usage: distinctad-train JOB [CONFIG.yaml] [--section.key VALUE ...]

Train a DistinctAD job under DeepSpeed (one CPU, one GPU, or many nodes via the deepspeed launcher).
CONFIG is a YAML file of sections (see launch/configs/); every key can be overridden on the command line as
--section.key VALUE (or --section.key=VALUE). `distinctad-train JOB --help` lists every key of that job with its
type, default and meaning.

jobs:
{jobs}"""


def _usage() -> str:
    from distinctad.train.jobs import JOBS

    return USAGE.format(
        jobs="\n".join(f"  {s.name:<8} {s.summary} (default config {s.default_yaml})" for s in JOBS.values())
    )


def _print(text: str) -> None:
    """Print help; a reader that closes the pipe early (``| head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented way to exit quietly


def strip_launcher_args(argv: list[str]) -> list[str]:
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
    from distinctad.train.jobs import JOBS

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the model hub: weights come from local paths
    argv = strip_launcher_args(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        _print(_usage())
        raise SystemExit(0 if argv else 2)
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        raise SystemExit(f"error: unknown job '{job}' (choose from {', '.join(JOBS)})")
    spec = JOBS[job]
    if "-h" in rest or "--help" in rest:
        head = USAGE.splitlines()[0].replace("JOB", job)
        _print(
            f"{head}\n\n{spec.summary}; default config {spec.default_yaml}.\n\nkeys:\n"
            + "\n".join(describe(spec.config))
        )
        raise SystemExit(0)
    path = rest[0] if rest and not rest[0].startswith("--") else None
    overrides = rest[1:] if path else rest
    try:
        cfg = load_config(spec.config, path, overrides)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None

    from distinctad.train.core.checkpoint import CheckpointError
    from distinctad.train.core.distributed import init_distributed, shutdown
    from distinctad.train.core.loop import NonFiniteLossError

    _, rank, _ = init_distributed()
    init_logger(rank=rank)
    try:
        if cfg.run.resume_config == "checkpoint":
            from distinctad.train.core.resume import checkpoint_config

            cfg = checkpoint_config(spec.config, cfg, overrides)
        result = spec.run(cfg)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    except (CheckpointError, NonFiniteLossError) as e:
        # raised on every rank at once: rank 0 says it, the others just exit non-zero
        raise SystemExit(f"error: {e}" if rank == 0 else 1) from None
    shutdown()
    return result


def launch(job: str, argv: list[str] | None = None) -> None:
    """What ``launch/<job>.sh`` runs on every rank: the job with its registered default YAML unless one is given."""
    from distinctad.train.jobs import get_job

    argv = strip_launcher_args(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
        argv = [str(resolve_path(get_job(job).default_yaml)), *argv]
    run_job([job, *argv])


if __name__ == "__main__":
    main()
