"""Cross-attention from each clip's tokens to the window's context bases (supp. eqs 13-16).

Stage-II step 3. With H_i (L×d) the tokens of clip i and M (K×d) the Contextual EMA bases of its window:

    Q = H_i W_Qᵀ + b_Q                    (13)
    K = M W_Kᵀ + b_K                      (14)
    V = M W_Vᵀ + b_V                      (15)
    H̃_i = softmax(Q Kᵀ / √d_k) V          (16)   softmax over the K bases

H̃_i is the part of clip i that the shared context explains; ``distinctive_prompt`` subtracts it.
Single head, exactly as the equations; V keeps the width d so that H_i − H̃_i is defined.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ContextCrossAttention(nn.Module):
    """H (B, N, L, d) queries, M (B, K, d) keys/values -> H̃ (B, N, L, d).

    Args:
        dim: d, width of the clip tokens and of the bases.
        d_k: width of queries and keys (default d).
    """

    def __init__(self, dim: int, d_k: int | None = None):
        super().__init__()
        self.d_k = d_k or dim
        self.q = nn.Linear(dim, self.d_k)  # W_Q, b_Q
        self.k = nn.Linear(dim, self.d_k)  # W_K, b_K
        self.v = nn.Linear(dim, dim)  # W_V, b_V

    def forward(self, h: torch.Tensor, bases: torch.Tensor, return_attn: bool = False):
        """Args: h (B, N, L, d), bases (B, K, d).

        Returns:
            H̃ (B, N, L, d); with ``return_attn`` also the weights (B, N, L, K).
        """
        q = self.q(h)  # (B, N, L, d_k)
        k = self.k(bases)  # (B, K, d_k)
        v = self.v(bases)  # (B, K, d)
        scores = torch.einsum("bnlc,bkc->bnlk", q, k) / math.sqrt(self.d_k)  # (B, N, L, K)
        attn = scores.softmax(dim=-1)
        out = torch.einsum("bnlk,bkd->bnld", attn, v)  # (B, N, L, d)
        return (out, attn) if return_attn else out
