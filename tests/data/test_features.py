"""AutoAD-II frame sampling on MAD features, hand-computed."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from distinctad.data.features import FeatureReader, clip_frame_range, sample_frame_indices


@pytest.mark.parametrize(
    "start,end,shift,expected",
    [
        (1.0, 2.0, 0, [5, 6, 7, 8]),  # s=5, e=10: linspace(5, 9, 4, endpoint=False) = 5, 6, 7, 8
        (0.33, 0.5, 0, [1, 1, 1, 1]),  # s=floor(1.65)=1, e=ceil(2.5)=3: 1, 1.25, 1.5, 1.75
        (19.5, 25.0, 0, [97, 97, 98, 98]),  # e clipped to 100 frames: 97, 97.5, 98, 98.5
        (1.0, 2.0, 3, [8, 9, 10, 11]),  # training jitter
        (19.5, 25.0, 4, [99, 99, 99, 99]),  # jitter clipped at the last frame
    ],
)
def test_sample_frame_indices(start, end, shift, expected):
    assert sample_frame_indices(start, end, 100, 4, shift=shift).tolist() == expected


def test_past_end_raises_and_short_clip_gets_a_frame():
    with pytest.raises(ValueError, match="past the 100"):
        sample_frame_indices(20.0, 21.0, 100, 4)
    assert clip_frame_range(2.0, 2.0, 100) == (10, 11)


def test_reader_gathers_the_sampled_rows(tmp_path):
    feats = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("3001", data=feats)
    r = FeatureReader(tmp_path / "f.h5")
    assert r.num_frames("3001") == 100 and r.dim() == 3 and "3001" in r and "x" not in r
    np.testing.assert_array_equal(r.clip("3001", 0.33, 0.5, 4), feats[[1, 1, 1, 1]])
    np.testing.assert_array_equal(r.clip("3001", 19.5, 25.0, 4), feats[[97, 97, 98, 98]])


def test_reader_holds_one_dataset_and_reads_long_spans_row_by_row(tmp_path, monkeypatch):
    from distinctad.data import features as features_mod

    a = np.arange(600 * 2, dtype=np.float32).reshape(600, 2)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("a", data=a)
        f.create_dataset("b", data=-a[:50])
    r = FeatureReader(tmp_path / "f.h5")
    # 0..100 s at 5 fps: s=0, e=500, linspace(0, 499, 4, endpoint=False) = 0, 124.75, 249.5, 374.25; span 375 > 256
    np.testing.assert_array_equal(r.clip("a", 0.0, 100.0, 4), a[[0, 124, 249, 374]])
    held = r.dataset("a")
    assert r.dataset("a") is held  # held open across ADs of one movie
    np.testing.assert_array_equal(r.clip("b", 1.0, 2.0, 4), -a[[5, 6, 7, 8]])  # switching movie switches dataset
    assert r.dataset("b") is not held
    monkeypatch.setattr(features_mod, "SPAN_MAX_ROWS", 1000)  # the span path gives the same rows
    np.testing.assert_array_equal(r.clip("a", 0.0, 100.0, 4), a[[0, 124, 249, 374]])
