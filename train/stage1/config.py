"""Stage-I job config: dataclasses only (no torch), so `distinctad-train stage1 --help` is fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distinctad.train.core.config import ConfigError
from distinctad.train.core.params import JobConfig
from distinctad.train.models.clip_names import DEFAULT_MODEL


@dataclass
class Stage1LossConfig:
    """Stage-I loss settings."""

    lambda_mil: float = 1.0
    """Weight of the frame–word MIL-NCE term: total = global + lambda_mil * MIL (0 disables it)."""
    mil_mode: Literal["max", "logsumexp"] = "max"
    """How a word is scored against a clip's T frames: the best frame's cosine ("max") or a smooth maximum
    ``tau_f * logsumexp(cos / tau_f) - tau_f * log T`` ("logsumexp") that lets several frames share the credit."""
    mil_temperature: float = 0.07
    """Softmax temperature of the MIL-NCE over words (fixed; the global loss uses the model's learnable scale)."""
    frame_temperature: float = 0.1
    """tau_f of the "logsumexp" frame pooling (smaller = closer to max); unused in "max" mode."""
    local_loss: bool = True
    """open_clip's ``local_loss``: each rank scores its local clips against all gathered ADs (B_local x B_global
    logits) instead of building the full B_global x B_global matrix. Same mean loss and gradients."""
    gather_with_grad: bool = True
    """Gather features with ``torch.distributed.nn.all_gather`` so gradients flow back to the rank that owns them."""

    def __post_init__(self):
        if self.mil_mode not in ("max", "logsumexp"):
            raise ValueError(f"mil_mode must be 'max' or 'logsumexp', got {self.mil_mode!r}")
        if self.mil_temperature <= 0 or self.frame_temperature <= 0:
            raise ValueError("mil_temperature and frame_temperature must be > 0")
        if self.lambda_mil < 0:
            raise ValueError(f"lambda_mil must be >= 0, got {self.lambda_mil}")


EXPORT_DIR = "clip_ad"
"""Sub-folder of the run directory holding the exported CLIP-AD (open_clip folder layout)."""


@dataclass
class Stage1ModelArgs:
    name: str = DEFAULT_MODEL
    """open_clip architecture: ViT-B-32, ViT-B-16, or distinctad-tiny (tests, SynthMAD)."""
    pretrained: str = ""
    """
    Local CLIP weights: checkpoint file, folder (e.g. a previous run's clip_ad/), or an open_clip tag already in the
    local cache; empty: random init (tests only). Nothing is ever downloaded.
    """
    cache_dir: str = ""
    """Hugging Face / open_clip cache folder to look tags up in; empty: the standard caches."""
    trainable_vision_blocks: int | None = None
    """
    null: train the whole vision tower; k: only its last k blocks (+ ln_post and proj). The text tower is always frozen.
    """
    grad_checkpointing: bool = False
    """Activation checkpointing in the vision transformer (memory for speed)."""
    image_size: int = 0
    """Override the vision input size (position embeddings resized); 0: the model's own."""
    skip_punctuation: bool = True
    """Leave pure-punctuation BPE tokens out of the MIL words."""
    export: bool = True
    """At the end, save the adapted model to <run dir>/clip_ad (what extraction loads)."""

    def __post_init__(self) -> None:
        if self.trainable_vision_blocks is not None and self.trainable_vision_blocks < 0:
            raise ConfigError(f"model.trainable_vision_blocks must be null or >= 0, got {self.trainable_vision_blocks}")
        if self.image_size < 0:
            raise ConfigError(f"model.image_size must be >= 0, got {self.image_size}")


@dataclass
class Stage1DataArgs:
    train_shards: str = ""
    """Training frames shards: a folder, a brace pattern or a list; empty: SynthMAD."""
    eval_shards: str = ""
    """
    Held-out frames shards for retrieval and Fig. B.2; empty: SynthMAD's eval split (only when train_shards is empty
    too).
    """
    synth_dir: str = "work/synthmad"
    """Where the SynthMAD default is generated and sharded (reused if there)."""
    synth_movies: int = 4
    """SynthMAD: number of movies (the last one is the eval split)."""
    synth_ads_per_movie: int = 48
    """SynthMAD: ADs per movie."""
    num_workers: int = 2
    """DataLoader workers per rank (JPEG decoding and CLIP preprocessing; with jpeg_decode=device only reading)."""
    jpeg_decode: Literal["auto", "workers", "device"] = "auto"
    """
    Where frames are decoded and transformed. 'workers': PIL and open_clip's transforms in the DataLoader workers;
    'device': the workers pass the JPEG bytes and the rank decodes each batch on its GPU (torchvision's nvJPEG
    decode_jpeg) and runs the same transforms on tensors (on a CPU rank: torchvision's CPU decoder, in the main
    process); 'auto': device on CUDA when nvJPEG works, else workers.
    """
    augment: bool = True
    """Train with open_clip's RandomResizedCrop (drawn per frame); off: the eval transform."""
    aug_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    """RandomResizedCrop area range (open_clip's default)."""
    eval_batch_size: int = 0
    """Clips per rank per eval forward; 0: train.micro_batch_size."""

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if len(self.aug_scale) != 2 or not 0 < self.aug_scale[0] <= self.aug_scale[1] <= 1:
            raise ConfigError(f"data.aug_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {self.aug_scale}")
        if self.eval_shards and not self.train_shards:
            raise ConfigError("data.eval_shards is set but data.train_shards is empty (SynthMAD brings its own)")


@dataclass
class Stage1EvalArgs:
    vanilla_baseline: bool = True
    """Also report retrieval of the model as built (vanilla CLIP), once, as val/vanilla_*."""
    train_shards: int = 0
    """
    Also report retrieval on the first this many training shards (eval transform) as val/train_*: how well the training
    clips are fit. 0: off; -1: all of them.
    """
    figure: bool = True
    """Draw the Fig. B.2 similarity matrices (vanilla CLIP, CLIP-AD, AD text) of one eval movie."""
    figure_movie: str = ""
    """Movie of the figure; empty: the first movie of the eval shards."""
    figure_clips: int = 32
    """Consecutive clips (from the movie's first AD) in the figure."""
    figure_band: int = 3
    """Band half-width w of the figure's band means (pairs with 1 <= |i-j| <= w)."""

    def __post_init__(self) -> None:
        if self.train_shards < -1:
            raise ConfigError(f"eval.train_shards must be -1, 0 or a count, got {self.train_shards}")
        if self.figure_clips < 2 or self.figure_band < 1:
            raise ConfigError("eval.figure_clips must be >= 2 and eval.figure_band >= 1")


@dataclass
class Stage1Job(JobConfig):
    model: Stage1ModelArgs = field(default_factory=Stage1ModelArgs)
    """The CLIP-AD model: architecture, weights, what trains."""
    loss: Stage1LossConfig = field(default_factory=Stage1LossConfig)
    """Global InfoNCE + frame-word MIL-NCE."""
    data: Stage1DataArgs = field(default_factory=Stage1DataArgs)
    """Frames shards and preprocessing."""
    eval: Stage1EvalArgs = field(default_factory=Stage1EvalArgs)
    """Retrieval metrics and the Fig. B.2 analysis."""
