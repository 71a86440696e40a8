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
import os
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from distinctad.train.tools.describe.slots import Slot

logger = logging.getLogger(__name__)

SHORT_SIDE = 224
"""Frames are resized to this short side before the CLIP transform (the frames shards' default)."""


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
    image embeddings (as ``distinctad-extract`` stores them). Frames are decoded slot by slot (memory: one batch)."""
    from distinctad.data.video import VideoClipReader

    device = next(clip.parameters()).device
    out = np.zeros((len(slots), num_frames, int(clip.visual.output_dim)), np.float16)
    bar = tqdm(total=len(slots), unit="slot", desc="frames + CLIP", disable=not progress, leave=False)
    with VideoClipReader(movie, short_side=SHORT_SIDE) as reader:
        for lo in range(0, len(slots), batch_size):
            group = slots[lo : lo + batch_size]
            images = torch.stack(
                [torch.stack([eval_tf(im) for im in reader.clip(s.start, s.end, num_frames)]) for s in group]
            )  # (b, T, 3, H, W)
            b, T = images.shape[:2]
            emb = clip.encode_image(images.flatten(0, 1).to(device), normalize=True)  # (b*T, D)
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
