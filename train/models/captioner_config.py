"""The Stage-II captioner's config, its Table D.2 presets and its decoding settings: dataclasses only (no torch), so
``--help`` is fast.

``distinctad.train.core.config.from_dict`` expands ``preset`` through :data:`PRESETS` (any dataclass with a
``PRESETS`` class attribute and a ``preset`` field gets this), explicit keys winning over the preset's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

IGNORE = -100
"""Label id that the cross-entropy ignores (PyTorch's default ``ignore_index``)."""


@dataclass
class CaptionerConfig:
    """Everything that defines a Stage-II captioner (architecture, ablation switches, LLM, LoRA).

    Widths and counts whose source our sources do not state (L, K, d) are our defaults; see DESIGN.md "Sources".
    """

    preset: str = ""
    """
    Table D.2 row A0|B1|B2|B3|C0|C1|C2|C3: sets alpha_path, beta_path and lambda_dist (keys given explicitly in the
    YAML or on the command line still win); empty: no preset.
    """

    # ---- visual side
    PRESETS: ClassVar[dict[str, dict[str, Any]]]  # set below the class: Table D.2 rows -> switch values

    feature_dim: int = 512
    """D: width of the frame features (512 for CLIP ViT-B/32 and B/16, 768 for L/14)."""
    d_model: int = 512
    """d: width of the latent tokens, the EMA bases and the cross-attention."""
    num_latents: int = 10
    """L: visual tokens per clip produced by the Perceiver resampler."""
    perceiver_layers: int = 2
    """Perceiver attention + MLP blocks."""
    perceiver_heads: int = 8
    """Perceiver attention heads (must divide d_model)."""
    max_frames: int = 64
    """Longest clip, in frames, the Perceiver's temporal position table covers."""
    # ---- Contextual EMA
    num_bases: int = 64
    """K: EMA bases per window."""
    ema_iters: int = 3
    """EM iterations per window."""
    tau: float = 1.0
    """E-step temperature: Z = softmax(H Mᵀ / tau)."""
    momentum: float = 0.9
    """Running-mean momentum: mu <- momentum * mu + (1 - momentum) * mean over the batch of M."""
    ema_grad: bool = False
    """Let gradients flow through the EM iterations (EMANet: no)."""
    # ---- ablation switches (Table D.2; see distinctive_prompt.py for our reading)
    alpha_path: bool = False
    """α-path: clip i's prompt is H_i + α·Ĥ_i."""
    alpha: float = 1.0
    """α (initial value when learnable)."""
    alpha_learnable: bool = False
    """Train α as a scalar parameter."""
    beta_path: bool = False
    """β-path: the prompt also carries β·mean_{j≠i} Ĥ_j as L extra tokens."""
    beta: float = 0.0
    """β (initial value when learnable). Our default: 0, learnable, so the β-path starts closed and opens as far as
    training finds the neighbours' distinctive features useful. A fixed β = 1 hands every clip its neighbours'
    features at full weight: on quick-start CLIP-AD features B2 then lost to A0 at 100 and at 400 steps (R@5/16
    -6.7 and -10.1 points, both significant), and C3 lost with it; see the README's Table D.2 section."""
    beta_learnable: bool = True
    """Train β as a scalar parameter (our default; see ``beta``)."""
    lambda_dist: float = 0.0
    """Weight of the distinctive-word loss L_dist (0 = off; still reported, without gradient)."""
    max_dist_words: int = 16
    """At most this many distinctive words per clip enter L_dist."""
    # ---- text
    context_ads: int = 3
    """K previous ADs (ground truth, oldest first) given as text context before the AD (0 = none)."""
    max_context_tokens: int = 96
    """Context tokens kept (the most recent ones)."""
    max_ad_tokens: int = 67
    """AD tokens kept for the loss (the <eos> comes on top)."""
    # ---- LLM
    llm: str = "gpt2"
    """Causal LM: local HF directory or hub-cache id (GPT-2 default; LLaMA-3-8B by path), "tiny-gpt2", "tiny-llama"."""
    tokenizer: str | None = None
    """Tokenizer directory (default: the LLM's; tiny LLMs need a trained one, see llm.train_bpe_tokenizer)."""
    llm_dtype: str | None = None
    """Weight dtype of the LLM ("bfloat16", "float32"; default as saved)."""
    freeze_llm: bool = False
    """Freeze every LLM weight (only our modules train)."""
    gradient_checkpointing: bool = False
    """Recompute LLM activations in the backward pass (activation checkpointing: the 8B LLM's memory saver)."""
    attn_implementation: str = "sdpa"
    """
    The LLM's attention kernel (HF attn_implementation): 'sdpa' (PyTorch scaled_dot_product_attention: flash or
    memory-efficient kernels on GPUs), 'flash_attention_2' (needs CUDA and the flash-attn package; else sdpa, with a
    notice) or 'eager'.
    """
    lora: bool = False
    """Wrap the LLM with LoRA adapters (peft): base frozen, adapters + our modules train."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA adapter input."""
    lora_targets: list[str] | None = field(default=None)
    """Modules to adapt (default: c_attn for GPT-2; q/k/v/o_proj for LLaMA)."""

    def __post_init__(self):
        if self.attn_implementation not in ("sdpa", "flash_attention_2", "eager"):
            raise ValueError(
                f"model.attn_implementation must be sdpa, flash_attention_2 or eager, got {self.attn_implementation!r}"
            )
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}' (choose from {', '.join(PRESETS)})")
        for name in (
            "feature_dim",
            "d_model",
            "num_latents",
            "perceiver_layers",
            "num_bases",
            "ema_iters",
            "max_ad_tokens",
            "lora_r",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.perceiver_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by perceiver_heads {self.perceiver_heads}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.lambda_dist < 0:
            raise ValueError(f"lambda_dist must be >= 0, got {self.lambda_dist}")
        if self.context_ads < 0 or self.max_context_tokens < 0:
            raise ValueError("context_ads and max_context_tokens must be >= 0")


# Table D.2 rows as named presets (``--model.preset C3``). Which paths each row switches on is Table D.2's grid; the
# λ_dist of the C rows is our default (the value the paper used is not in our sources).
DEFAULT_LAMBDA_DIST = 0.1
PRESETS: dict[str, dict[str, Any]] = {
    "A0": dict(alpha_path=False, beta_path=False, lambda_dist=0.0),
    "B1": dict(alpha_path=True, beta_path=False, lambda_dist=0.0),
    "B2": dict(alpha_path=False, beta_path=True, lambda_dist=0.0),
    "B3": dict(alpha_path=True, beta_path=True, lambda_dist=0.0),
    "C0": dict(alpha_path=False, beta_path=False, lambda_dist=DEFAULT_LAMBDA_DIST),
    "C1": dict(alpha_path=True, beta_path=False, lambda_dist=DEFAULT_LAMBDA_DIST),
    "C2": dict(alpha_path=False, beta_path=True, lambda_dist=DEFAULT_LAMBDA_DIST),
    "C3": dict(alpha_path=True, beta_path=True, lambda_dist=DEFAULT_LAMBDA_DIST),
}

CaptionerConfig.PRESETS = PRESETS


@dataclass
class GenerationArgs:
    """How the captioner decodes: the one definition of the generation defaults.

    The Stage-II eval section (``eval.generation``), ``distinctad-generate``'s flags and
    :meth:`~distinctad.train.models.captioner.DistinctADCaptioner.generate` all read these. The values are our
    defaults (DESIGN §5.7); the supplementary does not state the decoding settings.
    """

    num_beams: int = 5
    """Beam width."""
    repetition_penalty: float = 1.2
    """HF repetition penalty (1: none)."""
    no_repeat_ngram_size: int = 3
    """Never repeat an n-gram of this size (0: off)."""
    max_new_tokens: int = 67
    """Longest AD in tokens."""
    batch_size: int = 2
    """Windows per generation call (and rank)."""

    def decoding(self) -> dict[str, Any]:
        """The keyword arguments of HF ``generate`` these settings set (everything but ``batch_size``)."""
        return dict(
            num_beams=self.num_beams,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            max_new_tokens=self.max_new_tokens,
        )
