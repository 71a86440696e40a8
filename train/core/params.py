"""Config sections shared by every training job (run, train, deepspeed, tracking).

Each job (``trivial``, ``stage1``, ``stage2``, ``recon``) defines its own top-level dataclass holding these
sections plus its own ``model`` / ``data`` sections. Every field is documented by the string literal on the line
below it (torchtitan's and litgpt's convention); :func:`distinctad.train.core.config.describe` reads those for
``distinctad-train JOB --help``. This module imports no torch: ``--help`` must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distinctad.train.core.config import ConfigError


@dataclass
class RunArgs:
    name: str = "distinctad"
    """Run name: the MLflow run name and the default run directory runs/<name>."""
    out_dir: str = ""
    """Run directory (checkpoints, resolved config, metrics.jsonl); empty means runs/<name>."""
    seed: int = 0
    """Seed for model init and data order; every rank uses the same one."""
    resume: str = "auto"
    """
    'auto': resume from the latest checkpoint in the run directory if there is one; 'none': start fresh; or where to
    resume from: another run directory, its checkpoints folder or one step_NNNNNNNN folder.
    """
    resume_config: Literal["new", "checkpoint"] = "new"
    """
    On resume, the config in force for every key: 'new': this launch's (YAML file + command line); 'checkpoint': the
    checkpoint's config.yaml in place of the YAML file, with this launch's run/tracking sections and command-line
    keys on top. Either way the keys that differ from the checkpoint are listed at start-up, the LR schedule is
    rebuilt from train.* at the resumed step, and a model whose parameter shapes differ is refused.
    """

    def __post_init__(self) -> None:
        if not self.out_dir:
            self.out_dir = f"runs/{self.name}"


@dataclass
class TrainArgs:
    max_steps: int = 100
    """Optimizer steps to train for (a resumed run continues up to this number)."""
    micro_batch_size: int = 4
    """Samples per rank per forward pass (DeepSpeed train_micro_batch_size_per_gpu)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (DeepSpeed gradient_accumulation_steps)."""
    lr: float = 1e-4
    """Peak learning rate after warm-up."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio at max_steps."""
    warmup_steps: int = 10
    """Linear warm-up steps from 0 to lr."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases, norms and 1-d parameters)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient norm clipping (DeepSpeed gradient_clipping); 0 disables it."""
    log_every: int = 10
    """Log train metrics every this many optimizer steps."""
    eval_every: int = 0
    """Evaluate every this many steps (0: only at the end)."""
    ckpt_every: int = 50
    """Checkpoint every this many steps (and always at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep in the run directory."""
    save_frozen: bool = False
    """
    Also write frozen parameters (a frozen LLM, LoRA's base) into every checkpoint; false: only trainable weights,
    buffers and optimizer state, loaded on top of the frozen weights the config rebuilds (checked on load).
    """
    max_bad_steps: int = 5
    """Stop after this many non-finite losses in a row (each one is skipped and logged)."""
    stop_after: int = 0
    """Stop (as if interrupted) after this many steps of this launch; 0: never. For tests."""
    # ---- GPU path (each has a CPU fallback; see train/core/engine.py)
    adamw_kernel: Literal["auto", "fused", "foreach"] = "auto"
    """torch's AdamW implementation: 'fused' (one kernel for all parameters), 'foreach'; 'auto': fused on CUDA."""
    compile: bool = False
    """torch.compile the model (DeepSpeed's engine.compile) before the first step; costs start-up time."""
    compile_backend: str = "inductor"
    """torch.compile backend ('inductor'; 'eager' checks the plumbing without code generation)."""
    host_memory: Literal["auto", "pinned", "pageable"] = "auto"
    """
    Loader batches in 'pinned' (page-locked: host-to-GPU copies run asynchronously) or 'pageable' memory; 'auto':
    pinned on CUDA. Pinned without CUDA falls back to pageable with a notice.
    """

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.compile and not self.compile_backend:
            raise ConfigError("train.compile_backend must name a torch.compile backend, e.g. inductor")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must hold two numbers, got {self.betas}")


@dataclass
class DeepSpeedArgs:
    config: str = "launch/ds_config.json"
    """
    DeepSpeed JSON config; batch sizes, clipping and precision are filled in from this file's train/deepspeed sections.
    """
    zero_stage: int = -1
    """ZeRO stage 0/1/2/3; -1 keeps the stage written in the JSON."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """'auto': bf16 on a GPU that supports it, fp32 on CPU."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (-1, 0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage must be -1, 0, 1, 2 or 3, got {self.zero_stage}")


@dataclass
class TrackingArgs:
    enabled: bool = True
    """Log to MLflow from rank 0 (metrics always also go to <run dir>/metrics.jsonl)."""
    uri: str = ""
    """MLflow tracking URI; empty: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    experiment: str = "distinctad"
    """MLflow experiment name."""
    parent_run_id: str = ""
    """Nest this run under an existing MLflow run (pipelines, ablations)."""


@dataclass
class JobConfig:
    """The sections every job shares; a job's top-level config subclasses it and adds its own sections.

    ``describe`` and ``field_docs`` walk the class hierarchy, so ``--help`` lists these first, then the job's.
    """

    run: RunArgs = field(default_factory=RunArgs)
    """Run identity, output directory, seed, resume."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """Optimisation, logging and checkpoint cadence."""
    deepspeed: DeepSpeedArgs = field(default_factory=DeepSpeedArgs)
    """DeepSpeed JSON, ZeRO stage, precision."""
    tracking: TrackingArgs = field(default_factory=TrackingArgs)
    """MLflow tracking."""
