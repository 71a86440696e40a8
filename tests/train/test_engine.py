"""The DeepSpeed engine, run as users run it: several ranks, ZeRO 1/2/3, the launchers, resume, two nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distinctad.testing import REPO, deepspeed_cmd, free_port, run_cmd

pytestmark = pytest.mark.slow
TRIVIAL = str(REPO / "launch/configs/trivial.yaml")
NO_MLFLOW = ["--tracking.enabled", "false"]


def _shm_buffers() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("deepspeed_allreduce_buffer_*")} if shm.is_dir() else set()


def test_two_ranks_zero_1_2_3_loss_falls_and_replicas_agree(tmp_path):
    before = _shm_buffers()
    run_cmd(deepspeed_cmd(2, REPO / "tests/train/ds_engine_check.py", str(tmp_path)), cwd=tmp_path)
    assert _shm_buffers() <= before  # no shared-memory buffer left behind (they filled /dev/shm launch by launch)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    for stage in ("1", "2", "3"):
        a, b = r0["stages"][stage], r1["stages"][stage]
        assert a["losses"][-1] < 0.2 * a["losses"][0], f"ZeRO-{stage}: loss did not fall: {a['losses']}"
        assert a["numel"] == b["numel"] == 16 * 64 + 64 + 64 * 64 + 64 + 64 + 1
        assert a["param_sum"] == b["param_sum"] and a["param_l2"] == b["param_l2"] and a["first"] == b["first"]
    # the three stages are the same maths: same loss curve, same weights
    s1, s3 = r0["stages"]["1"], r0["stages"]["3"]
    assert s1["losses"] == pytest.approx(s3["losses"], rel=1e-4)
    assert s1["param_l2"] == pytest.approx(s3["param_l2"], rel=1e-5)


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    f = run_dir / "checkpoints" / f"step_{step:08d}" / "mp_rank_00_model_states.pt"
    return torch.load(f, map_location="cpu", weights_only=False)["module"]


def _launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cmd(
        ["bash", str(REPO / "launch/trivial.sh"), TRIVIAL, *NO_MLFLOW, "--train.keep_checkpoints", "5", *args],
        cwd=tmp_path,
    )


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    n = 13  # not a multiple of the checkpoint cadence, and the resume point lies mid-epoch
    _launch(tmp_path, "--run.name", "straight", "--train.max_steps", str(2 * n))
    _launch(tmp_path, "--run.name", "resumed", "--train.max_steps", str(2 * n), "--train.stop_after", str(n))
    first = json.loads((tmp_path / "runs/resumed/summary.json").read_text())
    assert first["step"] == n and not first["finished"]
    out = _launch(tmp_path, "--run.name", "resumed", "--train.max_steps", str(2 * n))
    assert f"resumed from runs/resumed/checkpoints/step_{n:08d}" in out.stderr + out.stdout
    a, b = _weights(tmp_path / "runs/straight", 2 * n), _weights(tmp_path / "runs/resumed", 2 * n)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    s_a = json.loads((tmp_path / "runs/straight/summary.json").read_text())
    s_b = json.loads((tmp_path / "runs/resumed/summary.json").read_text())
    assert s_a["val/mse"] == s_b["val/mse"] and s_a["samples_seen"] == s_b["samples_seen"]
    # the resumed run changed the weights after the stop: it really trained n more steps
    assert any(not torch.equal(_weights(tmp_path / "runs/resumed", n)[k], b[k]) for k in b)
    # the resolved config sits next to every checkpoint
    assert (tmp_path / f"runs/resumed/checkpoints/step_{2 * n:08d}/config.yaml").is_file()


def test_deepspeed_launcher_two_ranks_runs_the_launch_script(tmp_path):
    run_cmd(deepspeed_cmd(2, REPO / "launch/trivial.sh", TRIVIAL, *NO_MLFLOW, "--train.max_steps", "12"), cwd=tmp_path)
    summary = json.loads((tmp_path / "runs/trivial/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    assert summary["samples_seen"] == 12 * 8 * 2


def test_two_nodes_on_localhost_form_one_stage2_job(tmp_path):
    """Two launchers, one per "node", run ``launch/stage2.sh`` (the Stage-II job on SynthMAD) as one job."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    port = str(free_port())
    ds = str(Path(sys.executable).parent / "deepspeed")
    procs = []
    for node_rank in (0, 1):
        cmd = [
            ds,
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            "--num_nodes",
            "2",
            "--num_gpus",
            "1",
            "--node_rank",
            str(node_rank),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            str(REPO / "launch/stage2.sh"),
            *NO_MLFLOW,
            "--train.max_steps",
            "6",
            "--eval.enabled",
            "false",
            "--data.synth_dir",
            str(tmp_path / "synth"),
            "--run.out_dir",
            str(tmp_path / "run"),
        ]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    assert summary["samples_seen"] == 6 * 2 * 2  # steps x windows per micro-batch x ranks
    assert "Processes" not in outs[1] or "exits successfully" in outs[1]
