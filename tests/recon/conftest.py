"""Shared fixtures of the reconstruction tests: tiny frozen parts built from the real MAD-Eval text."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA

MADEVAL_CSV = SHARED_DATA / "madeval_anno.csv"
EVAL_MOVIE = "3074_THE_ROOMMATE"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (see tests/conftest.py)."""
