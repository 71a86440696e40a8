"""Fixtures of the data tests: a tiny SynthMAD (features + videos) generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from distinctad.data import ASSETS
from distinctad.data.synthmad import write_synthmad

MADEVAL_CSV = ASSETS / "madeval_anno.csv"  # the real MAD-Eval annotation, shipped in data/assets


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """3 movies x 20 ADs, 32-d features and 32x32 videos (about a second to generate)."""
    out = tmp_path_factory.mktemp("synthmad")
    write_synthmad(out, movies=3, ads_per_movie=20, seed=3, videos=True, features=True, feature_dim=32, video_size=32)
    return out
