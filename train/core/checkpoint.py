"""The one way DistinctAD checkpoints: DeepSpeed ``save_checkpoint`` + client state, committed atomically.

Layout of ``<run dir>/checkpoints``::

    step_00000050/            DeepSpeed files of every rank + config.yaml (the resolved job config)
    step_00000100/
    latest                    name of the newest *complete* checkpoint, replaced atomically
    step_00000100/universal/  that checkpoint in DeepSpeed's universal format, made when a relaunch changes the
                              ranks, ZeRO stage or precision (see :mod:`distinctad.train.core.resume`)

The client state holds the loop's position (step, epoch, data position), every rank's RNG and the run's topology.
Frozen parameters (a frozen LLM, LoRA's base, Stage-I's text tower) are left out (``train.save_frozen=false``, our
default; DeepSpeed's ``exclude_frozen_parameters``): a checkpoint holds what trains, its optimizer state and the
buffers. A load puts them on top of the frozen weights the job config rebuilds (``model.llm``, ``run.seed``), after
checking those against the shapes and per-tensor fingerprints the checkpoint recorded (:func:`frozen_record`).
``latest`` moves only after every rank has written its part, so a crash or a full disk mid-save leaves the
previous checkpoint as the one a relaunch resumes from. Old checkpoints are pruned only after that.

Loading never runs pickled code: DeepSpeed's own engine calls ``torch.load(weights_only=False)``, so every engine
gets a :class:`SafeTorchCheckpointEngine` that loads with ``weights_only=True`` and allows only the few plain-data
DeepSpeed classes its checkpoints hold (the RNG states we add are stored as plain Python values for the same
reason). A checkpoint holding anything else is refused with a :class:`CheckpointError`.

Testing hook (never set it outside tests): ``DISTINCTAD_FAULT_ENOSPC_AT_STEP=n`` makes the checkpoint of step ``n``
fail with ``OSError(ENOSPC)`` on rank ``$DISTINCTAD_FAULT_RANK`` (default: the last rank) after a partial write, as
a full disk would.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from distinctad.common import atomic_write_text
from distinctad.train.core import distributed as D
from distinctad.train.core.config import save_config

logger = logging.getLogger(__name__)
LATEST = "latest"
UNIVERSAL = "universal"  # <tag>/universal: the checkpoint converted to DeepSpeed's universal format
TAG_RE = re.compile(r"step_\d{8}")
FROZEN = "frozen_base"  # client-state key: what frozen_record says about the frozen parameters


class CheckpointError(RuntimeError):
    """Saving or loading a checkpoint failed; the message says which file and why."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def fault_rank() -> int:
    """The rank a fault-injection hook fires on: ``$DISTINCTAD_FAULT_RANK``, default the last rank."""
    return int(os.environ.get("DISTINCTAD_FAULT_RANK", D.get_world_size() - 1))


# ---------------------------------------------------------------- weights-only loading


def deepspeed_safe_globals() -> list[Any]:
    """Plain-data classes DeepSpeed pickles into its checkpoints (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on ZeRO 0-3 checkpoints): the loss scaler's settings,
    the ZeRO stage enum and the (numel, start) fragment addresses of ZeRO-1/2 optimizer states."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _first_line(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"Unsupported operand \S+", text)
    if m:
        return m.group(0)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with ``weights_only=True`` loads and collective-friendly save errors.

    A failed write does not raise inside DeepSpeed's ``save_checkpoint`` (its ranks would then disagree on the
    barriers that follow and hang); the first error is kept in :attr:`error` and later writes of the same save are
    skipped. :func:`save` turns it into a :class:`CheckpointError` on every rank.
    """

    def __init__(self, config_params=None):
        super().__init__(config_params)
        self.error: OSError | None = None
        self.fault_tag: str | None = None  # testing hook: the tag whose save fails with ENOSPC on this rank

    def save(self, state_dict, path: str) -> None:
        if self.error is not None:
            return
        try:
            if self.fault_tag is not None and Path(path).parent.name == self.fault_tag:
                with open(path, "wb") as f:
                    f.write(b"PK\x03\x04 partial")  # what a full disk leaves behind
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            super().save(state_dict, path)
        except OSError as e:
            self.error = e

    def load(self, path: str, map_location=None):
        return safe_load(path, map_location=map_location)


