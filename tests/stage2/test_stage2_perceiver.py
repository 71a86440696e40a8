"""Perceiver resampler: shapes, frame masking, temporal order."""

import pytest
import torch

from distinctad.train.models.perceiver import PerceiverResampler


def test_shape_and_mask():
    p = PerceiverResampler(feature_dim=12, d_model=16, num_latents=5, num_layers=2, num_heads=4).eval()
    x = torch.randn(3, 6, 12)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    out = p(x, mask)
    assert out.shape == (3, 5, 16)
    # Masked frames are ignored: changing them changes nothing, changing a real frame does.
    x2 = x.clone()
    x2[0, 4:] = 100.0
    torch.testing.assert_close(p(x2, mask), out)
    x3 = x.clone()
    x3[0, 0] += 1.0
    assert not torch.allclose(p(x3, mask)[0], out[0])
    # The result for clip 0 equals running it alone on its 4 real frames.
    torch.testing.assert_close(p(x[:1, :4])[0], out[0], rtol=1e-4, atol=1e-5)
    # A clip that is all padding still gives finite latents.
    assert torch.isfinite(p(x, torch.zeros(3, 6, dtype=torch.bool))).all()


def test_frame_order_matters_and_limit():
    p = PerceiverResampler(feature_dim=8, d_model=8, num_latents=2, num_heads=2, max_frames=4).eval()
    with torch.no_grad():
        p.time_pos.normal_()
    x = torch.randn(1, 4, 8)
    assert not torch.allclose(p(x), p(x.flip(1)))
    with pytest.raises(ValueError, match="max_frames"):
        p(torch.randn(1, 5, 8))
