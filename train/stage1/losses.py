"""Stage-I losses (DESIGN §4): global video–AD InfoNCE + fine-grained frame–word MIL-NCE.

Distributed contract (the same as open_clip's ``ClipLoss(gather_with_grad=True)``): every rank gets its local
shard of the batch, features are all-gathered so negatives come from the global batch, and the gradient that
reaches a rank's local embeddings is ``world_size`` times the gradient of the single-process full-batch loss;
the data-parallel gradient average (DDP / DeepSpeed) divides it back, so parameter gradients equal the
full-batch ones. Local batch sizes must be equal on all ranks (as for ``ClipLoss``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from distinctad.train.models.clip_ad import pool_video
from distinctad.train.stage1.config import Stage1LossConfig


def word_scores(
    frame_emb: torch.Tensor, word_emb: torch.Tensor, mode: str = "max", frame_temperature: float = 0.1
) -> torch.Tensor:
    """score(clip b, word w of AD c) pooled over the clip's frames.

    Args:
        frame_emb: (B, T, E) normalised frame embeddings.
        word_emb: (C, W, E) normalised word embeddings.

    Returns:
        (B, C, W) scores on the cosine scale.
    """
    sim = torch.einsum("bte,cwe->btcw", frame_emb, word_emb)  # (B, T, C, W)
    if mode == "max":
        return sim.amax(dim=1)
    T = frame_emb.shape[1]
    return frame_temperature * (torch.logsumexp(sim / frame_temperature, dim=1) - math.log(T))


def mil_nce(
    frame_emb: torch.Tensor,
    word_emb: torch.Tensor,
    word_mask: torch.Tensor,
    offset: int = 0,
    mode: str = "max",
    temperature: float = 0.07,
    frame_temperature: float = 0.1,
) -> torch.Tensor:
    """Frame–word MIL-NCE of local clips against the words of all ADs.

    For clip i with own words P_i: loss_i = logsumexp_{all words w}(s_iw / tau) - logsumexp_{w in P_i}(s_iw / tau)
    (Miech et al. 2020, video -> words direction). Clips whose AD has no word contribute 0.

    Args:
        frame_emb: (B, T, E) local clips' normalised frame embeddings.
        word_emb: (C, W, E) normalised word embeddings of all ADs (C >= B; the gathered batch).
        word_mask: (C, W) True for real words.
        offset: row of ``word_emb`` holding clip 0's own AD (rank * B when gathered).

    Returns:
        Scalar: sum of loss_i over the local clips divided by B.
    """
    B = frame_emb.shape[0]
    logits = word_scores(frame_emb, word_emb, mode, frame_temperature) / temperature  # (B, C, W)
    logits = logits.float().masked_fill(~word_mask[None], float("-inf"))
    denominator = torch.logsumexp(logits.flatten(1), dim=1)  # (B,)
    own = torch.arange(B, device=frame_emb.device) + offset
    numerator = torch.logsumexp(logits[torch.arange(B, device=frame_emb.device), own], dim=1)  # (B,)
    has_words = word_mask[own].any(dim=1)
    per_clip = torch.where(has_words, denominator - numerator, torch.zeros_like(denominator))
    return per_clip.sum() / B


def _gather_words(word_emb: torch.Tensor, word_mask: torch.Tensor, world_size: int):
    """All-gather (B, W, E) word embeddings and masks whose W differs across ranks (padded to the max W)."""
    width = torch.tensor([word_emb.shape[1]], device=word_emb.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    pad = int(width) - word_emb.shape[1]
    word_emb = F.pad(word_emb, (0, 0, 0, pad))
    word_mask = F.pad(word_mask, (0, pad), value=False)
    # Word embeddings come from the frozen text tower (no grad), but keep gradients flowing if anyone unfreezes it.
    if word_emb.requires_grad:
        all_emb = torch.cat(torch.distributed.nn.all_gather(word_emb), dim=0)
    else:
        chunks = [torch.empty_like(word_emb) for _ in range(world_size)]
        dist.all_gather(chunks, word_emb.contiguous())
        all_emb = torch.cat(chunks, dim=0)
    masks = [torch.empty_like(word_mask, dtype=torch.uint8) for _ in range(world_size)]
    dist.all_gather(masks, word_mask.to(torch.uint8).contiguous())
    return all_emb, torch.cat(masks, dim=0).bool()


class Stage1Loss(nn.Module):
    """total = InfoNCE(video, AD) + lambda_mil * MIL-NCE(frames, words), negatives from all ranks.

    Args:
        cfg: loss settings.
        rank, world_size: this process's data-parallel rank and the number of ranks (1 = no gathering).
    """

    def __init__(self, cfg: Stage1LossConfig | None = None, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg = cfg or Stage1LossConfig()
        self.rank = rank
        self.world_size = world_size
        self.clip_loss = ClipLoss(
            local_loss=self.cfg.local_loss,
            gather_with_grad=self.cfg.gather_with_grad,
            cache_labels=True,
            rank=rank,
            world_size=world_size,
        )

    def forward(
        self,
        frame_emb: torch.Tensor,
        text_emb: torch.Tensor,
        word_emb: torch.Tensor,
        word_mask: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Compute the Stage-I loss of a local batch.

        Args:
            frame_emb: (B, T, E) normalised frame embeddings.
            text_emb: (B, E) normalised AD ([CLS]/EOT) embeddings.
            word_emb: (B, W, E) normalised AD word embeddings; word_mask: (B, W).
            logit_scale: exp'd learnable scale of the global InfoNCE.

        Returns:
            dict(loss, global_loss, mil_loss), scalars; ``loss`` is what to backpropagate.
        """
        # Loss math in fp32 whatever the model runs in (bf16 logits over a large gathered batch lose the ranking).
        frame_emb, text_emb, word_emb, logit_scale = (x.float() for x in (frame_emb, text_emb, word_emb, logit_scale))
        video_emb = pool_video(frame_emb)  # (B, E)
        global_loss = self.clip_loss(video_emb, text_emb, logit_scale)
        if self.cfg.lambda_mil == 0:
            mil = global_loss.new_zeros(())
        else:
            offset = 0
            if self.world_size > 1:
                word_emb, word_mask = _gather_words(word_emb, word_mask, self.world_size)
                offset = self.rank * frame_emb.shape[0]
            mil = mil_nce(
                frame_emb,
                word_emb,
                word_mask,
                offset,
                self.cfg.mil_mode,
                self.cfg.mil_temperature,
                self.cfg.frame_temperature,
            )
            if self.world_size > 1 and not self.cfg.local_loss:
                # With local_loss=False ClipLoss gives every rank the full-batch loss; match that scale (the mean
                # over ranks) so both terms keep the "world_size x full-batch gradient" contract.
                mil = torch.distributed.nn.all_reduce(mil) / self.world_size
        return dict(loss=global_loss + self.cfg.lambda_mil * mil, global_loss=global_loss, mil_loss=mil)


def make_step(
    model: nn.Module, loss_fn: Stage1Loss, optimizer: torch.optim.Optimizer, autocast_dtype: torch.dtype | None = None
) -> Callable[[torch.Tensor, Sequence[str]], dict]:
    """A plain-PyTorch Stage-I training step: forward, loss, backward, optimizer step.

    Args:
        model: the CLIP-AD being trained.
        loss_fn: Stage-I loss.
        optimizer: over ``model``'s trainable parameters.
        autocast_dtype: e.g. ``torch.bfloat16`` for mixed precision, None for full precision.

    Returns:
        ``step(images (B, T, 3, H, W), texts) -> {"loss", "global_loss", "mil_loss"}`` (detached tensors).
    """

    def step(images: torch.Tensor, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        device_type = images.device.type
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = loss_fn(**model(images, texts))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        return {k: v.detach() for k, v in out.items()}

    return step
