"""Threads that add up to the cores: each process takes its share (distinctad.common.set_threads)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from distinctad import common
from distinctad.testing import LAUNCHER_VARS, REPO, TRIVIAL_YAML, free_port


@pytest.fixture
def clean_env(monkeypatch):
    for v in (*LAUNCHER_VARS, "OMP_NUM_THREADS", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    return monkeypatch


def test_budget_is_the_affinity_cores_divided_by_the_local_ranks(clean_env):
    assert common.usable_cores() == 8
    assert common.thread_budget() == 8  # alone
    clean_env.setenv("LOCAL_SIZE", "2")  # the deepspeed launcher's variable
    assert common.thread_budget() == 4
    clean_env.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun's wins: 8 // 3
    assert common.thread_budget() == 2
    clean_env.setenv("LOCAL_WORLD_SIZE", "16")  # more ranks than cores: still one thread each
    assert common.thread_budget() == 1


def test_slurm_tasks_per_node_and_omp_num_threads(clean_env):
    clean_env.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    assert common.local_world_size() == 4 and common.thread_budget() == 2
    clean_env.setenv("OMP_NUM_THREADS", "3")  # the user's word, per process
    assert common.thread_budget() == 3
    clean_env.setenv("OMP_NUM_THREADS", "")  # empty or nonsense: ignored
    assert common.thread_budget() == 2


def test_set_threads_sets_torch(clean_env):
    before = torch.get_num_threads()
    try:
        clean_env.setenv("LOCAL_WORLD_SIZE", "4")
        assert common.set_threads() == 2 and torch.get_num_threads() == 2
        common.worker_threads(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_two_local_ranks_on_two_cores_run_one_thread_each(tmp_path):
    """The trivial job under ``deepspeed --num_gpus 2``, pinned to 2 cores: each rank runs one torch thread."""
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCHER_VARS, "OMP_NUM_THREADS")}
    env.pop("MLFLOW_TRACKING_URI", None)
    ds = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:2])
    if len(cores.split(",")) < 2:
        pytest.skip("needs 2 usable cores")
    cmd = ["taskset", "-c", cores, ds, "--num_gpus", "2", "--master_port", str(free_port())]
    cmd += ["--module", "distinctad.train.main", "trivial", TRIVIAL_YAML, "--tracking.enabled", "false"]
    cmd += ["--run.out_dir", str(tmp_path / "run"), "--train.max_steps", "2", "--train.ckpt_every", "0"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r"torch threads per rank: intra-op \[(\d+), (\d+)\], inter-op \[(\d+), (\d+)\] \((\d+) usable", out)
    assert m, out[-3000:]
    assert [int(x) for x in m.groups()] == [1, 1, 1, 1, 2]
