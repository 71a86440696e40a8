"""Faults of a 2-rank DeepSpeed job (the trivial job, ``deepspeed --num_gpus 2``), one scenario, four launches:

A. uninterrupted, 20 steps (the reference);
B. rank 1 is killed with SIGKILL after step 14 (``DISTINCTAD_FAULT_KILL_AT_STEP``): the last checkpoint is step 12,
   which lies mid-epoch;
C. relaunch with a NaN loss on rank 1 only at its 2nd forward pass (``DISTINCTAD_FAULT_NAN_AT_STEPS``) and a full
   disk on rank 1 while writing the checkpoint of step 16 (``DISTINCTAD_FAULT_ENOSPC_AT_STEP``);
D. relaunch: resumes from step 12 again and must end exactly as A (weights, metrics, samples seen).

Every launch records the sample indices of each micro-batch (``DISTINCTAD_DEBUG_SAMPLES``) except C.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch

from distinctad.testing import latest, metrics_rows, run_cmd, run_failing, trivial_cmd
from distinctad.train.core.checkpoint import SafeTorchCheckpointEngine

pytestmark = pytest.mark.slow
# 128 samples / (2 ranks x 8) = 8 micro-batches per rank per epoch; 20 steps = 2.5 epochs.
ARGS = [
    "--model.n_samples",
    "128",
    "--train.max_steps",
    "20",
    "--train.ckpt_every",
    "4",
    "--train.log_every",
    "1",
    "--train.keep_checkpoints",
    "10",
]
DEBUG = {"DISTINCTAD_DEBUG_SAMPLES": "1"}
CKPT, KILL, FULL = 12, 14, 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("two_rank_faults")
    straight, faulty = tmp / "straight", tmp / "faulty"
    out: dict = {"straight": straight, "faulty": faulty}
    run_cmd(trivial_cmd(straight, *ARGS, ranks=2), cwd=tmp, env=DEBUG)
    t0 = time.monotonic()
    out["B"] = run_failing(
        trivial_cmd(faulty, *ARGS, ranks=2), cwd=tmp, env={**DEBUG, "DISTINCTAD_FAULT_KILL_AT_STEP": str(KILL)}
    )
    out["B_seconds"] = time.monotonic() - t0
    out["B_latest"] = latest(faulty)
    out["C"] = run_failing(
        trivial_cmd(faulty, *ARGS, ranks=2),
        cwd=tmp,
        env={"DISTINCTAD_FAULT_NAN_AT_STEPS": "2", "DISTINCTAD_FAULT_ENOSPC_AT_STEP": str(FULL)},
    )
    out["C_latest"] = latest(faulty)
    out["C_dirs"] = sorted(p.name for p in (faulty / "checkpoints").glob("step_*"))
    out["D"] = run_cmd(trivial_cmd(faulty, *ARGS, ranks=2), cwd=tmp, env=DEBUG)
    return out


def _text(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def _records(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / f"samples/rank{rank}.jsonl").read_text().splitlines()]


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    f = run_dir / f"checkpoints/step_{step:08d}/mp_rank_00_model_states.pt"
    return torch.load(f, map_location="cpu", weights_only=True)["module"]


def test_sigkill_of_one_rank_fails_the_launch_fast(runs):
    b, out = runs["B"], _text(runs["B"])
    assert b.returncode != 0, out[-3000:]
    assert f"rank 1 kills itself (SIGKILL) after step {KILL}" in out
    # The deepspeed launcher sees rank 1 die, terminates rank 0 (blocked in a collective) and exits with -9.
    assert "exits with return code = -9" in out, out[-3000:]
    pids = [int(p) for p in re.findall(r"process (\d+) spawned with command", out)]
    assert len(pids) == 2
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert runs["B_seconds"] < 150
    assert runs["B_latest"] == f"step_{CKPT:08d}"


def test_nonfinite_loss_on_one_rank_is_skipped_on_every_rank(runs):
    out = _text(runs["C"])
    # the 2nd forward pass after resuming at 12 would have made step 14; both ranks skip it and log it
    assert out.count("non-finite loss at step 14 (micro-batch 5 of epoch 1): step skipped (1 in a row") == 2, out
    assert "steps skipped" not in out and "non-finite losses in a row" not in out  # one bad step does not stop
    rows = [r for r in metrics_rows(runs["faulty"]) if "train/nonfinite_skipped" in r]
    assert [(r["step"], r["train/nonfinite_skipped"]) for r in rows] == [(13, 1)]


def test_disk_full_while_checkpointing_is_a_clear_error_and_keeps_the_previous_checkpoint(runs, tmp_path):
    c, out = runs["C"], _text(runs["C"])
    assert c.returncode != 0
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out[-3000:]  # said once, by rank 0
    assert re.fullmatch(
        rf"error: could not write checkpoint \S+/step_{FULL:08d} \(rank 1: No space left on device "
        rf"\(\S+zero_pp_rank_1_mp_rank_00_optim_states.pt\)\); the previous checkpoint "
        rf"step_{CKPT:08d} is intact and is where a relaunch resumes",
        lines[0],
    ), lines[0]
    # latest untouched, the partial checkpoint removed, the previous one complete and loadable (weights only)
    assert runs["C_latest"] == f"step_{CKPT:08d}"
    assert f"step_{FULL:08d}" not in runs["C_dirs"] and f"step_{CKPT:08d}" in runs["C_dirs"]
    ckpt = runs["faulty"] / f"checkpoints/step_{CKPT:08d}"
    engine = SafeTorchCheckpointEngine()
    for f in (
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ):
        assert engine.load(str(ckpt / f), map_location="cpu")
    assert f"resumed from {runs['faulty']}/checkpoints/step_{CKPT:08d}" in _text(runs["D"])


def test_relaunch_resumes_from_the_last_checkpoint_and_equals_the_uninterrupted_run(runs):
    straight, faulty = runs["straight"], runs["faulty"]
    # Samples: what B committed (steps <= 12) + what D saw == the uninterrupted run, rank by rank.
    per_epoch: dict[int, Counter] = {}
    for rank in (0, 1):
        ref = [(r["epoch"], r["micro"], r["ids"]) for r in _records(straight, rank)]
        rows = _records(faulty, rank)
        first = [r for r in rows if r["launch"] == 0]  # launch B
        second = [r for r in rows if r["launch"] == CKPT]  # launch D (C did not record)
        assert len(first) + len(second) == len(rows)
        lost = [r for r in first if r["step"] > CKPT]
        assert [r["step"] for r in lost] == [CKPT + 1, KILL]  # trained, then lost with the killed process
        assert (second[0]["epoch"], second[0]["micro"]) == (1, 4)  # D restarts at the checkpoint's data position
        combined = [(r["epoch"], r["micro"], r["ids"]) for r in first if r["step"] <= CKPT] + [
            (r["epoch"], r["micro"], r["ids"]) for r in second
        ]
        assert combined == ref
        assert [r["ids"] for r in second[:2]] == [r["ids"] for r in lost]  # the lost work is redone once
        for epoch, _, ids in combined:
            per_epoch.setdefault(epoch, Counter()).update(ids)
    assert sorted(per_epoch) == [0, 1, 2]
    for epoch, counts in per_epoch.items():  # over both ranks: no sample twice within an epoch
        assert max(counts.values()) == 1, (epoch, counts.most_common(3))
    assert sum(per_epoch[0].values()) == sum(per_epoch[1].values()) == 128

    # Same weights and final metrics as the uninterrupted run.
    a, b = _weights(straight, 20), _weights(faulty, 20)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    s_a, s_b = (json.loads((d / "summary.json").read_text()) for d in (straight, faulty))
    assert s_b["finished"] and s_a["val/mse"] == s_b["val/mse"]
    assert s_a["samples_seen"] == s_b["samples_seen"] == 20 * 16
    train_a = [r for r in metrics_rows(straight) if "train/loss" in r]
    train_b = {r["step"]: r for r in metrics_rows(faulty) if "train/loss" in r}  # D's rows replace B's and C's
    assert [r["train/loss"] for r in train_a] == [train_b[s]["train/loss"] for s in range(1, 21)]
