"""Distinctive features and the visual prompt of each clip (the α- and β-paths of Table D.2).

Stage-II step 4. The distinctive features of clip i are Ĥ_i = H_i − H̃_i: its tokens minus the part the
window's shared context explains (H̃_i from ``ContextCrossAttention``).

**Our reading, not the paper's equation.** Table D.2 of the supplementary ablates two switches whose exact
equation is in the main paper, which our seed does not have. We implement:

* α-path: clip i's prompt tokens are H_i + α·Ĥ_i (L tokens), i.e. the distinctive part is amplified.
* β-path: the prompt also carries β·mean_{j≠i, j valid} Ĥ_j as L extra tokens, i.e. what is distinctive
  about the clips around it (zeros when the window has no other valid clip).

Both are switchable, α and β fixed or learnable. With both switches off the prompt is exactly H_i
(configuration A0); with the α-path on and α = 0 and the β-path off it is bit-identical to A0.
"""

from __future__ import annotations

import torch
from torch import nn


class DistinctivePrompt(nn.Module):
    """(H, H̃, clip mask) -> visual prompt tokens (B, N, P, d), P = L or 2L.

    Args:
        alpha_path: add α·Ĥ_i to the clip's own tokens.
        alpha: initial / fixed α.
        alpha_learnable: make α a trained scalar parameter.
        beta_path: append β·mean_{j≠i} Ĥ_j as L extra tokens.
        beta: initial / fixed β.
        beta_learnable: make β a trained scalar parameter.
    """

    def __init__(
        self,
        alpha_path: bool = False,
        alpha: float = 1.0,
        alpha_learnable: bool = False,
        beta_path: bool = False,
        beta: float = 1.0,
        beta_learnable: bool = False,
    ):
        super().__init__()
        self.alpha_path = alpha_path
        self.beta_path = beta_path
        # Fixed values are non-persistent buffers: they follow .to(device) but come from the config, never from a
        # checkpoint (an A0 checkpoint must load into a B1 model with its own α).
        if alpha_learnable:
            self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        else:
            self.register_buffer("alpha", torch.tensor(float(alpha)), persistent=False)
        if beta_learnable:
            self.beta = nn.Parameter(torch.tensor(float(beta)))
        else:
            self.register_buffer("beta", torch.tensor(float(beta)), persistent=False)

    @property
    def needs_context(self) -> bool:
        """Whether H̃ (Contextual EMA + cross-attention) is needed at all."""
        return self.alpha_path or self.beta_path

    def forward(self, h: torch.Tensor, h_ctx: torch.Tensor | None, clip_mask: torch.Tensor) -> torch.Tensor:
        """Args: h (B, N, L, d) = H, h_ctx (B, N, L, d) = H̃ (None when no path is on), clip_mask (B, N).

        Returns:
            The prompt (B, N, P, d); P = 2L with the β-path, else L.
        """
        if not self.needs_context:
            return h  # A0: the prompt is exactly H_i
        if h_ctx is None:
            raise ValueError("the α/β paths need H̃ (the cross-attention output)")
        distinct = h - h_ctx  # (B, N, L, d) Ĥ
        own = h + self.alpha.to(h.dtype) * distinct if self.alpha_path else h  # (B, N, L, d)
        if not self.beta_path:
            return own
        m = clip_mask.to(h.dtype)[:, :, None, None]  # (B, N, 1, 1)
        total = (distinct * m).sum(dim=1, keepdim=True)  # (B, 1, L, d)
        others = total - distinct * m  # (B, N, L, d) sum over j ≠ i of valid Ĥ_j
        n_others = (m.sum(dim=1, keepdim=True) - m).clamp_min(1.0)  # (B, N, 1, 1)
        around = self.beta.to(h.dtype) * others / n_others  # (B, N, L, d)
        return torch.cat([own, around], dim=2)  # (B, N, 2L, d)
