"""Shared fixtures: a fixed seed per test, and helpers to run multi-process jobs as a user would."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distinctad.data import ASSETS

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = ASSETS  # old name of the real-data folder, still imported by tests/recon/conftest.py; use ASSETS


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a busy 2-core machine OpenMP threads
    waiting on each other make a 1 s test take 20 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cmd(cmd: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output tail if it exits non-zero."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None) if env is None or "MLFLOW_TRACKING_URI" not in env else None
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def deepspeed_cmd(num_gpus: int, script: str | Path, *args: str) -> list[str]:
    """``deepspeed --num_gpus N --master_port P script args`` with the deepspeed of this interpreter."""
    ds = Path(sys.executable).parent / "deepspeed"
    return [str(ds), "--num_gpus", str(num_gpus), "--master_port", str(free_port()), str(script), *args]
