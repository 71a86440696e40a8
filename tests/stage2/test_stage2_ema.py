"""Contextual EMA: EM recovers known centres, assignments and bases are well formed, μ moves only in training."""

import torch
import torch.nn.functional as F

from distinctad.train.models.contextual_ema import ContextualEMA


def _clustered(C=4, d=32, per=40, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(C, d, generator=g), dim=-1)
    labels = torch.arange(C).repeat_interleave(per)
    x = centres[labels] + noise * torch.randn(len(labels), d, generator=g)
    x = x[torch.randperm(len(x), generator=g)]
    return centres, x.view(1, C * per // 10, 10, d)  # (1, N, L, d)


def test_bases_converge_to_centres():
    centres, h = _clustered()
    ema = ContextualEMA(32, num_bases=16, iters=3, tau=0.1).train()
    for _ in range(20):  # μ carries the EM state from window to window
        out = ema(h)
    cos = centres @ out.bases[0].T  # (C, K)
    assert cos.max(dim=1).values.min() > 0.99  # every centre has a base on it
    assert cos.max(dim=0).values.min() > 0.99  # and every base sits on a centre
    # Assignments are confident: each token goes to bases of its own centre.
    assert out.assign_entropy < 0.5


def test_assignments_sum_to_one_and_bases_unit_norm():
    h = torch.randn(3, 5, 4, 8)
    clip_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = ContextualEMA(8, num_bases=6, iters=3)(h, clip_mask)
    assert out.bases.shape == (3, 6, 8) and out.assign.shape == (3, 20, 6)
    torch.testing.assert_close(out.bases.norm(dim=-1), torch.ones(3, 6))
    row_sums = out.assign.sum(-1)  # (B, S)
    valid = clip_mask.repeat_interleave(4, dim=1)
    torch.testing.assert_close(row_sums[valid], torch.ones(int(valid.sum())))
    assert (row_sums[~valid] == 0).all()  # padded clips take no part
    assert 0.0 <= out.usage_entropy <= 1.0 and 0.0 <= out.assign_entropy <= 1.0


def test_one_em_iteration_by_hand():
    h = torch.randn(1, 2, 3, 4)
    ema = ContextualEMA(4, num_bases=5, iters=1, tau=0.5).eval()
    tokens = h.reshape(6, 4)
    z = torch.softmax(tokens @ ema.mu.T / 0.5, dim=-1)  # (S, K)
    expected = F.normalize((z.T @ tokens) / z.sum(0)[:, None], dim=-1)
    out = ema(h)
    torch.testing.assert_close(out.bases[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.assign[0], z)


def test_padded_clips_do_not_change_bases():
    h = torch.randn(1, 3, 4, 8)
    ema = ContextualEMA(8, num_bases=4).eval()
    ref = ema(h).bases
    padded = torch.cat([h, 1e3 * torch.randn(1, 2, 4, 8)], dim=1)  # garbage in two padding clips
    out = ema(padded, torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)).bases
    torch.testing.assert_close(out, ref)


def test_mu_moves_only_in_training_mode():
    h = torch.randn(2, 3, 4, 8)
    ema = ContextualEMA(8, num_bases=4, momentum=0.9)
    mu0 = ema.mu.clone()
    ema.eval()
    ema(h)
    assert torch.equal(ema.mu, mu0)
    ema.train()
    out = ema(h)
    expected = F.normalize(0.9 * mu0 + 0.1 * out.bases.mean(0), dim=-1)
    torch.testing.assert_close(ema.mu, expected)
    assert not ema.mu.requires_grad
    # A batch of padding windows does not move μ either.
    mu1 = ema.mu.clone()
    ema(h, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(ema.mu, mu1)


def test_gradient_option():
    h = torch.randn(1, 2, 3, 8, requires_grad=True)
    assert not ContextualEMA(8, num_bases=4, grad=False)(h).bases.requires_grad  # EMANet default
    out = ContextualEMA(8, num_bases=4, grad=True)(h)
    out.bases.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
