"""The job registry: the one place that knows every training job (``distinctad-train``, ``launch/*.sh``, the docs).

Adding a job = a package ``train/<name>/`` (``config.py`` with dataclasses only, ``task.py`` with a
:class:`~distinctad.train.core.task.Task` and its builder) + one line below + ``launch/configs/<name>.yaml`` + a
two-line launcher ``launch/<name>.sh`` (copy one). Only config modules are imported here, so this stays fast.
"""

from __future__ import annotations

from distinctad.train.core.task import JobSpec
from distinctad.train.recon.config import ReconJob
from distinctad.train.stage1.config import Stage1Job
from distinctad.train.stage2.config import Stage2Job
from distinctad.train.trivial.config import TrivialJob

JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            "trivial",
            "a small MLP regression that proves engine, checkpoints and tracking",
            TrivialJob,
            "distinctad.train.trivial.task:build_task",
            "launch/configs/trivial.yaml",
        ),
        JobSpec(
            "stage1",
            "Stage-I: CLIP-AD adaptation of the CLIP vision tower on frames shards",
            Stage1Job,
            "distinctad.train.stage1.task:build_task",
            "launch/configs/stage1.yaml",
        ),
        JobSpec(
            "stage2",
            "Stage-II: the DistinctAD captioner on window feature shards",
            Stage2Job,
            "distinctad.train.stage2.task:build_task",
            "launch/configs/stage2.yaml",
        ),
        JobSpec(
            "recon",
            "Table A.1: AD reconstruction from frozen CLIP text features",
            ReconJob,
            "distinctad.train.recon.task:build_task",
            "launch/configs/recon.yaml",
        ),
    )
}


def get_job(name: str) -> JobSpec:
    """The registered job ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return JOBS[name]
    except KeyError:
        raise KeyError(f"unknown job '{name}' (choose from {', '.join(JOBS)})") from None
