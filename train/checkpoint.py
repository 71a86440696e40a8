"""The one way DistinctAD checkpoints: DeepSpeed ``save_checkpoint`` + client state, committed atomically.

Layout of ``<run dir>/checkpoints``::

    step_00000050/            DeepSpeed files of every rank + config.yaml (the resolved job config)
    step_00000100/
    latest                    name of the newest *complete* checkpoint, replaced atomically

``latest`` moves only after every rank has written its part, so a crash or a full disk mid-save leaves the
previous checkpoint as the one a relaunch resumes from. Old checkpoints are pruned only after that.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distinctad.data.atomic import atomic_write_text
from distinctad.train import distributed as D
from distinctad.train.config import save_config

logger = logging.getLogger(__name__)
LATEST = "latest"


class CheckpointError(RuntimeError):
    """Saving or loading a checkpoint failed; the message says which file and why."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_tag(ckpt_dir: str | Path) -> str | None:
    f = Path(ckpt_dir) / LATEST
    return f.read_text().strip() if f.is_file() else None


def save(engine, ckpt_dir: str | Path, step: int, client_state: dict[str, Any], cfg: Any, keep: int) -> Path:
    """Collective: every rank must call it with the same ``step``."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    # Every rank's RNG goes into the state rank 0 writes, so each rank can restore its own stream.
    client_state = {**client_state, "rng": D.all_gather_object(rng_state())}
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        if D.is_master():
            save_config(cfg, ckpt_dir / tag / "config.yaml")
    except OSError as e:
        raise CheckpointError(f"could not write checkpoint {ckpt_dir / tag}: {e.strerror or e}; "
                              f"the previous checkpoint ({latest_tag(ckpt_dir)}) is intact") from None
    D.barrier()
    if D.is_master():
        atomic_write_text(ckpt_dir / LATEST, tag)
        _prune(ckpt_dir, keep)
    D.barrier()
    logger.info("checkpoint %s saved", ckpt_dir / tag)
    return ckpt_dir / tag


def _prune(ckpt_dir: Path, keep: int) -> None:
    tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    current = latest_tag(ckpt_dir)
    for old in tags[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def find_resume(resume: str, ckpt_dir: str | Path) -> tuple[Path, str] | None:
    """Where to resume from: (checkpoint root, tag), or None for a fresh start."""
    if resume == "none":
        return None
    if resume == "auto":
        tag = latest_tag(ckpt_dir)
        return (Path(ckpt_dir), tag) if tag else None
    p = Path(resume)
    if (p / LATEST).is_file():
        return p, latest_tag(p)
    if p.is_dir() and any(p.glob("*model_states.pt")):
        return p.parent, p.name
    raise CheckpointError(f"run.resume={resume}: not a checkpoint directory (no 'latest' file or model states)")


def load(engine, root: Path, tag: str, load_optimizer: bool = True) -> dict[str, Any]:
    """Collective: restore weights, optimizer, scheduler and this rank's RNG; returns the client state."""
    load_path, client_state = engine.load_checkpoint(
        str(root), tag=tag, load_optimizer_states=load_optimizer, load_lr_scheduler_states=load_optimizer)
    if load_path is None:
        raise CheckpointError(f"could not load checkpoint {root / tag}")
    rng = client_state.pop("rng", None)
    if rng is not None and len(rng) == D.get_world_size():
        set_rng_state(rng[D.get_rank()])
    elif rng is not None:
        logger.warning("checkpoint was written by %d ranks, now %d: RNG streams restart", len(rng),
                       D.get_world_size())
    logger.info("resumed from %s (step %s)", root / tag, client_state.get("step"))
    return client_state
