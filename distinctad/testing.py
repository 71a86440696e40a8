"""Helpers for DistinctAD's tests (and for anyone testing a job built on it), like ``numpy.testing``.

They run jobs the way users do: launchers and console scripts in separate processes, ``deepspeed --num_gpus N``
for several ranks (gloo CPU processes without GPUs). Tests import them from here, never from ``conftest`` modules.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from distinctad.common import REPO_ROOT

REPO = REPO_ROOT
"""The source checkout (launchers and configs are under ``REPO / "launch"``)."""

TRIVIAL_YAML = str(REPO / "launch/configs/trivial.yaml")
# the smallest Stage-II captioner the tests build: CaptionerConfig(**TINY_CAPTIONER, ...) (shapes only, no meaning)
TINY_CAPTIONER = dict(
    feature_dim=16,
    d_model=32,
    num_latents=4,
    perceiver_layers=1,
    perceiver_heads=4,
    num_bases=8,
    context_ads=2,
    llm="tiny-gpt2",
)


_PORT_BLOCK = 2000  # ports per pytest-xdist worker (and one block for a run without xdist)
_next_port: list[int] = []


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, that nothing else in the test run will be handed (``--master_port``,
    MLflow servers).

    Not a kernel-chosen ``bind(port 0)`` port: those come from the ephemeral range, which the kernel also hands to
    every outgoing connection, so with tests running side by side (pytest-xdist) one worker's gloo or HTTP client
    could take another's port between choosing it and the server binding it (EADDRINUSE). Ports here lie below the
    ephemeral range, in a block of their own per xdist worker (``PYTEST_XDIST_WORKER``), handed out in turn, and
    each is checked free before it is given.
    """
    lo, _ = _ephemeral_range()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    slot = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = lo - _PORT_BLOCK * (slot + 1)
    if start < 10000:  # an unusual ephemeral range: fall back to a kernel-chosen port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    if not _next_port:
        _next_port.append(os.getpid() % _PORT_BLOCK)  # successive test processes start at different places
    for _ in range(_PORT_BLOCK):
        port = start + _next_port[0] % _PORT_BLOCK
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {start}..{start + _PORT_BLOCK - 1}")


LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What a launcher sets per process; a child started by a test must not inherit them from the test process."""


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a process a test starts: this one's without launcher variables (a rank or a port left by
    a job run in this process must not reach the child) or ``MLFLOW_TRACKING_URI`` (unless ``env`` sets it), plus
    ``PYTHONUNBUFFERED=1`` and ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    full = {**base, "PYTHONUNBUFFERED": "1", **(env or {})}
    if env is None or "MLFLOW_TRACKING_URI" not in env:
        full.pop("MLFLOW_TRACKING_URI", None)  # a test's tracking goes where the test says, never to the user's server
    return full


def run_cmd(cmd: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command; raise ``AssertionError`` with its output tail if it exits non-zero (a hang hits ``timeout``)."""
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def run_failing(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 180
) -> subprocess.CompletedProcess:
    """Run a command that is expected to fail; the timeout bounds any hang."""
    full = {**{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}, "PYTHONUNBUFFERED": "1", **(env or {})}
    full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def deepspeed_cmd(num_gpus: int, script: str | Path, *args: str) -> list[str]:
    """``deepspeed --num_gpus N --master_port P script args`` with the deepspeed of this interpreter."""
    ds = Path(sys.executable).parent / "deepspeed"
    return [str(ds), "--num_gpus", str(num_gpus), "--master_port", str(free_port()), str(script), *args]


def trivial_cmd(out: Path, *extra: str, ranks: int = 1) -> list[str]:
    """``distinctad-train trivial`` (tracking off, run dir ``out``) on 1 process or under ``deepspeed --num_gpus``."""
    args = ["trivial", TRIVIAL_YAML, "--tracking.enabled", "false", "--run.out_dir", str(out), *extra]
    if ranks == 1:
        return [sys.executable, "-m", "distinctad.train.main", *args]
    ds = str(Path(sys.executable).parent / "deepspeed")
    return [ds, "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module", "distinctad.train.main", *args]


def metrics_rows(run_dir: Path) -> list[dict]:
    """Every row of ``<run dir>/metrics.jsonl``."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def latest(run_dir: Path) -> str:
    """The checkpoint tag ``<run dir>/checkpoints/latest`` points at."""
    return (run_dir / "checkpoints/latest").read_text().strip()


def rewrite_tar(shard: Path, edit: Callable[[str, bytes], bytes]) -> None:
    """Rewrite a tar with ``edit(member name, bytes) -> bytes`` applied to every member (to corrupt one kind)."""
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(shard, "w") as tf:
        for m, data in members:
            data = edit(m.name, data)
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))


def truncate(path: Path, fraction: float) -> None:
    """Cut a file to ``fraction`` of its size, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
