"""Shared fixtures of the Stage-I tests: a tiny random CLIP-AD and a deterministic seed."""

from __future__ import annotations

import pytest

from distinctad.train.models.clip_ad import TINY_MODEL, build_clip_ad


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (see tests/conftest.py)."""


@pytest.fixture
def tiny_model():
    """A fresh tiny CLIP-AD (random weights, 32x32 input, 64-d embeddings)."""
    return build_clip_ad(TINY_MODEL)
