"""The recon job's config: dataclasses only (no torch), so ``distinctad-train recon --help`` is fast.

Sections ``data``, ``model`` and ``eval`` are the experiment's own; ``run``, ``train``, ``deepspeed`` and
``tracking`` are the shared ones of :mod:`distinctad.train.core.params`. Where a default follows Table A.1
(supplementary A: frozen CLIP text tower, one linear projector, frozen GPT-2, 10 epochs on MAD-v2-Named, scored on
MAD-Eval) the field's help says so; every other default is our choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distinctad.data.annotations import BAD_UTF8_POLICIES, DEFAULT_BAD_UTF8
from distinctad.train.core.config import ConfigError
from distinctad.train.core.params import JobConfig
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.models.clip_names import TINY_MODEL

RECON_DECODING = dict(num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=67, batch_size=32)
"""Recon's decoding defaults (our choice): greedy and unpenalised, since a reconstruction should copy the AD."""


@dataclass
class ReconDataArgs:
    """Which ADs train the projector and which are reconstructed and scored."""

    train_annotations: str = ""
    """
    Training ADs: AutoAD-style CSV or MAD JSON (Table A.1: MAD-v2-Named train); empty: the embedded SynthMAD default's
    annotations, generated under data.synth_dir on first use.
    """
    eval_annotations: str = ""
    """
    Eval ADs (CSV or MAD JSON; Table A.1: MAD-Eval, shipped as data/assets/madeval_anno.csv); empty: the same file
    as data.train_annotations.
    """
    train_movies: list[str] = field(default_factory=list)
    """Train only on these movies of data.train_annotations (empty: all)."""
    eval_movies: list[str] = field(default_factory=list)
    """Evaluate only on these movies of data.eval_annotations (empty: all)."""
    exclude_eval_movies: bool = True
    """
    Drop the eval movies from the training ADs, so one file can be split by movie by listing only data.eval_movies.
    """
    columns: dict[str, str] = field(default_factory=lambda: {})
    """CSV column mapping, keys movie/sentence/start/end/movie_duration (values: the header names in the file)."""
    timestamp_field: Literal["timestamps", "ext_timestamps"] = "timestamps"
    """MAD JSON timestamp field (only orders the ADs here)."""
    bad_utf8: Literal[BAD_UTF8_POLICIES] = DEFAULT_BAD_UTF8  # type: ignore[valid-type]
    """Invalid UTF-8 in an annotation (the same policies and default as every CLI; see distinctad-shards --help)."""
    max_train_ads: int = 0
    """Train on at most this many ADs, evenly spaced over the set (0: all)."""
    max_eval_ads: int = 0
    """Evaluate on at most this many ADs, evenly spaced over the set (0: all)."""
    synth_dir: str = "work/synthmad"
    """Where the SynthMAD default lives (used when data.train_annotations is empty)."""

    def __post_init__(self) -> None:
        if self.max_train_ads < 0 or self.max_eval_ads < 0:
            raise ConfigError("data.max_train_ads and data.max_eval_ads must be >= 0")


