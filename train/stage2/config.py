"""Stage-II job config: dataclasses only (no torch), so `distinctad-train stage2 --help` is fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from distinctad.train.core.params import JobConfig
from distinctad.train.models.captioner_config import CaptionerConfig, GenerationArgs


@dataclass
class Stage2DataArgs:
    train_shards: str = ""
    """
    Window feature shards to train on (folder, glob or brace pattern); empty: the embedded SynthMAD default, generated
    and sharded under data.synth_dir on first use.
    """
    eval_shards: str = ""
    """Window feature shards to evaluate on; empty: SynthMAD's eval split."""
    synth_dir: str = "work/synthmad"
    """Where the SynthMAD default lives (reused when present)."""
    synth_movies: int = 4
    """SynthMAD movies (the last one is the eval split)."""
    synth_ads_per_movie: int = 48
    """SynthMAD ADs per movie."""
    synth_seed: int = 0
    """SynthMAD seed."""
    num_workers: int = 0
    """DataLoader workers per rank."""
    resampled: bool = False
    """Draw training shards with replacement (webdataset ResampledShards)."""


@dataclass
class Stage2EvalArgs:
    enabled: bool = True
    """
    Generate and score the eval split (every eval_every steps and at the end); off: train only, and score later with
    distinctad-generate + distinctad-eval.
    """
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    """Decoding."""
    context: str = "gt"
    """
    Text context at generation: gt (the ground-truth previous ADs, as papers commonly report), predicted (the model's
    own previous ADs, autoregressive across windows: what a real description track can use) or none.
    """
    metrics: list[str] = field(default_factory=lambda: ["bleu", "meteor", "rouge", "cider"])
    """Captioning metrics (pycocoevalcap)."""
    recall_k: int = 5
    """k of Recall@k/N."""
    recall_n: int = 16
    """N of Recall@k/N."""
    backend: str = "lexical"
    """Recall@k/N similarity: lexical, embedding or bertscore."""
    backend_model: str = ""
    """Model directory of the embedding / bertscore backend."""
    max_windows: int = 0
    """Evaluate on at most this many windows per rank (0: all)."""
    samples_to_log: int = 16
    """Generated ADs shown beside the ground truth in the samples table artifact."""


def _default_model() -> CaptionerConfig:
    return CaptionerConfig(llm="tiny-gpt2", feature_dim=512, d_model=64, num_latents=4, perceiver_heads=4, num_bases=8)


@dataclass
class Stage2Job(JobConfig):
    data: Stage2DataArgs = field(default_factory=Stage2DataArgs)
    """Window shards (or the SynthMAD default)."""
    model: CaptionerConfig = field(default_factory=_default_model)
    """The captioner (DESIGN §5); the job's default is a tiny one (tiny-gpt2, d 64, L 4, K 8)."""
    eval: Stage2EvalArgs = field(default_factory=Stage2EvalArgs)
    """Evaluation through the eval harness."""
