"""AD reconstruction (supplementary A, Table A.1): can a frozen LM rebuild an AD from its frozen CLIP text embedding?

    deepspeed launch/recon.sh [CONFIG.yaml] [--section.key VALUE ...]

The frozen CLIP text tower encodes an AD; either its pooled [CLS] (EOT) vector or the per-token outputs of all its
word tokens go through ONE learnable linear projector into the LM's embedding space; the frozen LM (GPT-2) then
reads ``[projected CLIP vector(s)][<BOS>]`` and is trained to continue with ``[AD][<EOS>]``. Only the projector
learns, so the scores measure how much of the AD the CLIP text embedding still holds, which is what motivates
Stage-I's fine-grained word loss (the [CLS] vector keeps little, the word tokens nearly everything).

Evaluation generates every eval AD back from its embedding, scores the reconstructions with the eval harness and
writes the Table A.1 row next to the paper's numbers (``eval/step_*_table_a1.md``, also an MLflow artifact).
``python -m distinctad.train.recon.task --runs RUN_DIR ...`` puts the rows of several runs into one table.

Without real weights (``model.clip_pretrained`` / ``model.llm`` empty or tiny), the CLIP tower is random and the
LM is a tiny GPT-2 pre-trained on the training ADs for ``model.pretrain_steps`` steps (:func:`pretrain_lm`): a
stand-in for pre-trained GPT-2. Both are saved into the run directory on first use and loaded from there, so
a resumed run and a later generation use the very same frozen weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from distinctad.common import atomic_path, atomic_write_json, atomic_write_text
from distinctad.data.annotations import AD, read_annotations
from distinctad.train.core import distributed as D
from distinctad.train.core.config import ConfigError
from distinctad.train.core.params import DeepSpeedArgs, RunArgs, TrackingArgs, TrainArgs
from distinctad.train.core.tracking import Tracker
from distinctad.train.models.clip_ad import (
    CLIPAD,
    TINY_MODEL,
    WeightsNotFoundError,
    build_clip_ad,
    create_clip,
    save_clip,
    text_token_outputs,
)
from distinctad.train.models.llm import special_ids

logger = logging.getLogger(__name__)

IGNORE = -100
PROJECTOR_FILE = "projector.safetensors"
RECON_CONFIG_FILE = "recon.json"

# Table A.1 of the paper (MAD-Eval; CLIP ViT-B/32 text tower + 1 linear projector + GPT-2, 10 epochs on
# MAD-v2-Named). BLEU-2/3 are not reported there.
PAPER_TABLE_A1: dict[str, dict[str, float]] = {
    "cls": {"BLEU-1": 29.3, "BLEU-4": 5.1, "METEOR": 13.2, "ROUGE-L": 29.4, "CIDEr": 92.2, "SPICE": 19.4},
    "words": {"BLEU-1": 80.8, "BLEU-4": 63.0, "METEOR": 47.4, "ROUGE-L": 82.4, "CIDEr": 612.5, "SPICE": 66.4},
}
ROW_NAMES = {"cls": "[CLS]", "words": "all word tokens"}
TABLE_COLUMNS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"]


class TrainableParametersError(RuntimeError):
    """Something other than the projector would be trained: the experiment would no longer measure CLIP."""


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class ReconDataArgs:
    train_annotations: str = ""
    """
    Training ADs: AutoAD-style CSV or MAD JSON (Table A.1: MAD-v2-Named train); empty: the embedded SynthMAD default's
    annotations, generated under data.synth_dir on first use.
    """
    eval_annotations: str = ""
    """Eval ADs (CSV or MAD JSON; Table A.1: MAD-Eval); empty: the same file as data.train_annotations."""
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
    bad_utf8: Literal["error", "repair", "drop"] = "repair"
    """Invalid UTF-8 in an annotation: fail, replace the bytes by U+FFFD, or drop the row."""
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
    projector_input: Literal["cls", "words"] = "words"
    """
    What the projector sees: 'cls' = the pooled [CLS] (EOT) vector, one LM token; 'words' = the per-token outputs of all
    the AD's word tokens, one LM token each.
    """
    clip_model: str = TINY_MODEL
    """open_clip architecture of the frozen text tower (Table A.1: ViT-B-32)."""
    clip_pretrained: str = ""
    """
    Local CLIP weights: a checkpoint file, a folder (save_clip / open_clip hub export) or an open_clip tag in the local
    cache (e.g. openai); empty: random weights, saved to <run dir>/clip on first use (tests only).
    """
    clip_cache_dir: str = ""
    """Cache folder to look an open_clip tag up in (empty: the standard caches)."""
    skip_punctuation: bool = False
    """'words': leave pure-punctuation tokens out of the projector input (the paper uses all word tokens)."""
    normalize: bool = False
    """L2-normalise the CLIP outputs before the projector."""
    llm: str = "tiny-gpt2"
    """
    The frozen LM: a local Hugging Face directory (Table A.1: GPT-2 124M), or 'tiny-gpt2' (random; pre-train it with
    model.pretrain_steps).
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
            raise ConfigError("model.pretrain_steps must be >= 0, model.max_ad_tokens, model.pretrain_batch_size "
                              "and model.pretrain_block_size >= 1")


