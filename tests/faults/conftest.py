"""Helpers of the fault-tolerance tests: the trivial job launched as users launch it, with testing hooks set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, free_port

TRIVIAL = str(REPO / "launch/configs/trivial.yaml")


def trivial_cmd(out: Path, *extra: str, ranks: int = 1) -> list[str]:
    """``distinctad-train trivial`` on 1 process, or under ``deepspeed --num_gpus ranks``."""
    args = ["trivial", TRIVIAL, "--tracking.enabled", "false", "--run.out_dir", str(out), *extra]
    if ranks == 1:
        return [sys.executable, "-m", "distinctad.train.main", *args]
    ds = str(Path(sys.executable).parent / "deepspeed")
    return [ds, "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module", "distinctad.train.main", *args]


def run_failing(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 180
) -> subprocess.CompletedProcess:
    """Run a command that is expected to fail; the timeout bounds any hang."""
    import os

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints/latest").read_text().strip()
