"""Contextual Expectation-Maximisation Attention (Contextual EMA) over a window of clips.

Stage-II step 2 (paper §3.2, supp. C). Neighbouring clips of a movie share most of their content (same
scene, same characters). EM over the latent tokens of all N clips of a window finds K compact bases M
(K×d) that explain this shared context; the cross-attention of step 3 then tells each clip which part of
it the context already explains, and the remainder is what is distinctive.

Follows EMANet (Li et al., ICCV 2019): the bases start from a running mean μ kept as a buffer (updated by
momentum in training mode only, never by gradient), the EM loop runs under ``no_grad`` by default, and
every base is l2-normalised after each M-step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EMAOutput:
    """What one Contextual EMA pass returns.

    Attributes:
        bases: M (B, K, d), unit-norm bases of each window.
        assign: Z (B, N·L, K), soft assignments of the last E-step; rows of padded clips are 0.
        usage_entropy: entropy of the mean base usage over the valid tokens, averaged over windows,
            divided by log K (1 = all bases used equally, 0 = one base explains everything). Detached scalar.
        assign_entropy: mean per-token entropy of Z divided by log K (0 = hard assignments). Detached scalar.
    """

    bases: torch.Tensor
    assign: torch.Tensor
    usage_entropy: torch.Tensor
    assign_entropy: torch.Tensor


class ContextualEMA(nn.Module):
    """EM over the N·L latent tokens of a window -> K bases.

    Args:
        dim: d, width of the tokens.
        num_bases: K, bases per window (our default: 64).
        iters: EM iterations (3).
        tau: softmax temperature of the E-step, Z = softmax(H Mᵀ / τ).
        momentum: μ ← momentum·μ + (1 − momentum)·mean over the batch of M (0.9).
        grad: let gradients flow through the EM iterations (EMANet: no, the default).
    """

    def __init__(
        self, dim: int, num_bases: int = 64, iters: int = 3, tau: float = 1.0, momentum: float = 0.9, grad: bool = False
    ):
        super().__init__()
        if iters < 1:
            raise ValueError(f"ema iters must be >= 1, got {iters}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.num_bases = num_bases
        self.iters = iters
        self.tau = tau
        self.momentum = momentum
        self.grad = grad
        # EMANet's initialisation: Gaussian with std sqrt(2/K), then unit norm.
        mu = torch.randn(num_bases, dim) * math.sqrt(2.0 / num_bases)
        self.register_buffer("mu", F.normalize(mu, dim=-1))  # (K, d)

    def em(self, h: torch.Tensor, valid: torch.Tensor, bases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``self.iters`` EM iterations.

        Args:
            h: (B, S, d) tokens, S = N·L.
            valid: (B, S) float, 1 = real token, 0 = padding.
            bases: (B, K, d) start bases.

        Returns:
            (bases (B, K, d) unit norm, Z (B, S, K)) of the last iteration.
        """
        for _ in range(self.iters):
            z = torch.softmax(torch.bmm(h, bases.transpose(1, 2)) / self.tau, dim=-1)  # (B, S, K) E-step
            z = z * valid.unsqueeze(-1)  # padded tokens take no part in the M-step
            mass = z.sum(dim=1).unsqueeze(-1)  # (B, K, 1)
            new = F.normalize(torch.bmm(z.transpose(1, 2), h) / (mass + 1e-6), dim=-1)  # (B, K, d) M-step
            # A base with no mass (a window of padding only) keeps its previous value instead of collapsing to 0.
            bases = torch.where(mass > 0, new, bases)
        return bases, z

    def forward(self, h: torch.Tensor, clip_mask: torch.Tensor | None = None) -> EMAOutput:
        """Args: h (B, N, L, d) latent tokens of each window, clip_mask (B, N) True = real clip.

        Returns:
            EMAOutput; ``bases`` (B, K, d) is detached unless ``grad`` is set.
        """
        B, N, L, d = h.shape
        if clip_mask is None:
            clip_mask = h.new_ones(B, N, dtype=torch.bool)
        tokens = h.reshape(B, N * L, d)  # (B, S, d)
        valid = clip_mask.bool().repeat_interleave(L, dim=1).to(h.dtype)  # (B, S)
        # A copy: μ is updated in place below, and autograd may still need the start bases (grad=True).
        start = self.mu.detach().clone().to(h.dtype).unsqueeze(0).expand(B, -1, -1)  # (B, K, d)
        if self.grad:
            bases, z = self.em(tokens, valid, start)
        else:
            with torch.no_grad():
                bases, z = self.em(tokens.detach(), valid, start)

        has_clip = clip_mask.any(dim=1)  # (B,) windows that are all padding do not move μ
        if self.training and has_clip.any():
            with torch.no_grad():
                new = bases.detach()[has_clip].float().mean(dim=0)  # (K, d)
                self.mu.mul_(self.momentum).add_(new, alpha=1.0 - self.momentum)
                self.mu.copy_(F.normalize(self.mu, dim=-1))

        with torch.no_grad():
            log_k = math.log(self.num_bases) if self.num_bases > 1 else 1.0
            zf = z.detach().float()
            count = valid.float().sum(dim=1).clamp_min(1.0)  # (B,)
            usage = zf.sum(dim=1) / count.unsqueeze(-1)  # (B, K)
            usage_ent = -(usage * usage.clamp_min(1e-12).log()).sum(-1) / log_k  # (B,)
            tok_ent = -(zf * zf.clamp_min(1e-12).log()).sum(-1)  # (B, S), 0 for padded tokens
            assign_ent = tok_ent.sum(dim=1) / count / log_k  # (B,)
            w = has_clip.float()
            denom = w.sum().clamp_min(1.0)
            usage_entropy = (usage_ent * w).sum() / denom
            assign_entropy = (assign_ent * w).sum() / denom
        return EMAOutput(bases=bases, assign=z, usage_entropy=usage_entropy, assign_entropy=assign_entropy)
