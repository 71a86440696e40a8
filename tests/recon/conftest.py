"""Shared fixtures of the reconstruction tests: tiny frozen parts built from the real MAD-Eval text."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import SHARED_DATA

MADEVAL_CSV = SHARED_DATA / "madeval_anno.csv"
EVAL_MOVIE = "3074_THE_ROOMMATE"


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed seed; one intra-op thread (tiny tensors only lose time to thread hand-offs on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
