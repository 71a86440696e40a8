"""Helpers every DistinctAD package uses: atomic file writes, the one logging format, the process's rank.

Atomic writes go to a temporary sibling, fsync, then ``os.replace``: a crash or a full disk mid-write leaves the
previous file untouched, never a half-written one (the same pattern as open_clip's ``epoch_latest.pt``).
The logger format is set once per command by :func:`init_logger`. :func:`env_rank` reads the rank the launcher
gave this process without importing torch (``distinctad.train.core.distributed`` is the torch-side API).
:func:`set_threads` gives each process its share of the cores (every job and CLI calls it at start-up).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Logging

FORMAT = "[distinctad] %(asctime)s %(levelname)s %(name)s: %(message)s"
_warned: set[str] = set()


def init_logger(level: int | str = logging.INFO, rank: int | None = None) -> None:
    """Configure the root logger; ranks other than 0 only show warnings and errors."""
    if rank is None:
        rank = env_rank()
    logging.basicConfig(format=FORMAT, level=level if rank == 0 else logging.WARNING, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_root_info)


def _quiet_root_info(record: logging.LogRecord) -> bool:
    """Drop INFO chatter that libraries (open_clip) send through the root logger; keep their warnings."""
    return record.name != "root" or record.levelno >= logging.WARNING


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log ``message`` as a warning the first time it is seen in this process."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


# ---------------------------------------------------------------------------------------------------------------
# Paths

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The source checkout (``launch/`` and its configs live there)."""


def resolve_path(path: str | os.PathLike) -> Path:
    """A path as given when it exists (or is absolute), else relative to the source checkout.

    So ``launch/ds_config.json`` and ``launch/configs/*.yaml`` are found from any working directory.
    """
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return REPO_ROOT / p


# ---------------------------------------------------------------------------------------------------------------
# Rank lookup


def world_info_from_env() -> tuple[int, int, int]:
    """(local_rank, global_rank, world_size) from torchrun/DeepSpeed, SLURM or MPI variables."""
    local_rank = 0
    for v in ("LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        if v in os.environ:
            local_rank = int(os.environ[v])
            break
    global_rank = 0
    for v in ("RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if v in os.environ:
            global_rank = int(os.environ[v])
            break
    world_size = 1
    for v in ("WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if v in os.environ:
            world_size = int(os.environ[v])
            break
    return local_rank, global_rank, world_size


def env_rank() -> int:
    """This process's global rank as the launcher set it (0 when alone); needs no torch."""
    return world_info_from_env()[1]


# ---------------------------------------------------------------------------------------------------------------
# Threads: the processes of one machine share its cores instead of each taking all of them

_LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
logger = logging.getLogger(__name__)


def usable_cores() -> int:
    """The CPU cores this process may run on: the scheduler's affinity mask (taskset, cgroups cpusets, SLURM
    ``--cpus-per-task``), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def local_world_size() -> int:
    """How many ranks of this job run on this machine: torchrun's ``LOCAL_WORLD_SIZE``, the deepspeed launcher's
    ``LOCAL_SIZE``, MPI's local size, or SLURM's tasks per node; 1 when alone."""
    for v in (*_LOCAL_SIZE_VARS, "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(v, "").split("(")[0]  # SLURM writes "2(x3)" for heterogeneous nodes
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def thread_budget() -> int:
    """Intra-op threads for this process: ``OMP_NUM_THREADS`` when set (the user's word, per process), else the usable
    cores divided by the local ranks (at least 1).

    Why: PyTorch's default is one thread per core in every process, so two ranks on 2 cores run 4 threads that
    preempt each other; with one other busy core a Stage-II loop ran 3.5x slower (issue 16).
    """
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, usable_cores() // local_world_size())


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default :func:`thread_budget`) and its inter-op threads to the
    same number; returns the intra-op count in force.

    Inter-op threads can only be set before torch's first parallel work; a later call leaves them as they are.
    """
    import torch

    n = thread_budget() if threads is None else max(1, threads)
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # already started in this process (a second job run in-process)
            pass
    logger.debug("torch threads: %d intra-op, %d inter-op", torch.get_num_threads(), torch.get_num_interop_threads())
    return torch.get_num_threads()


def worker_threads(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per data worker (decoding runs in many workers at once)."""
    set_threads(1)
