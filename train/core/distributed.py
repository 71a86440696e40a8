"""Rank helpers (open_clip's ``distributed.py`` shape): who am I, start the process group, collectives.

Works under the ``deepspeed`` launcher (one or many nodes), under torchrun, and as a plain single process
(``python``/``bash launch/stage2.sh``): the environment a launcher would set is filled in for rank 0 of 1.
On CPU the backend is gloo; on GPUs DeepSpeed picks NCCL.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist

from distinctad.common import set_threads, world_info_from_env

__all__ = ["world_info_from_env"]  # re-exported: the torch-free definition lives in distinctad.common


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """Start the process group (idempotent) and return (local_rank, rank, world_size).

    A plain single process gets the variables a launcher would set, so DeepSpeed does not go looking for MPI.
    Torch's threads are set to this rank's share of the machine's cores (:func:`distinctad.common.set_threads`).
    """
    own_port = False  # a plain single process: this function picks the rendezvous port
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        own_port = "MASTER_PORT" not in os.environ
        os.environ.setdefault("MASTER_PORT", str(free_port()))  # a later call in this process reuses the variables
    if not dist.is_initialized():
        import deepspeed
        import deepspeed.ops

        if not torch.cuda.is_available():
            # DeepSpeed's CPU shared-memory all-reduce leaves a ~70 MB /dev/shm buffer per rank behind after every
            # launch (never unlinked) until the machine runs out of memory; gloo does the collectives instead.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        for attempt in range(3):
            # The port is picked just before the store binds it (not before the seconds of importing DeepSpeed):
            # a free port from the kernel can still be handed to another process's outgoing connection meanwhile,
            # so a port of our own that turned out taken is replaced (processes started side by side, e.g. tests).
            if own_port:
                os.environ["MASTER_PORT"] = str(free_port())
            try:
                deepspeed.init_distributed(dist_backend=backend)
                break
            except dist.DistNetworkError as e:
                if not own_port or "EADDRINUSE" not in str(e) or attempt == 2:
                    raise
    set_threads()
    local_rank, rank, world = world_info_from_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return local_rank, rank, world


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_master() -> bool:
    """True on global rank 0: the only rank that logs, tracks and writes shared files."""
    return get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(value: float | torch.Tensor) -> float:
    """Mean over ranks, so that the logged loss is the global one, not rank 0's."""
    t = torch.as_tensor(value, dtype=torch.float64, device=device()).detach().clone()
    if dist.is_initialized() and get_world_size() > 1:
        dist.all_reduce(t)
        t /= get_world_size()
    return float(t)


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (all ranks must take the same branch, e.g. to skip a step)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device())
    if dist.is_initialized() and get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_object(obj: Any) -> list[Any]:
    if not dist.is_initialized() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not dist.is_initialized() or get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """Destroy the process group; without it gloo aborts the process at interpreter exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _forget_deepspeed_groups()


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches group handles at module level; after ``destroy_process_group`` they point at nothing, and a
    second job in the same process (``main([...])`` twice, as the in-process tests do) would reuse them."""
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return
    for name in (
        "_WORLD_GROUP",
        "_ZERO_PARAM_INTRA_PARALLEL_GROUP",
        "_TENSOR_MODEL_PARALLEL_GROUP",
        "_MODEL_PARALLEL_GROUP",
        "_DATA_PARALLEL_GROUP",
    ):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in (
        "_EXPERT_PARALLEL_GROUP",
        "_EXPERT_PARALLEL_GROUP_RANKS",
        "_EXPERT_DATA_PARALLEL_GROUP",
        "_EXPERT_DATA_PARALLEL_GROUP_RANKS",
        "_ALL_TO_ALL_GROUP",
    ):
        if isinstance(getattr(groups, name, None), dict):
            getattr(groups, name).clear()
