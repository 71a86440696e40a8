"""Shared fixtures of the Stage-I tests: a tiny random CLIP-AD and a deterministic seed."""

from __future__ import annotations

import pytest
import torch

from distinctad.train.models.clip_ad import TINY_MODEL, build_clip_ad


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared, busy CPU OpenMP threads waiting on each
    # other make a 1 s test take 20 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    """A fresh tiny CLIP-AD (random weights, 32x32 input, 64-d embeddings)."""
    return build_clip_ad(TINY_MODEL)
