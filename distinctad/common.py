"""Helpers every DistinctAD package uses: atomic file writes, the one logging format, the process's rank.

Atomic writes go to a temporary sibling, fsync, then ``os.replace``: a crash or a full disk mid-write leaves the
previous file untouched, never a half-written one (the same pattern as open_clip's ``epoch_latest.pt``).
The logger format is set once per command by :func:`init_logger`. :func:`env_rank` reads the rank the launcher
gave this process without importing torch (``distinctad.train.core.distributed`` is the torch-side API).
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
