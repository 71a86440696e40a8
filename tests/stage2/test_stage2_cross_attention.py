"""Cross-attention against a direct, loop-by-loop implementation of supplementary eqs 13-16."""

import math

import torch

from distinctad.train.models.cross_attention import ContextCrossAttention


def _direct(h, m, xattn):
    """Eqs 13-16 written out per window, clip and query token."""
    WQ, bQ = xattn.q.weight, xattn.q.bias
    WK, bK = xattn.k.weight, xattn.k.bias
    WV, bV = xattn.v.weight, xattn.v.bias
    d_k = WQ.shape[0]
    B, N, L, d = h.shape
    out = torch.zeros(B, N, L, d)
    for b in range(B):
        K = m[b] @ WK.T + bK  # (14)
        V = m[b] @ WV.T + bV  # (15)
        for i in range(N):
            Q = h[b, i] @ WQ.T + bQ  # (13)
            for q in range(L):
                scores = torch.stack([Q[q] @ K[k] for k in range(K.shape[0])]) / math.sqrt(d_k)
                w = torch.exp(scores - scores.max())
                w = w / w.sum()  # softmax over the bases
                out[b, i, q] = sum(w[k] * V[k] for k in range(K.shape[0]))  # (16)
    return out


def test_matches_equations():
    xattn = ContextCrossAttention(8, d_k=6)
    h, m = torch.randn(2, 3, 4, 8), torch.randn(2, 5, 8)
    out, attn = xattn(h, m, return_attn=True)
    assert out.shape == (2, 3, 4, 8) and attn.shape == (2, 3, 4, 5)
    torch.testing.assert_close(out, _direct(h, m, xattn), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 4))


def test_one_base_gives_v_everywhere():
    xattn = ContextCrossAttention(8)
    h, m = torch.randn(2, 3, 4, 8), torch.randn(2, 1, 8)
    out = xattn(h, m)
    v = m @ xattn.v.weight.T + xattn.v.bias  # (B, 1, d)
    torch.testing.assert_close(out, v[:, None].expand(2, 3, 4, 8))