@dataclass
class ReconModelArgs:
    """The frozen CLIP text tower, what the projector sees, and the frozen LM (or its tiny stand-in)."""

    projector_input: Literal["cls", "words"] = "words"
    """
    What the projector sees: 'cls' = the pooled [CLS] (EOT) vector, one LM token; 'words' = the per-token outputs of all
    the AD's word tokens, one LM token each.
    """
    clip_model: str = TINY_MODEL
    """
    open_clip architecture of the frozen text tower (Table A.1 does not say which CLIP; ViT-B-32 in
    launch/configs/recon_vitb32_gpt2.yaml is our choice).
    """
    clip_pretrained: str = ""
    """
    Local CLIP weights: a checkpoint file, a folder (save_clip / open_clip hub export) or an open_clip tag in the local
    cache (e.g. openai); empty: random weights, saved to <run dir>/clip on first use (tests only).
    """
    clip_cache_dir: str = ""
    """Cache folder to look an open_clip tag up in (empty: the standard caches)."""
    skip_punctuation: bool = False
    """
    'words': leave pure-punctuation tokens out of the projector input (default False: Table A.1 feeds "all word
    tokens"; counting punctuation among them is our reading).
    """
    normalize: bool = False
    """L2-normalise the CLIP outputs before the projector."""
    llm: str = "tiny-gpt2"
    """
    The frozen LM: a local Hugging Face directory (Table A.1: GPT-2; the 124M one is our choice), or 'tiny-gpt2'
    (random; pre-train it with model.pretrain_steps).
    """
    tokenizer: str = ""
    """LM tokenizer directory; empty: the LM's own, or for tiny-gpt2 a byte-level BPE trained on the training ADs."""
    tokenizer_vocab: int = 2000
    """Vocabulary size of the BPE tokenizer trained for tiny-gpt2."""
    pretrain_steps: int = 0
    """
    Pre-train the LM on the training ADs for this many steps before freezing it (a stand-in for pre-trained GPT-2 where
    no weights exist); the result is saved to <run dir>/lm and reused on resume. 0: use the LM as given.
    """
    pretrain_batch_size: int = 32
    """Blocks per pre-training step."""
    pretrain_block_size: int = 128
    """
    Tokens per pre-training block (the ADs are packed back to back); copy rows hold up to (block - 2) / 2 tokens of an
    AD.
    """
    pretrain_repeat: float = 0.0
    """
    Copy rows per pre-training step, as a fraction of model.pretrain_batch_size: '[shuffled AD] <BOS> [the same] <EOS>',
    so a tiny LM learns to copy from its context as web-pretrained LMs can (see pretrain_lm). 0: plain text only.
    """
    pretrain_lr: float = 3e-3
    """Peak pre-training learning rate (AdamW, warm-up + cosine)."""
    max_ad_tokens: int = 64
    """ADs are cut to this many LM tokens in training."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.pretrain_repeat <= 1.0:
            raise ConfigError(f"model.pretrain_repeat must be in [0, 1], got {self.pretrain_repeat}")
        if self.pretrain_steps < 0 or min(self.max_ad_tokens, self.pretrain_batch_size, self.pretrain_block_size) < 1:
            raise ConfigError(
                "model.pretrain_steps must be >= 0, model.max_ad_tokens, model.pretrain_batch_size "
                "and model.pretrain_block_size >= 1"
            )


@dataclass
class ReconEvalArgs:
    """How the reconstructions are decoded and scored (decoding defaults are our choice)."""

    generation: GenerationArgs = field(default_factory=lambda: GenerationArgs(**RECON_DECODING))
    """
    Decoding (the fields of Stage-II's eval.generation); recon's defaults: greedy, no repetition penalty, no n-gram
    block (an AD may repeat words), 32 ADs per call.
    """
    metrics: list[str] = field(default_factory=lambda: ["bleu", "meteor", "rouge", "cider", "spice"])
    """Caption metrics of the eval harness (SPICE is skipped with a notice when its Stanford models are absent)."""
    samples_to_log: int = 20
    """Reconstructions shown beside the ground truth in the samples table."""

    def __post_init__(self) -> None:
        g = self.generation
        if g.num_beams < 1 or g.max_new_tokens < 1 or g.batch_size < 1:
            raise ConfigError("eval.generation.num_beams, max_new_tokens and batch_size must be >= 1")


@dataclass
class ReconJob(JobConfig):
    """The whole recon job: shared sections, the epoch budget and the experiment's own sections."""

    epochs: int = 10
    """Passes over the training ADs (Table A.1: 10); sets train.max_steps. 0: train for train.max_steps as given."""
    data: ReconDataArgs = field(default_factory=ReconDataArgs)
    """Training and eval ADs."""
    model: ReconModelArgs = field(default_factory=ReconModelArgs)
    """Frozen CLIP text tower, projector input, frozen LM."""
    eval: ReconEvalArgs = field(default_factory=ReconEvalArgs)
    """Reconstruction decoding and scoring."""

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
