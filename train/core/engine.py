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

from distinctad.common import resolve_path
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


def build_engine(model: torch.nn.Module, train: TrainArgs, ds: DeepSpeedArgs):
    """``deepspeed.initialize`` with our optimizer and schedule; returns (engine, ds_config)."""
    import deepspeed

    ds_cfg = build_ds_config(ds, train)
    reshape_0d_parameters(model)
    groups = [g for g in param_groups(model, train.weight_decay) if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, train.warmup_steps, train.max_steps, train.min_lr_ratio)
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    logger.info(
        "DeepSpeed engine: ZeRO-%d, %s, micro batch %d x accumulation %d x world %d",
        ds_cfg["zero_optimization"]["stage"],
        "bf16" if ds_cfg["bf16"]["enabled"] else "fp16" if ds_cfg["fp16"]["enabled"] else "fp32",
        train.micro_batch_size,
        train.grad_accum,
        engine.world_size,
    )
    return engine, ds_cfg
