"""Shared fixtures of the reconstruction tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (see tests/conftest.py)."""
