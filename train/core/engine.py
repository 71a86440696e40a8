"""Build the DeepSpeed engine: ds_config JSON from ``launch/`` + the job config, AdamW, warm-up + cosine.

Batch sizes, clipping, ZeRO stage and precision are set in one place (the job config) and written into the
ds_config dict before ``deepspeed.initialize``, so the JSON and the CLI cannot disagree silently.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import torch

from distinctad.common import resolve_path, warn_once
from distinctad.train.core.config import ConfigError
from distinctad.train.core.params import DeepSpeedArgs, TrainArgs

logger = logging.getLogger(__name__)


def pick_precision(requested: str) -> str:
    """'auto' means bf16 on a GPU that supports it and fp32 on CPU."""
    if requested != "auto":
        if requested in ("bf16", "fp16") and not torch.cuda.is_available():
            raise ConfigError(f"deepspeed.precision={requested} needs a GPU; use fp32 or auto on CPU")
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def use_fused_adamw(setting: str) -> bool:
    """``train.adamw_kernel``: 'auto' means the fused kernel on CUDA and the foreach one on CPU."""
    return setting == "fused" or (setting == "auto" and torch.cuda.is_available())


def use_pin_memory(setting: str) -> bool:
    """``train.host_memory``: pinned host memory only helps (and only works) with a CUDA device; 'pinned' without one
    falls back to pageable memory with a one-line notice."""
    if setting == "auto":
        return torch.cuda.is_available()
    if setting == "pinned" and not torch.cuda.is_available():
        warn_once(logger, "train.host_memory=pinned needs a CUDA device; loader batches stay in pageable memory")
        return False
    return setting == "pinned"


def build_ds_config(ds: DeepSpeedArgs, train: TrainArgs) -> dict[str, Any]:
    """Load the JSON and fill in what the job config owns."""
    path = resolve_path(ds.config)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config not found: {ds.config}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch x accumulation x world
    cfg["train_micro_batch_size_per_gpu"] = train.micro_batch_size
    cfg["gradient_accumulation_steps"] = train.grad_accum
    cfg["gradient_clipping"] = train.grad_clip
    cfg.setdefault("zero_allow_untested_optimizer", True)  # we pass torch's AdamW (FusedAdam needs CUDA)
    cfg.setdefault("steps_per_print", 10**9)
    precision = pick_precision(ds.precision)
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": precision == "bf16"}
    cfg["fp16"] = {**cfg.get("fp16", {}), "enabled": precision == "fp16"}
    zero = cfg.setdefault("zero_optimization", {})
    if ds.zero_stage >= 0:
        zero["stage"] = ds.zero_stage
    zero.setdefault("stage", 0)
    return cfg


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters, with no weight decay on biases, norms and other 1-d tensors (as nanoGPT)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def reshape_0d_parameters(model: torch.nn.Module) -> list[str]:
    """Give every 0-d parameter (open_clip's ``logit_scale``, a learnable α) the shape (1,), in place.

    DeepSpeed's parameter broadcast views every parameter as bytes (``p.data.view(torch.uint8)``), which raises on
    0-d tensors. The Parameter object, its value and ``requires_grad`` are kept; a job that exports weights writes
    them back in their original shape (Stage-I's export reshapes to the state dict of the model as built).

    Returns:
        The names of the parameters reshaped.
    """
    names = []
    for name, p in model.named_parameters():
        if p.dim() == 0:
            p.data = p.data.reshape(1)
            names.append(name)
    if names:
        logger.debug("parameters %s reshaped from () to (1,) for DeepSpeed", names)
    return names


def lr_lambda(train: TrainArgs):
    """The LR multiplier of ``train``'s schedule as a function of the optimizer step."""
    return lambda s: warmup_cosine(s, train.warmup_steps, train.max_steps, train.min_lr_ratio)


def build_engine(model: torch.nn.Module, train: TrainArgs, ds: DeepSpeedArgs, *, load_universal: bool = False):
    """``deepspeed.initialize`` with our optimizer and schedule; returns (engine, ds_config).

    ``load_universal``: the engine will load a checkpoint in DeepSpeed's universal format (written on another
    number of ranks or ZeRO stage; see :mod:`distinctad.train.core.resume`).
    """
    import deepspeed

    ds_cfg = build_ds_config(ds, train)
    if load_universal:
        ds_cfg["checkpoint"] = {**ds_cfg.get("checkpoint", {}), "load_universal": True}
    reshape_0d_parameters(model)
    from distinctad.train.core.checkpoint import frozen_record

    frozen = frozen_record(model)  # on the plain model: ZeRO-3 partitions the parameters below
    all_groups = param_groups(model, train.weight_decay)  # [decay, no_decay]
    groups = [g for g in all_groups if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    fused = use_fused_adamw(train.adamw_kernel)
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    # Which group decays: a checkpoint load overwrites the groups' settings (ZeRO-3's universal loader copies the
    # first group's into all), so apply_optimizer_settings puts them back from the config by position.
    engine.distinctad_group_decays = [g is all_groups[0] for g in groups]
    engine.distinctad_frozen = frozen  # checkpoints record it and check it on load (checkpoint.check_frozen)
    if train.compile:
        engine.compile(backend=train.compile_backend)  # DeepSpeed's documented way; compiles at the first forward
    logger.info(
        "DeepSpeed engine: ZeRO-%d, %s, %s AdamW%s, micro batch %d x accumulation %d x world %d",
        ds_cfg["zero_optimization"]["stage"],
        precision_of(ds_cfg),
        "fused" if fused else "foreach",
        f", torch.compile ({train.compile_backend})" if train.compile else "",
        train.micro_batch_size,
        train.grad_accum,
        engine.world_size,
    )
    return engine, ds_cfg


def precision_of(ds_cfg: dict[str, Any]) -> str:
    """'bf16', 'fp16' or 'fp32': what a ds_config (ours, or the one DeepSpeed saved in a checkpoint) trains in."""
    if ds_cfg.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds_cfg.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def apply_optimizer_settings(engine, train: TrainArgs) -> str:
    """Put ``train``'s optimizer settings in force at the engine's current step; returns them as one line.

    A checkpoint load restores the settings saved with the optimizer state (lr, schedule base, betas, weight decay,
    ZeRO's clipping norm). On resume this launch's config is in force for every key, so they are set again here:
    the LR schedule is rebuilt from ``train`` (warm-up, cosine to ``max_steps``) at the step the schedule reached.
    With an unchanged config this changes nothing (same floats), so an exact resume stays bit-identical.
    """
    sched, groups = engine.lr_scheduler, engine.optimizer.param_groups
    fn = lr_lambda(train)
    decays = getattr(engine, "distinctad_group_decays", [True] * len(groups))
    sched.lr_lambdas = [fn] * len(groups)
    sched.base_lrs = [train.lr] * len(groups)
    for group, decay in zip(groups, decays, strict=True):
        group["initial_lr"] = train.lr
        group["lr"] = train.lr * fn(sched.last_epoch)  # what LambdaLR.get_lr computes
        group["betas"] = tuple(train.betas)
        group["weight_decay"] = train.weight_decay if decay else 0.0
    sched._last_lr = [g["lr"] for g in groups]
    if hasattr(engine.optimizer, "clip_grad"):  # ZeRO-1/2 restore the saved clipping norm with their state
        engine.optimizer.clip_grad = train.grad_clip
    # read back from the optimizer, so the line says what is in force, not what was asked for
    first = groups[0]
    clip = getattr(engine.optimizer, "clip_grad", engine.gradient_clipping())
    return (
        f"lr {first['lr']:.4g} at step {sched.last_epoch} (peak {sched.base_lrs[0]:g}, warm-up {train.warmup_steps}, "
        f"cosine to {train.min_lr_ratio:g}x at step {train.max_steps}), betas {tuple(first['betas'])}, "
        f"weight decay {[g['weight_decay'] for g in groups]}, grad clip {clip:g}"
    )
