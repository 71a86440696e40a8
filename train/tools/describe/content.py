"""What each AD says: T frames per slot through the CLIP(-AD) vision tower, then Stage-II generation in windows of N
slots with the model's own previous ADs as text context.

The frames are read with the shard builder's :class:`~distinctad.data.video.VideoClipReader` (T frames uniformly
inside the slot, short side 224) and encoded exactly as ``distinctad-extract`` does (its ``load_vision``: open_clip
eval transform, ``encode_image(normalize=True)``, L2-normalised, stored float16), so the captioner sees features of
the kind it was trained on. The captioner loads through DeepSpeed as in ``distinctad-generate``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from distinctad.train.tools.describe.slots import Slot

logger = logging.getLogger(__name__)

SHORT_SIDE = 224
"""Frames are resized to this short side before the CLIP transform (the frames shards' default)."""
TOKENS_PER_WORD = 1.5
"""Generous BPE tokens per English word (GPT-2's BPE averages about 1.3 on prose; our default), for the token cap."""
TOKEN_SLACK = 4
"""Tokens added to each window's cap for the final punctuation and <eos> (our default)."""
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16, read from ``/proc/cpuinfo``; False
    elsewhere). On such CPUs bf16 inference of ViT-B/32 and GPT-2 runs ~2.5x faster than fp32 (measured by
    ``benchmarks/describe_speed.py --precision``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The inference dtype of ``--precision``: ``auto`` is bfloat16 where it is fast (a CUDA device that supports
    it, a CPU with AMX/AVX512-BF16) and float32 elsewhere.

    Raises:
        DescribeError: an unknown name, or ``bf16`` on a CUDA device without it.
    """
    if precision not in PRECISIONS:
        raise DescribeError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    cuda = torch.device(device).type == "cuda"
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise DescribeError("--precision bf16: this CUDA device has no bfloat16")
        return torch.bfloat16
    fast = torch.cuda.is_bf16_supported() if cuda else cpu_has_fast_bf16()
    return torch.bfloat16 if fast else torch.float32


def token_cap(seconds: float, wpm: float, longest: int) -> int:
    """The most new tokens worth generating for an AD spoken within ``seconds`` at ``wpm`` words per minute:
    ``ceil(seconds · wpm / 60 · TOKENS_PER_WORD) + TOKEN_SLACK``, at most ``longest`` (``--max-new-tokens``).
    Text past it could not be spoken in the slot anyway; generating it was most of the describe time."""
    return max(1, min(longest, math.ceil(seconds * wpm / 60.0 * TOKENS_PER_WORD) + TOKEN_SLACK))


class DescribeError(ValueError):
    """A problem with the inputs or options of ``distinctad-describe`` (one line)."""


def load_captioner(ckpt: str):
    """(model in eval mode, tokenizer, Stage-II job config, weights sha256) of a Stage-II run or checkpoint.

    The same loading path as ``distinctad-generate``: the checkpoint's ``config.yaml`` rebuilds the model and
    DeepSpeed loads the weights (any ZeRO stage).

    Raises:
        DescribeError: no checkpoint, or an unreadable config.
    """
    from distinctad.common import init_logger
    from distinctad.train.core import checkpoint
    from distinctad.train.core import distributed as D
    from distinctad.train.core.config import ConfigError
    from distinctad.train.tools.generate import load_stage2_checkpoint

    D.init_distributed()
    init_logger()
    try:
        engine, tokenizer, cfg, _, _ = load_stage2_checkpoint(ckpt)
    except (checkpoint.CheckpointError, ConfigError) as e:
        raise DescribeError(f"--stage2: {e}") from None
    model = engine.module.eval()
    digest = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return model, tokenizer, cfg, digest.hexdigest()


def load_vision_tower(clip_ad: str, model_name: str, seed: int, device: str = "cpu"):
    """The CLIP vision tower by ``distinctad-extract``'s own ``load_vision`` (a Stage-I run directory means its
    ``clip_ad/`` export; empty: random weights, for tests and benchmarks)."""
    from distinctad.train.tools.extract import load_vision

    return load_vision(model_name, clip_ad, seed=seed, device=device)


@torch.no_grad()
def encode_slots(
    movie: str | os.PathLike,
    slots: list[Slot],
    clip,
    eval_tf: Callable,
    *,
    num_frames: int = 8,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Frame features of every slot, float16 (S, T, D): T frames uniformly inside the slot, L2-normalised CLIP
    image embeddings (as ``distinctad-extract`` stores them). Frames are decoded slot by slot (memory: one batch).
    The tower runs in the dtype of its weights (``clip.to(torch.bfloat16)`` for bf16)."""
    from distinctad.data.video import VideoClipReader

    param = next(clip.parameters())
    device, dtype = param.device, param.dtype
    out = np.zeros((len(slots), num_frames, int(clip.visual.output_dim)), np.float16)
    bar = tqdm(total=len(slots), unit="slot", desc="frames + CLIP", disable=not progress, leave=False)
    with VideoClipReader(movie, short_side=SHORT_SIDE) as reader:
        for lo in range(0, len(slots), batch_size):
            group = slots[lo : lo + batch_size]
            images = torch.stack(
                [torch.stack([eval_tf(im) for im in reader.clip(s.start, s.end, num_frames)]) for s in group]
            )  # (b, T, 3, H, W)
            b, T = images.shape[:2]
            emb = clip.encode_image(images.flatten(0, 1).to(device, dtype), normalize=True)  # (b*T, D)
            emb = torch.nn.functional.normalize(emb.float(), dim=-1).view(b, T, -1)
            out[lo : lo + b] = emb.cpu().numpy().astype(np.float16)
            bar.update(b)
    bar.close()
    return out


def window_batch(movie_id: str, feats: np.ndarray, first: int, context: list[str]) -> dict:
    """One window of slot features as the collated window batch the captioner reads (B = 1, N = len(feats)).

    Sentences are blank (there is no ground truth) and ``context`` is the text context given to it.
    """
    N, T, _ = feats.shape
    return dict(
        feats=torch.from_numpy(feats.astype(np.float32))[None],  # (1, N, T, D)
        frame_mask=torch.ones(1, N, T, dtype=torch.bool),
        clip_mask=torch.ones(1, N, dtype=torch.bool),
        sentences=[[""] * N],
        context=[list(context)],
        movie=[movie_id],
        ad_index=torch.arange(first, first + N)[None],
        key=[f"{movie_id}__{first:06d}"],
    )


def generate_window(model, tokenizer, batch: dict, gen, slots: list[Slot], measure, wpm: float, min_words: int):
    """Candidates (every beam) and the fitted AD of each slot of one window.

    Generation stops at :func:`token_cap` of the window's longest slot: beyond it no AD could be spoken in time.

    Returns:
        ``(candidates, fitted)``: per slot, its beams' texts best first, and its :class:`~.fit.Fitted` AD.
    """
    from distinctad.train.stage2.context import generate_candidates
    from distinctad.train.tools.describe.fit import fit

    cap = token_cap(max(s.duration for s in slots), wpm, gen.max_new_tokens)
    cands = generate_candidates(model, tokenizer, batch, gen, num_return=max(1, gen.num_beams), max_new_tokens=cap)[0]
    return cands, [fit(c, s.duration, measure, min_words) for c, s in zip(cands, slots)]
