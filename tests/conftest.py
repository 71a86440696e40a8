"""Shared fixtures: a fixed seed per test, one intra-op thread on request.

Helpers that run jobs as a user would live in :mod:`distinctad.testing`; tests import them from there.
"""

from __future__ import annotations

import os
import random

# isort: off
import distinctad  # noqa: F401 - before torch, so its OpenMP threads sleep when they wait (OMP_WAIT_POLICY)

# isort: on
import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """The test files holding slow (multi-process, end-to-end) tests run first, each file's tests in their order.

    The suite runs on 2 pytest-xdist workers, one test file per worker at a time, handed out in collection order: a
    long file collected last (tests/train/test_resume.py) would leave the other worker idle for minutes at the end.
    Started early, the many quick files fill the other worker's time instead."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a busy 2-core machine OpenMP threads
    waiting on each other make a 1 s test take 20 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_leaked_launcher_variables():
    """A job run in this process fills in RANK, MASTER_PORT... (``init_distributed``); a test that does so must take
    the ``launcher_env`` fixture, or a later test's child process could inherit a stale rank or a taken port."""
    from distinctad.testing import LAUNCHER_VARS

    before = {k: os.environ.get(k) for k in LAUNCHER_VARS}
    yield
    after = {k: os.environ.get(k) for k in LAUNCHER_VARS}
    for k, v in before.items():  # put them back first, so one leak fails one test, not every later one
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    assert after == before, f"the test left launcher variables behind: { {k: v for k, v in after.items() if v} }"


@pytest.fixture(autouse=True)
def _no_leaked_torch_state():
    """Code under test must not change process-wide torch state behind the caller's back (autograd switched off,
    a default dtype, deterministic mode): it silently breaks every later test that trains in this process."""
    before = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled())
    yield
    after = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled())
    torch.set_grad_enabled(before[0])
    torch.set_default_dtype(before[1])
    torch.use_deterministic_algorithms(before[2])
    assert after == before, f"the test left torch (grad enabled, default dtype, deterministic) at {after}, not {before}"


@pytest.fixture
def launcher_env(monkeypatch):
    """For jobs run in this process: whatever launcher variables ``init_distributed`` fills in are removed again
    afterwards (set-then-delete, so monkeypatch restores "unset"), so no later subprocess inherits a rank or a port."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