_torch_load = torch.load  # the real one: weights_only_loads() swaps torch.load for a wrapper around it


def safe_load(path: str | Path, map_location=None, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with the DeepSpeed allowlist; ``mmap`` reads tensors lazily (a cheap look
    at a large file's metadata).

    Raises:
        CheckpointError: the file is missing, or holds anything but plain data (one line naming it).
    """
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return _torch_load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError (bad zip), EOFError...
        raise CheckpointError(
            f"refusing to load {path}: not a plain weights file ({_first_line(e)}); "
            "checkpoints load with torch.load(weights_only=True) and never run pickled "
            "code"
        ) from None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` inside the block a :func:`safe_load`.

    DeepSpeed's checkpoint tools (``ds_to_universal``, ``zero_to_fp32``, the universal-checkpoint loaders) call
    ``torch.load(weights_only=False)`` themselves; inside this block they read plain data only, like every other
    load of DistinctAD.
    """

    def load(f, map_location=None, *args, mmap: bool = False, **kwargs):
        return safe_load(f, map_location=map_location, mmap=bool(mmap))

    torch.load = load
    try:
        yield
    finally:
        torch.load = _torch_load


def use_safe_engine(engine) -> SafeTorchCheckpointEngine:
    """Swap the DeepSpeed engine's checkpoint engine for :class:`SafeTorchCheckpointEngine` (idempotent)."""
    current = getattr(engine, "checkpoint_engine", None)
    if isinstance(current, SafeTorchCheckpointEngine):
        return current
    if current is not None and type(current) is not TorchCheckpointEngine:
        raise CheckpointError(
            f"DeepSpeed checkpoint engine {type(current).__name__} is not supported: DistinctAD "
            "only loads checkpoints with torch.load(weights_only=True)"
        )
    safe = SafeTorchCheckpointEngine(None)
    if current is not None:
        safe.zipfile_serialization = current.zipfile_serialization
    engine.checkpoint_engine = safe
    return safe


# ---------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This rank's RNG streams as tensors and plain Python values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------- frozen parameters


def frozen_record(model: torch.nn.Module) -> dict[str, Any]:
    """The frozen parameters of a plain model (before ``deepspeed.initialize``): their shapes and, per tensor, a
    fingerprint ``[sum, sum of squares]`` computed in float64.

    Returns:
        ``{"shapes": {name: [dims]}, "fingerprints": {name: [sum, sumsq]}, "numel": total elements}``.
    """
    shapes: dict[str, list[int]] = {}
    prints: dict[str, list[float]] = {}
    numel = 0
    seen: set[int] = set()
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):  # tied names too (GPT-2's lm_head = wte)
            if p.requires_grad:
                continue
            shapes[name] = list(getattr(p, "ds_shape", p.shape))
            if id(p) not in seen:  # a tied tensor counts once
                seen.add(id(p))
                numel += p.numel()
            s = sq = 0.0
            for chunk in p.detach().reshape(-1).split(1 << 24):  # float64 copies of 16M elements at most
                c = chunk.double()
                s, sq = s + float(c.sum()), sq + float(c.square().sum())
            prints[name] = [s, sq]
    return {"shapes": shapes, "fingerprints": prints, "numel": numel}


def check_frozen(now: dict[str, Any] | None, saved: dict[str, Any] | None, where: Path) -> None:
    """Refuse to load a checkpoint without its frozen weights on top of frozen weights that are not the ones it was
    trained with (another ``model.llm``, another seed for a random base).

    The fingerprints are compared with a tolerance of 1e-6 relative to each tensor's norm: a float64 sum may differ
    in its last bits between thread counts, a different base differs far more.

    Raises:
        CheckpointError: one line naming the first tensor that differs.
    """
    if not saved or not saved.get("excluded") or now is None:
        return  # the checkpoint holds its frozen weights (or predates the record): DeepSpeed loads them
    s_shapes, n_shapes = saved["shapes"], now["shapes"]
    bad = [k for k in s_shapes if list(n_shapes.get(k, [])) != list(s_shapes[k])]
    if not bad:
        for k, (s, sq) in saved["fingerprints"].items():
            s2, sq2 = now["fingerprints"][k]
            scale = (max(sq, sq2) * max(1, math.prod(s_shapes[k]))) ** 0.5 + 1e-30
            if abs(s - s2) > 1e-6 * scale or abs(sq - sq2) > 1e-6 * (max(sq, sq2) + 1e-30):
                bad.append(k)
    if bad:
        raise CheckpointError(
            f"cannot load {where}: it holds only the trained weights (train.save_frozen=false) and the frozen weights "
            f"this config rebuilds differ from those it was trained on top of ({len(bad)} tensors, e.g. {bad[0]}); "
            "use the same frozen base (model.llm, run.seed) as the run that saved it"
        )


def drop_tied_frozen_aliases(engine) -> None:
    """Make ``engine.module_state_dict(exclude_frozen_parameters=True)`` leave out every name of a frozen tensor.

    DeepSpeed removes the names ``named_parameters()`` yields, and that lists a tied weight once: GPT-2's
    ``lm_head.weight`` (the same tensor as ``transformer.wte.weight``) stayed in every checkpoint, a whole
    vocabulary x width matrix of frozen weights. Idempotent; the model re-ties the alias when it is rebuilt.
    """
    if getattr(engine, "_distinctad_drops_tied", False):
        return
    original = engine.module_state_dict

    def module_state_dict(*args, exclude_frozen_parameters: bool = False, **kwargs):
        sd = original(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        if exclude_frozen_parameters and sd is not None:
            for name, p in engine.module.named_parameters(remove_duplicate=False):
                if not p.requires_grad:
                    sd.pop(name, None)
        return sd

    engine.module_state_dict = module_state_dict
    engine._distinctad_drops_tied = True


# ---------------------------------------------------------------- save / resume


def latest_tag(ckpt_dir: str | Path) -> str | None:
    """The tag ``latest`` names, or None; anything but ``step_NNNNNNNN`` is refused (no path tricks)."""
    f = Path(ckpt_dir) / LATEST
    if not f.is_file():
        return None
    tag = f.read_text().strip()
    if not TAG_RE.fullmatch(tag):
        raise CheckpointError(f"{f}: expected a checkpoint tag like step_00000100, got {tag[:40]!r}")
    return tag


def save(engine, ckpt_dir: str | Path, step: int, client_state: dict[str, Any], cfg: Any, keep: int) -> Path:
    """Collective: every rank must call it with the same ``step``.

    Frozen parameters are left out unless ``cfg.train.save_frozen`` (see the module docstring).

    Raises:
        CheckpointError: on every rank, if any rank could not write its part (disk full, read-only directory);
            the half-written checkpoint is removed and ``latest`` still names the previous one.
    """
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    safe = use_safe_engine(engine)
    safe.error = None
    fault = os.environ.get("DISTINCTAD_FAULT_ENOSPC_AT_STEP")
    safe.fault_tag = tag if fault and int(fault) == step and D.get_rank() == fault_rank() else None
    # Every rank's RNG goes into the state rank 0 writes, so each rank can restore its own stream.
    client_state = {**client_state, "rng": D.all_gather_object(rng_state())}
    exclude = not getattr(getattr(cfg, "train", None), "save_frozen", False)
    if exclude:
        drop_tied_frozen_aliases(engine)
    frozen = getattr(engine, "distinctad_frozen", None)
    if frozen is not None:
        client_state[FROZEN] = {"shapes": frozen["shapes"], "fingerprints": frozen["fingerprints"], "excluded": exclude}
    error: OSError | None = None
    try:
        engine.save_checkpoint(
            str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False, exclude_frozen_parameters=exclude
        )
        error = safe.error
        if error is None and D.is_master():
            save_config(cfg, ckpt_dir / tag / "config.yaml")
    except OSError as e:  # makedirs and the like, before DeepSpeed's first barrier
        error = e
    _raise_if_any_failed(error, ckpt_dir, tag, remove=True)
    if D.is_master():
        try:
            atomic_write_text(ckpt_dir / LATEST, tag)
        except OSError as e:
            error = e
    _raise_if_any_failed(error, ckpt_dir, tag, remove=True)
    if D.is_master():
        _prune(ckpt_dir, keep)
    D.barrier()
    logger.info("checkpoint %s saved", ckpt_dir / tag)
    return ckpt_dir / tag


def _raise_if_any_failed(error: OSError | None, ckpt_dir: Path, tag: str, remove: bool) -> None:
    """Collective: raise the same CheckpointError on every rank if any rank failed."""
    failed = D.all_gather_object(None if error is None else f"{error.strerror or error} ({error.filename or ''})")
    if not any(failed):
        return
    rank, why = next((r, w) for r, w in enumerate(failed) if w)
    previous = latest_tag(ckpt_dir)
    if remove and previous != tag:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)  # free what the partial write took
    D.barrier()
    raise CheckpointError(
        f"could not write checkpoint {ckpt_dir / tag} (rank {rank}: {why.replace(' ()', '')}); "
        f"the previous checkpoint {previous or '(none)'} is intact and is where a relaunch "
        "resumes"
    )


def _prune(ckpt_dir: Path, keep: int) -> None:
    tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    current = latest_tag(ckpt_dir)
    for old in tags[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoint root, tag) of a run directory, its ``checkpoints`` folder (the tag ``latest`` names) or one tag
    folder (``runs/NAME/checkpoints/step_00000060``).

    Raises:
        CheckpointError: ``path`` is none of these (one line naming it).
    """
    p = Path(path)
    for root in (p / "checkpoints", p):
        tag = latest_tag(root)
        if tag:
            return root, tag
    if p.is_dir() and any(p.glob("*model_states.pt")):
        return p.parent, p.name
    raise CheckpointError(
        f"no checkpoint in {path}: expected a run directory, its checkpoints folder or one step_NNNNNNNN folder"
    )


def find_resume(resume: str, ckpt_dir: str | Path) -> tuple[Path, str] | None:
    """Where ``run.resume`` says to resume from: (checkpoint root, tag), or None for a fresh start.

    'none': fresh; 'auto': the latest checkpoint in ``ckpt_dir`` if any; else a path for :func:`find_checkpoint`.
    """
    if resume == "none":
        return None
    if resume == "auto":
        tag = latest_tag(ckpt_dir)
        return (Path(ckpt_dir), tag) if tag else None
    try:
        return find_checkpoint(resume)
    except CheckpointError as e:
        raise CheckpointError(f"run.resume: {e}") from None


def load(engine, root: Path, tag: str, load_optimizer: bool = True, universal: bool = False) -> dict[str, Any]:
    """Collective: restore weights, optimizer, scheduler and this rank's RNG; returns the client state.

    Every file is read with ``torch.load(weights_only=True)`` (:class:`SafeTorchCheckpointEngine`,
    :func:`weights_only_loads`). ``universal``: read ``<root>/<tag>/universal``, the checkpoint in DeepSpeed's
    universal format (:func:`distinctad.train.core.resume.to_universal`), into an engine built with
    ``checkpoint.load_universal``; DeepSpeed re-partitions the optimizer state for this engine's ranks.
    The RNG streams are restored only when the checkpoint was written by as many ranks as there are now.

    Raises:
        CheckpointError: one line naming the checkpoint and what DeepSpeed reported.
    """
    use_safe_engine(engine)
    load_dir, load_tag = (root / tag, UNIVERSAL) if universal else (root, tag)
    try:
        with weights_only_loads():
            load_path, client_state = engine.load_checkpoint(
                str(load_dir),
                tag=load_tag,
                load_module_strict=False,  # frozen parameters may be left out: they keep the values built here
                load_optimizer_states=load_optimizer,
                load_lr_scheduler_states=load_optimizer,
            )
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - DeepSpeed raises AssertionError, KeyError, ZeRORuntimeException...
        raise CheckpointError(f"could not load checkpoint {root / tag}: {type(e).__name__}: {_first_line(e)}") from None
    if load_path is None:
        raise CheckpointError(f"could not load checkpoint {root / tag}")
    check_frozen(getattr(engine, "distinctad_frozen", None), client_state.get(FROZEN), root / tag)
    rng = client_state.pop("rng", None)
    if rng is not None and len(rng) == D.get_world_size():
        set_rng_state(rng[D.get_rank()])
    logger.info("resumed from %s (step %s)", root / tag, client_state.get("step"))
    return client_state
