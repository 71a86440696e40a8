"""Perceiver resampler: a variable number of frame features -> a fixed number of latent tokens.

Stage-II step 1 (paper §3.2, as in Flamingo / AutoAD): each clip's T frame features X_i (T×D) are
summarised by L learned latent queries into H_i (L×d), so the LLM always receives the same number of
visual tokens whatever the clip length. Latents attend to the concatenation of frames and latents
(Flamingo), which keeps the attention well defined for a clip whose frames are all padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerceiverAttention(nn.Module):
    """Latents (queries) attend to [frames; latents] (keys/values), multi-head."""

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x (B, T, d) frames, latents (B, L, d), mask (B, T) True = real frame. Returns (B, L, d)."""
        B, T, d = x.shape
        L = latents.shape[1]
        h = self.num_heads
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        kv_in = torch.cat([x, latents], dim=1)  # (B, T+L, d)
        q = self.to_q(latents).view(B, L, h, d // h).transpose(1, 2)  # (B, h, L, dh)
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        k = k.view(B, T + L, h, d // h).transpose(1, 2)  # (B, h, T+L, dh)
        v = v.view(B, T + L, h, d // h).transpose(1, 2)  # (B, h, T+L, dh)
        attn_mask = None
        if mask is not None:
            keep = torch.cat([mask.bool(), mask.new_ones(B, L, dtype=torch.bool)], dim=1)  # (B, T+L)
            attn_mask = keep[:, None, None, :]  # (B, 1, 1, T+L), True = attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, L, dh)
        return self.to_out(out.transpose(1, 2).reshape(B, L, d))


class FeedForward(nn.Sequential):
    """Pre-norm GELU MLP."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__(
            nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
        )


class PerceiverResampler(nn.Module):
    """Frame features X (B, T, D) + frame mask (B, T) -> latent tokens H (B, L, d).

    Args:
        feature_dim: D, the width of the (CLIP) frame features.
        d_model: d, the width of the latents.
        num_latents: L, visual tokens per clip (our default: 10).
        num_layers: attention + MLP blocks (our default: 2).
        num_heads: attention heads.
        max_frames: size of the learned temporal position table (T must not exceed it).
        ff_mult: MLP expansion.
        dropout: attention dropout.
    """

    def __init__(
        self,
        feature_dim: int,
        d_model: int,
        num_latents: int = 10,
        num_layers: int = 2,
        num_heads: int = 8,
        max_frames: int = 64,
        ff_mult: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.input_proj = nn.Linear(feature_dim, d_model)
        self.latents = nn.Parameter(torch.randn(num_latents, d_model) * 0.02)
        # Frames are an ordered sequence: without a time embedding the resampler would be permutation invariant.
        self.time_pos = nn.Parameter(torch.zeros(max_frames, d_model))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(d_model, num_heads, dropout), FeedForward(d_model, ff_mult)])
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x (B, T, D), mask (B, T) bool, True = real frame. Returns H (B, L, d)."""
        B, T, _ = x.shape
        if T > self.time_pos.shape[0]:
            raise ValueError(f"{T} frames per clip exceed max_frames={self.time_pos.shape[0]}")
        x = self.input_proj(x) + self.time_pos[:T]  # (B, T, d)
        latents = self.latents.expand(B, -1, -1)  # (B, L, d)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents, mask)
            latents = latents + ff(latents)
        return self.norm(latents)  # (B, L, d)