@dataclass
class ReconEvalArgs:
    num_beams: int = 1
    """Beam width (1: greedy)."""
    max_new_tokens: int = 67
    """Longest reconstruction in LM tokens."""
    repetition_penalty: float = 1.0
    """HF repetition penalty (1: none; an AD may repeat words)."""
    no_repeat_ngram_size: int = 0
    """Never repeat an n-gram of this size (0: off)."""
    batch_size: int = 32
    """ADs per generation call."""
    metrics: list[str] = field(default_factory=lambda: ["bleu", "meteor", "rouge", "cider", "spice"])
    """Caption metrics of the eval harness (SPICE is skipped with a notice when its Stanford models are absent)."""
    samples_to_log: int = 20
    """Reconstructions shown beside the ground truth in the samples table."""

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("eval.num_beams, eval.max_new_tokens and eval.batch_size must be >= 1")


@dataclass
class ReconJob:
    run: RunArgs = field(default_factory=RunArgs)
    """Run identity, output directory, seed, resume."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """Optimisation, logging and checkpoint cadence."""
    deepspeed: DeepSpeedArgs = field(default_factory=DeepSpeedArgs)
    """DeepSpeed JSON, ZeRO stage, precision."""
    tracking: TrackingArgs = field(default_factory=TrackingArgs)
    """MLflow tracking."""
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


# ----------------------------------------------------------------------------------------------------------------
# Model


class ReconModel(nn.Module):
    """Frozen CLIP text tower → one linear projector → frozen causal LM.

    Args:
        clip: a :class:`CLIPAD` (its text tower, tokenizer and word mask are used; the vision tower is dropped).
        llm: a Hugging Face causal LM.
        tokenizer: the LM's tokenizer (bos / eos / pad ids).
        projector_input: ``"cls"`` or ``"words"``.
        normalize: L2-normalise the CLIP outputs before projecting them.
    """

    def __init__(self, clip: CLIPAD, llm: nn.Module, tokenizer, projector_input: str = "words",
                 normalize: bool = False):
        super().__init__()
        if projector_input not in ("cls", "words"):
            raise ValueError(f"projector_input must be 'cls' or 'words', got {projector_input!r}")
        # Only the text tower is used: the vision tower would be ~88M unused frozen weights (ViT-B/32) in memory
        # and in every checkpoint.
        clip.clip.visual = nn.Identity()
        self.clip = clip.requires_grad_(False)
        self.llm = llm.requires_grad_(False)
        self.projector_input = projector_input
        self.normalize = normalize
        proj = clip.clip.text_projection
        clip_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[-1]
        self.projector = nn.Linear(clip_dim, llm.get_input_embeddings().embedding_dim)
        self.bos_id, self.eos_id, self.pad_id = special_ids(tokenizer)
        self.train(self.training)

    def train(self, mode: bool = True) -> ReconModel:
        """Only the projector follows ``mode``: CLIP and the LM stay in eval mode (no dropout) for good."""
        super().train(mode)
        self.clip.eval()
        self.llm.eval()
        return self

    def tokenize_clip(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip token ids (B, ctx) of ``texts`` (CPU)."""
        return self.clip.tokenizer(list(texts))

    @torch.no_grad()
    def clip_features(self, clip_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen CLIP text outputs the projector sees.

        Returns:
            ``(feats (B, P, E), mask (B, P))``: P = 1 for ``cls`` (the pooled EOT vector); for ``words`` the
            per-token outputs of the word tokens (between SOT and EOT), P = the longest AD's last word position,
            ``mask`` False on non-words.
        """
        per_token, pooled = text_token_outputs(self.clip.clip, clip_tokens)  # (B, ctx, E), (B, E)
        if self.projector_input == "cls":
            feats = pooled[:, None]  # (B, 1, E)
            mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        else:
            mask = self.clip.word_mask(clip_tokens)  # (B, ctx)
            width = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
            feats, mask = per_token[:, :width], mask[:, :width]  # (B, P, E), (B, P)
        if self.normalize:
            feats = F.normalize(feats, dim=-1)
        return feats, mask

    def prefix(self, clip_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected CLIP vectors in the LM's embedding space: ``(prefix (B, P, H), mask (B, P))``."""
        feats, mask = self.clip_features(clip_tokens)
        prefix = self.projector(feats.to(self.projector.weight.dtype))  # (B, P, H)
        return prefix.to(self.llm.get_input_embeddings().weight.dtype), mask

    def forward(self, clip_tokens: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                text_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Next-token loss on the AD given ``[prefix][<BOS>]``.

        Args:
            clip_tokens: (B, ctx) open_clip ids of the ADs.
            text_ids: (B, S) LM ids ``<BOS> AD <EOS>``, right-padded; text_mask (B, S) bool.
            text_labels: (B, S) ``text_ids`` with IGNORE on <BOS> and padding.

        Returns:
            dict(loss (with gradient), num_tokens (AD tokens in the loss), prefix_len (mean projector tokens)).
        """
        prefix, prefix_mask = self.prefix(clip_tokens)  # (B, P, H), (B, P)
        text_emb = self.llm.get_input_embeddings()(text_ids)  # (B, S, H)
        text_mask = text_mask.bool()
        # Each row is [its own prefix tokens][its text], right-padded: no gap between the two, so positions run
        # 0.. as in generation (where left padding is handled by the attention-mask-derived position ids).
        rows, labels = [], []
        for b in range(len(text_ids)):
            p = prefix[b][prefix_mask[b]]  # (P_b, H)
            rows.append(torch.cat([p, text_emb[b][text_mask[b]]]))  # (P_b + S_b, H)
            labels.append(torch.cat([text_labels.new_full((len(p),), IGNORE), text_labels[b][text_mask[b]]]))
        lengths = torch.tensor([len(r) for r in rows], device=text_ids.device)
        inputs = pad_sequence(rows, batch_first=True)  # (B, L, H)
        attn = (torch.arange(inputs.shape[1], device=text_ids.device)[None] < lengths[:, None]).long()  # (B, L)
        labels = pad_sequence(labels, batch_first=True, padding_value=IGNORE)  # (B, L)
        # The LM head runs on the AD positions only: (B, L, vocab) logits of GPT-2 would be ~0.4 GB per 32 ADs.
        out = self.llm(inputs_embeds=inputs, attention_mask=attn, output_hidden_states=True, use_cache=False,
                       logits_to_keep=1)
        hidden = out.hidden_states[-1]  # (B, L, H), after the final norm
        target = labels[:, 1:]  # position t predicts token t+1
        sel = target != IGNORE
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][sel])  # (n_tok, vocab)
        loss = F.cross_entropy(logits.float(), target[sel])
        return {"loss": loss, "num_tokens": sel.sum().detach(),
                "prefix_len": prefix_mask.sum(1).float().mean().detach()}

    @torch.no_grad()
    def generate_ids(self, clip_tokens: torch.Tensor, num_beams: int = 1, max_new_tokens: int = 67,
                     repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                     **generate_kwargs: Any) -> torch.Tensor:
        """Reconstructed token ids (B, new tokens): the LM continues ``[prefix][<BOS>]`` (left-padded)."""
        prefix, prefix_mask = self.prefix(clip_tokens)  # (B, P, H)
        embed = self.llm.get_input_embeddings()
        bos = embed(torch.tensor([self.bos_id], device=prefix.device))  # (1, H)
        rows = [torch.cat([prefix[b][prefix_mask[b]], bos]) for b in range(len(prefix))]
        L = max(len(r) for r in rows)
        inputs = prefix.new_zeros(len(rows), L, prefix.shape[-1])
        attn = torch.zeros(len(rows), L, dtype=torch.long, device=prefix.device)
        for b, r in enumerate(rows):  # left padding: every row ends where generation starts
            inputs[b, L - len(r):] = r
            attn[b, L - len(r):] = 1
        kwargs = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                      no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=1, do_sample=False,
                      pad_token_id=self.pad_id, eos_token_id=self.eos_id, bos_token_id=self.bos_id)
        kwargs.update(generate_kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Passing `\w+` with `inputs_embeds`")
            return self.llm.generate(inputs_embeds=inputs, attention_mask=attn, **kwargs)

    def reconstruct(self, texts: Sequence[str], tokenizer, **gen_kwargs: Any) -> list[str]:
        """The LM's reconstruction of each AD in ``texts`` from its CLIP text embedding (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            device = self.projector.weight.device
            ids = self.generate_ids(self.tokenize_clip(texts).to(device), **gen_kwargs)
        finally:
            self.train(was_training)
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def check_only_projector_trainable(model: ReconModel) -> int:
    """Raise :class:`TrainableParametersError` unless exactly the projector's parameters require grad.

    Returns:
        The number of trainable parameters.
    """
    wrong = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projector.")]
    if wrong:
        raise TrainableParametersError(
            f"only the projector may train, but {len(wrong)} other parameter(s) require grad (e.g. '{wrong[0]}'): "
            "the CLIP text tower and the LM must stay frozen")
    frozen_proj = [n for n, p in model.projector.named_parameters() if not p.requires_grad]
    if frozen_proj:
        raise TrainableParametersError(f"the projector's '{frozen_proj[0]}' does not require grad")
    return sum(p.numel() for p in model.projector.parameters())


def collate(texts: Sequence[str], model: ReconModel, tokenizer, max_ad_tokens: int = 64) -> dict[str, torch.Tensor]:
    """A training batch: CLIP ids of the ADs and the LM's ``<BOS> AD <EOS>`` ids, labels and mask."""
    bos, eos, pad = model.bos_id, model.eos_id, model.pad_id
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = [[bos] + x[:max_ad_tokens] + [eos] for x in ids]
    S = max(len(r) for r in rows)
    text_ids = torch.full((len(rows), S), pad, dtype=torch.long)
    text_mask = torch.zeros(len(rows), S, dtype=torch.bool)
    for b, r in enumerate(rows):
        text_ids[b, :len(r)] = torch.tensor(r)
        text_mask[b, :len(r)] = True
    text_labels = text_ids.masked_fill(~text_mask, IGNORE)
    text_labels[:, 0] = IGNORE  # <BOS> is given, not predicted
    return dict(clip_tokens=model.tokenize_clip(texts), text_ids=text_ids, text_mask=text_mask,
                text_labels=text_labels)


# ----------------------------------------------------------------------------------------------------------------
# Stand-in LM


def pretrain_lm(texts: Sequence[str], tokenizer, model: nn.Module, *, steps: int, batch_size: int = 32,
                block_size: int = 128, lr: float = 3e-3, repeat: float = 0.0, seed: int = 0,
                progress: bool = True) -> list[float]:
    """Pre-train a causal LM on the ``<BOS> text <EOS>`` stream of ``texts``, packed into blocks, in place.

    A stand-in for pre-trained GPT-2 where no weights can be had: a tiny LM that has learned the language of ADs.
    The sentences are packed back to back (GPT-2 style) rather than one per row, so every position up to
    ``block_size`` is trained and the LM learns to continue after context: the reconstruction prompt puts the
    projected CLIP tokens before ``<BOS>``, which an LM trained only on sentences starting at position 0 has
    never seen.

    Web-pretrained LMs can also copy from their context (induction heads), which is what lets a linear projector
    make GPT-2 reconstruct an AD from its word tokens. A tiny LM trained briefly on a few thousand ADs does not
    learn it, and repeating a sentence would not teach it: the LM memorises the sentence instead. So with
    ``repeat`` > 0 every step also trains on copy rows laid out like the reconstruction prompt,
    ``[y] <BOS> [y] <EOS>`` from position 0, where ``y`` is a training AD's tokens in a fresh random order: the
    second ``y`` is unpredictable except by copying the first.

    Args:
        texts: the training sentences.
        tokenizer: the LM's tokenizer.
        model: a Hugging Face causal LM (its parameters must require grad).
        steps: optimizer steps (AdamW, warm-up + cosine to 0.1 x lr).
        batch_size: text blocks per step, drawn by a seeded permutation, epoch after epoch.
        block_size: tokens per block.
        lr: peak learning rate.
        repeat: copy rows per step, as a fraction of ``batch_size`` (0: plain text only).
        seed: data-order and shuffling seed.
        progress: show a tqdm bar.

    Returns:
        The loss of every step (text and copy rows together, weighted by their tokens).
    """
    from tqdm import tqdm

    from distinctad.train.core.engine import warmup_cosine

    bos, eos, pad = special_ids(tokenizer)
    g = torch.Generator().manual_seed(seed)
    encoded = [x for x in tokenizer([t for t in texts if t.strip()], add_special_tokens=False)["input_ids"] if x]
    stream = [t for x in encoded for t in [bos, *x, eos]]
    n_blocks = len(stream) // block_size
    if n_blocks < 1:
        raise ValueError(f"pretrain_lm needs at least {block_size} tokens of text, got {len(stream)}")
    device = next(model.parameters()).device
    blocks = torch.tensor(stream[:n_blocks * block_size]).view(n_blocks, block_size)  # (n_blocks, block_size)
    n_copy = round(repeat * batch_size)
    max_copy = max(1, (block_size - 2) // 2)

    def copy_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n_copy, L) ids ``[y] <BOS> [y] <EOS>`` right-padded, their attention mask and their labels (only the
        second y and <EOS>)."""
        rows, labels = [], []
        for i in torch.randint(len(encoded), (n_copy,), generator=g).tolist():
            x = encoded[i][:max_copy]
            y = [x[j] for j in torch.randperm(len(x), generator=g).tolist()]
            rows.append(torch.tensor([*y, bos, *y, eos]))
            labels.append(torch.tensor([IGNORE] * (len(y) + 1) + [*y, eos]))
        return (pad_sequence(rows, batch_first=True, padding_value=pad),
                pad_sequence([torch.ones_like(r) for r in rows], batch_first=True),
                pad_sequence(labels, batch_first=True, padding_value=IGNORE))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                              lambda s: warmup_cosine(s, max(1, steps // 20), steps, 0.1))
    order: list[int] = []
    losses: list[float] = []
    was_training = model.training
    model.train()
    for _ in tqdm(range(steps), desc="pre-training the LM", disable=not progress):
        if len(order) < batch_size:
            order += torch.randperm(n_blocks, generator=g).tolist()
        ids = blocks[order[:batch_size]].to(device)  # (B, block_size)
        order = order[batch_size:]
        n_text = ids.numel() - len(ids)
        loss = model(input_ids=ids, labels=ids).loss * n_text
        n_tokens = n_text
        if n_copy:
            cids, cattn, clabels = (t.to(device) for t in copy_rows())
            n = int((clabels[:, 1:] != IGNORE).sum())
            loss = loss + model(input_ids=cids, attention_mask=cattn, labels=clabels).loss * n
            n_tokens += n
        loss = loss / n_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.train(was_training)
    return losses


# ----------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class ReconData:
    train: list[AD]
    eval: list[AD]


def evenly_spaced(items: list, k: int) -> list:
    """``k`` items spread evenly over ``items`` (all of them when k is 0 or at least their number)."""
    if not k or k >= len(items):
        return list(items)
    return [items[(i * len(items)) // k] for i in range(k)]


def _read(path: str, d: ReconDataArgs) -> list[AD]:
    if not Path(path).is_file():
        raise ConfigError(f"annotation file not found: {path}")
    try:
        ads = read_annotations(path, columns=d.columns or None, bad_utf8=d.bad_utf8,
                               timestamp_field=d.timestamp_field).ads
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return [a for a in ads if a.sentence.strip()]


def _pick(ads: list[AD], movies: list[str], path: str, what: str) -> list[AD]:
    if not movies:
        return ads
    present = {a.movie for a in ads}
    missing = [m for m in movies if m not in present]
    if missing:
        raise ConfigError(f"data.{what}_movies: movie '{missing[0]}' is not in {path} "
                          f"(it has e.g. {sorted(present)[:3]})")
    wanted = set(movies)
    return [a for a in ads if a.movie in wanted]


def load_data(cfg: ReconJob) -> ReconData:
    """Training and eval ADs as the data section says (the SynthMAD default when no annotation file is given)."""
    d = cfg.data
    if not d.train_annotations:
        from distinctad.data.synth_default import ensure_synthmad

        if D.is_master():
            ensure_synthmad(d.synth_dir, kinds=())
        D.barrier()
        synth = Path(d.synth_dir) / "synth"
        d.train_annotations = str(synth / "annotations.json")
        splits = json.loads((synth / "splits.json").read_text())
        d.train_movies = d.train_movies or list(splits["TRAIN"])
        d.eval_movies = d.eval_movies or list(splits["EVAL"])
    train_path, eval_path = d.train_annotations, d.eval_annotations or d.train_annotations
    train_all = _read(train_path, d)
    eval_all = train_all if eval_path == train_path else _read(eval_path, d)
    eval_ads = _pick(eval_all, d.eval_movies, eval_path, "eval")
    train_ads = _pick(train_all, d.train_movies, train_path, "train")
    if d.exclude_eval_movies:
        eval_movies = {a.movie for a in eval_ads}
        train_ads = [a for a in train_ads if a.movie not in eval_movies]
    elif eval_path == train_path and {a.movie for a in eval_ads} & {a.movie for a in train_ads}:
        logger.warning("the training ADs include eval movies (data.exclude_eval_movies is false)")
    if not train_ads:
        raise ConfigError(f"no training ADs left in {train_path} (after data.train_movies and removing the eval "
                          "movies); list data.eval_movies, or give a separate data.eval_annotations")
    if not eval_ads:
        raise ConfigError(f"no eval ADs in {eval_path}")
    data = ReconData(train=evenly_spaced(train_ads, d.max_train_ads), eval=evenly_spaced(eval_ads, d.max_eval_ads))
    logger.info("reconstruction data: %d training ADs over %d movies, %d eval ADs over %d movies", len(data.train),
                len({a.movie for a in data.train}), len(data.eval), len({a.movie for a in data.eval}))
    return data


# ----------------------------------------------------------------------------------------------------------------
# Building the frozen parts


def resolve_models(cfg: ReconJob, train_texts: Sequence[str]) -> None:
    """Make every frozen part a local path (rank 0 creates what is missing; the others wait).

    - ``model.clip_pretrained`` empty: a random tower (seed ``run.seed``) is saved to <run dir>/clip.
    - ``model.llm`` tiny, or ``model.pretrain_steps`` > 0: the LM (with, for tiny-gpt2, a BPE tokenizer trained on
      the training ADs) is pre-trained on the training ADs and saved to <run dir>/lm.

    Both are reused when already there, so a resumed run freezes exactly the same weights.
    """
    from distinctad.train.models.llm import TINY_LLMS, build_llm, load_tokenizer, save_llm, train_bpe_tokenizer

    m = cfg.model
    run_dir = Path(cfg.run.out_dir)
    clip_dir, lm_dir = run_dir / "clip", run_dir / "lm"
    make_lm = m.llm in TINY_LLMS or m.pretrain_steps > 0
    error = None
    if D.is_master():
        try:
            if not m.clip_pretrained and not (clip_dir / "open_clip_config.json").is_file():
                if m.clip_model != TINY_MODEL:
                    logger.warning("model.clip_pretrained is empty: %s gets random weights (Table A.1 needs the "
                                   "pre-trained tower)", m.clip_model)
                torch.manual_seed(cfg.run.seed)
                save_clip(create_clip(m.clip_model), clip_dir, m.clip_model)
                logger.info("random %s text tower saved to %s", m.clip_model, clip_dir)
            if make_lm and not (lm_dir / "config.json").is_file():
                if m.llm in TINY_LLMS and not m.tokenizer:
                    logger.info("training a %d-token BPE tokenizer on %d training ADs", m.tokenizer_vocab,
                                len(train_texts))
                    tokenizer = train_bpe_tokenizer(train_texts, m.tokenizer_vocab, run_dir / "tokenizer")
                else:
                    tokenizer = load_tokenizer(m.tokenizer or m.llm)
                torch.manual_seed(cfg.run.seed)
                llm = build_llm(m.llm, tokenizer)
                if m.pretrain_steps:
                    losses = pretrain_lm(train_texts, tokenizer, llm.to(D.device()), steps=m.pretrain_steps,
                                         batch_size=m.pretrain_batch_size, block_size=m.pretrain_block_size,
                                         lr=m.pretrain_lr, repeat=m.pretrain_repeat, seed=cfg.run.seed)
                    logger.info("LM pre-trained for %d steps on the training ADs: loss %.3f -> %.3f", len(losses),
                                losses[0], sum(losses[-10:]) / len(losses[-10:]))
                else:
                    logger.warning("model.llm=%s is random and model.pretrain_steps is 0: the frozen LM knows no "
                                   "language", m.llm)
                save_llm(llm.cpu(), tokenizer, lm_dir)
        except (WeightsNotFoundError, FileNotFoundError, ValueError) as e:
            error = str(e).splitlines()[0]
    error = D.broadcast_object(error)
    if error:
        raise ConfigError(f"model: {error}")
    if not m.clip_pretrained:
        m.clip_pretrained = str(clip_dir.resolve())
    if make_lm:
        m.llm = m.tokenizer = str(lm_dir.resolve())


def build_recon_model(m: ReconModelArgs, tokenizer) -> ReconModel:
    """The :class:`ReconModel` of a (resolved) model section: weights from local paths only."""
    from distinctad.train.models.llm import build_llm

    try:
        clip = build_clip_ad(m.clip_model, m.clip_pretrained or None, skip_punctuation=m.skip_punctuation,
                             cache_dir=m.clip_cache_dir or None)
        llm = build_llm(m.llm, tokenizer)
    except (WeightsNotFoundError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model: {str(e).splitlines()[0]}") from None
    return ReconModel(clip, llm, tokenizer, m.projector_input, m.normalize)


def save_projector(model: ReconModel, out_dir: str | Path, model_args: ReconModelArgs | None = None) -> Path:
    """Write the projector (safetensors, fp32) and what rebuilds the rest (``recon.json``) into ``out_dir``.

    Returns:
        The folder, loadable with :func:`load_projector` (the CLIP and LM paths in ``recon.json`` must exist).
    """
    import safetensors.torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.projector.state_dict().items()}
    with atomic_path(out_dir / PROJECTOR_FILE) as tmp:
        safetensors.torch.save_file(state, str(tmp))
    meta = {"projector_input": model.projector_input, "normalize": model.normalize}
    if model_args is not None:
        from dataclasses import asdict

        meta["model"] = asdict(model_args)
    atomic_write_json(out_dir / RECON_CONFIG_FILE, meta)
    return out_dir


def load_projector(path: str | Path, model: ReconModel | None = None) -> tuple[ReconModel, Any]:
    """Load a projector saved by :func:`save_projector`.

    Args:
        path: the folder.
        model: a model to load the weights into; None builds it from ``recon.json`` (CLIP + LM from their paths).

    Returns:
        ``(model, tokenizer)``; tokenizer is None when ``model`` was given.
    """
    import safetensors.torch

    from distinctad.train.core.config import from_dict
    from distinctad.train.models.llm import load_tokenizer

    path = Path(path)
    if not (path / PROJECTOR_FILE).is_file():
        raise FileNotFoundError(f"no {PROJECTOR_FILE} in {path}")
    meta = json.loads((path / RECON_CONFIG_FILE).read_text())
    tokenizer = None
    if model is None:
        if "model" not in meta:
            raise ValueError(f"{path / RECON_CONFIG_FILE} has no model section: pass the model to load into")
        m = from_dict(ReconModelArgs, meta["model"])
        tokenizer = load_tokenizer(m.tokenizer or m.llm)
        model = build_recon_model(m, tokenizer)
    elif model.projector_input != meta["projector_input"]:
        raise ValueError(f"projector of {path} was trained on '{meta['projector_input']}', the model uses "
                         f"'{model.projector_input}'")
    state = safetensors.torch.load_file(str(path / PROJECTOR_FILE))
    ref = model.projector.weight
    model.projector.load_state_dict({k: v.to(ref.device, ref.dtype) for k, v in state.items()})
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict(model: ReconModel, tokenizer, ads: Sequence[AD], gen: ReconEvalArgs,
            progress: bool = True) -> list[dict[str, Any]]:
    """Reconstruct every AD of ``ads``; collective: each rank takes a contiguous share, all get the union."""
    from tqdm import tqdm

    share = math.ceil(len(ads) / D.get_world_size())
    mine = list(ads[D.get_rank() * share:(D.get_rank() + 1) * share])
    out: list[dict[str, Any]] = []
    kwargs = dict(num_beams=gen.num_beams, max_new_tokens=gen.max_new_tokens,
                  repetition_penalty=gen.repetition_penalty, no_repeat_ngram_size=gen.no_repeat_ngram_size)
    steps = range(0, len(mine), gen.batch_size)
    for i in tqdm(steps, desc="reconstructing", disable=not (progress and D.is_master())):
        chunk = mine[i:i + gen.batch_size]
        texts = model.reconstruct([a.sentence for a in chunk], tokenizer, **kwargs)
        out += [{"movie": a.movie, "ad_index": a.ad_index, "text": t} for a, t in zip(chunk, texts, strict=True)]
    return [p for part in D.all_gather_object(out) for p in part]


@torch.no_grad()
def eval_loss(model: ReconModel, tokenizer, ads: Sequence[AD], batch_size: int, max_ad_tokens: int = 64) -> float:
    """Teacher-forced reconstruction loss (mean NLL per AD token, <EOS> included) over ``ads``; collective.

    A decoding-free measure of how much of the AD the CLIP embedding lets the frozen LM recover.
    """
    share = math.ceil(len(ads) / D.get_world_size())
    mine = list(ads[D.get_rank() * share:(D.get_rank() + 1) * share])
    device = model.projector.weight.device
    total = torch.zeros(2, dtype=torch.float64, device=D.device())  # (sum of NLL, tokens)
    for i in range(0, len(mine), batch_size):
        batch = collate([a.sentence.strip() for a in mine[i:i + batch_size]], model, tokenizer, max_ad_tokens)
        out = model(**{k: v.to(device) for k, v in batch.items()})
        total += torch.stack([out["loss"].double() * out["num_tokens"], out["num_tokens"].double()]).to(total)
    if D.get_world_size() > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def _fmt(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def table_a1_markdown(rows: Sequence[dict[str, Any]], title: str = "Table A.1: AD reconstruction from frozen "
                      "CLIP text embeddings", notes: Sequence[str] = ()) -> str:
    """Table A.1 in Markdown: the paper's two rows, then ``rows``.

    Args:
        rows: dicts with ``projector_input`` ("cls" | "words"), ``metrics`` (harness keys, ×100) and optionally
            ``source`` (a short description of the run).
        notes: lines added under the table.
    """
    cols = TABLE_COLUMNS
    lines = [f"# {title}", "", "| Projector input | Source | " + " | ".join(cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for key in ("cls", "words"):
        paper = PAPER_TABLE_A1[key]
        lines.append(f"| {ROW_NAMES[key]} | paper (ViT-B/32 + GPT-2, MAD-v2-Named → MAD-Eval) | "
                     + " | ".join(_fmt(paper.get(c)) for c in cols) + " |")
    for row in rows:
        metrics = row["metrics"]
        lines.append(f"| {ROW_NAMES[row['projector_input']]} | {row.get('source', 'this run')} | "
                     + " | ".join(_fmt(metrics.get(c)) for c in cols) + " |")
    lines += ["", "Scores ×100 (BLEU-2/3 are not reported in the paper; – = not reported / not computed)."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def describe_models(m: ReconModelArgs) -> str:
    """A short name of the frozen parts for the table, e.g. "ViT-B-32 + gpt2" (call before resolve_models)."""
    clip = "tiny random CLIP" if m.clip_model == TINY_MODEL and not m.clip_pretrained else m.clip_model
    llm = "tiny GPT-2" if m.llm == "tiny-gpt2" else Path(m.llm).name or m.llm
    if m.pretrain_steps:
        llm += f" pre-trained {m.pretrain_steps} steps on the training ADs"
        llm += f" (+{m.pretrain_repeat:.0%} copy rows)" if m.pretrain_repeat else ""
    return f"{clip} + {llm}"


def score(preds: list[dict[str, Any]], refs: Sequence[AD], cfg: ReconJob, out_prefix: Path,
          tracker: Tracker | None, n_train: int, n_trainable: int, models: str = "",
          loss: float | None = None) -> dict[str, float]:
    """Score reconstructions with the eval harness; write predictions, harness report, Table A.1 and samples."""
    from distinctad.eval import evaluate, write_report

    result = evaluate(preds, refs, metrics=tuple(cfg.eval.metrics), recall_k=None, progress=False)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    preds = sorted(preds, key=lambda p: (p["movie"], p["ad_index"]))
    paths = [f"{out_prefix}_predictions.jsonl"]
    atomic_write_text(paths[0], "".join(json.dumps(p) + "\n" for p in preds))
    paths += list(write_report(result, f"{out_prefix}_report"))
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
    row = {"projector_input": cfg.model.projector_input, "source": f"this run ({models or describe_models(cfg.model)}; "
           f"{n_train} train → {len(refs)} eval ADs)",
           "metrics": metrics, "num_eval_ads": len(refs), "trainable_params": n_trainable,
           "clip": f"{cfg.model.clip_model} ({cfg.model.clip_pretrained})", "llm": cfg.model.llm}
    if loss is not None:
        row["eval_loss"] = loss
    notes = [f"Only the linear projector trains: {n_trainable:,} parameters; CLIP text tower and LM frozen."]
    if loss is not None:
        notes.append(f"Teacher-forced reconstruction loss on the eval ADs: {loss:.4f} nats per AD token.")
    notes += list(result["meta"].get("notices", []))
    atomic_write_json(f"{out_prefix}_table_a1.json", row)
    atomic_write_text(f"{out_prefix}_table_a1.md", table_a1_markdown([row], notes=notes))
    gt = {(a.movie, a.ad_index): a.sentence for a in refs}
    lines = ["| movie | AD | ground truth | reconstruction |", "|---|---|---|---|"]
    for p in evenly_spaced(preds, cfg.eval.samples_to_log):
        lines.append(f"| {p['movie']} | {p['ad_index']} | {gt[(p['movie'], p['ad_index'])]} | {p['text']} |")
    atomic_write_text(f"{out_prefix}_samples.md", "\n".join(lines) + "\n")
    paths += [f"{out_prefix}_table_a1.json", f"{out_prefix}_table_a1.md", f"{out_prefix}_samples.md"]
    if tracker is not None:
        for path in paths:
            tracker.log_artifact(path, "eval")
    logger.info("Table A.1 row written to %s_table_a1.md", out_prefix)
    return {f"eval/{k}": v for k, v in metrics.items()}


# ----------------------------------------------------------------------------------------------------------------
# The job


class ReconTask:
    """The reconstruction experiment as a :class:`distinctad.train.core.loop.Task`."""

    def __init__(self, cfg: ReconJob, tokenizer, data: ReconData, models: str = ""):
        self.cfg = cfg
        self.models = models
        self.tokenizer = tokenizer
        self.data = data
        self.train_texts = [a.sentence.strip() for a in data.train]
        self.model: ReconModel | None = None
        self.n_trainable = 0

    def batches_per_epoch(self) -> int:
        """Micro-batches per rank per epoch (the same on every rank; the remainder is dropped)."""
        return len(self.train_texts) // D.get_world_size() // self.cfg.train.micro_batch_size

    def build_model(self) -> nn.Module:
        self.model = build_recon_model(self.cfg.model, self.tokenizer)
        self.n_trainable = check_only_projector_trainable(self.model)
        n_all = sum(p.numel() for p in self.model.parameters())
        logger.info("reconstruction model (%s): %d trainable parameters (the projector) of %d; CLIP text tower and "
                    "LM frozen", self.cfg.model.projector_input, self.n_trainable, n_all)
        return self.model

    def batches(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        mb, world, rank = self.cfg.train.micro_batch_size, D.get_world_size(), D.get_rank()
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1000 + epoch)
        mine = torch.randperm(len(self.train_texts), generator=g)[rank::world].tolist()
        for i in range(skip, self.batches_per_epoch()):
            texts = [self.train_texts[j] for j in mine[i * mb:(i + 1) * mb]]
            yield collate(texts, self.model, self.tokenizer, self.cfg.model.max_ad_tokens)

    def samples_in(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["text_ids"].shape[0])

    def loss(self, engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = engine(**{k: v.to(engine.device) for k, v in batch.items()})
        return out["loss"], {"prefix_len": float(out["prefix_len"])}

    def params(self) -> dict[str, int]:
        """Logged with the config at start-up: the projector is all that trains."""
        return {"trainable_params": self.n_trainable}

    def evaluate(self, engine, tracker: Tracker, step: int) -> dict[str, float]:
        model: ReconModel = engine.module
        loss = eval_loss(model, self.tokenizer, self.data.eval, self.cfg.eval.batch_size, self.cfg.model.max_ad_tokens)
        preds = predict(model, self.tokenizer, self.data.eval, self.cfg.eval)
        if not D.is_master():
            return {}
        run_dir = Path(self.cfg.run.out_dir)
        save_projector(model, run_dir / "projector", self.cfg.model)
        metrics = score(preds, self.data.eval, self.cfg, run_dir / "eval" / f"step_{step:08d}", tracker,
                        len(self.train_texts), self.n_trainable, self.models, loss)
        return {**metrics, "eval/loss": loss}


def run(cfg: ReconJob) -> dict[str, Any]:
    """Resolve data and frozen models, set the step budget from ``epochs``, train and evaluate (collective)."""
    from distinctad.train.core.engine import build_ds_config
    from distinctad.train.core.loop import fit
    from distinctad.train.models.llm import load_tokenizer

    if build_ds_config(cfg.deepspeed, cfg.train)["zero_optimization"]["stage"] == 3:
        raise ConfigError("recon does not support ZeRO-3 (only the small projector trains; use zero_stage 0-2)")
    data = load_data(cfg)
    models = describe_models(cfg.model)
    resolve_models(cfg, [a.sentence.strip() for a in data.train])
    try:
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.llm)
    except FileNotFoundError as e:
        raise ConfigError(f"model: {e}") from None
    task = ReconTask(cfg, tokenizer, data, models)
    if task.batches_per_epoch() < 1:
        raise ConfigError(f"{len(data.train)} training ADs are too few for micro batch {cfg.train.micro_batch_size}"
                          f" x world {D.get_world_size()}")
    if cfg.epochs:
        steps_per_epoch = task.batches_per_epoch() // cfg.train.grad_accum
        if steps_per_epoch < 1:
            raise ConfigError("an epoch holds fewer micro-batches than train.grad_accum")
        cfg.train.max_steps = cfg.epochs * steps_per_epoch
        logger.info("%d epochs x %d steps = %d optimizer steps", cfg.epochs, steps_per_epoch, cfg.train.max_steps)
    return fit(task, cfg, job="recon")


# ----------------------------------------------------------------------------------------------------------------
# Table of several runs


def collect_rows(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The latest Table A.1 row (``eval/step_*_table_a1.json``) of each run directory."""
    rows = []
    for run_dir in run_dirs:
        found = sorted(Path(run_dir).glob("eval/step_*_table_a1.json"))
        if not found:
            raise FileNotFoundError(f"no eval/step_*_table_a1.json in {run_dir} (has the recon run evaluated?)")
        rows.append(json.loads(found[-1].read_text()))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distinctad.train.recon.task",
                                description="Put the Table A.1 rows of finished recon runs into one Markdown table "
                                            "beside the paper's numbers (train with launch/recon.sh).")
    p.add_argument("--runs", nargs="+", required=True, help="Run directories of recon jobs (e.g. a cls and a "
                   "words run).")
    p.add_argument("--out", default="", help="Write the table to this Markdown file (it is printed either way).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        rows = collect_rows(args.runs)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {e}") from None
    text = table_a1_markdown(rows)
    if args.out:
        atomic_write_text(args.out, text)
    print(text, end="")


if __name__ == "__main__":
    main()
