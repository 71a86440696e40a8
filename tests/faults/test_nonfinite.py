"""NaN/inf losses: skipped and logged; `train.max_bad_steps` in a row stop the job in one line, checkpoint kept.

Hooks: ``DISTINCTAD_FAULT_NAN_AT_STEPS`` / ``DISTINCTAD_FAULT_INF_AT_STEPS`` (forward passes of this launch, 1-based).
The 2-rank case (a NaN on one rank only, skipped by both) is in ``test_two_rank_faults.py``.
"""

from __future__ import annotations

import json

import pytest

from distinctad.testing import latest, metrics_rows, run_cmd, run_failing, trivial_cmd
from distinctad.train.core.checkpoint import SafeTorchCheckpointEngine

pytestmark = pytest.mark.slow
ARGS = ["--train.max_steps", "12", "--train.ckpt_every", "2", "--train.max_bad_steps", "3", "--train.log_every", "1"]


def test_nonfinite_losses_are_skipped_then_too_many_in_a_row_stop_cleanly(tmp_path):
    run = tmp_path / "nan"
    # passes: 1 2 [3 NaN] 4 [5 inf] 6 [7 8 9 NaN] -> steps 1, 2, skip, 3, skip, 4 (checkpoint), three skips: stop
    proc = run_failing(
        trivial_cmd(run, *ARGS),
        cwd=tmp_path,
        env={"DISTINCTAD_FAULT_NAN_AT_STEPS": "3,7,8,9", "DISTINCTAD_FAULT_INF_AT_STEPS": "5"},
    )
    err = proc.stderr
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err + proc.stdout
    assert err.strip().splitlines()[-1] == (
        f"error: 3 non-finite losses in a row at step 5 (train.max_bad_steps=3); stopped. Last good checkpoint: "
        f"{run}/checkpoints/step_00000004"
    )
    assert err.count("WARNING distinctad.train.core.loop: non-finite loss at step") == 5
    assert "non-finite loss at step 3 (micro-batch 2 of epoch 0): step skipped (1 in a row" in err
    assert "non-finite loss at step 5 (micro-batch 8 of epoch 0): step skipped (3 in a row" in err
    rows = metrics_rows(run)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]  # training went on after single skips
    assert [(r["step"], r["train/nonfinite_skipped"]) for r in rows if "train/nonfinite_skipped" in r] == [
        (2, 1),
        (3, 2),
        (4, 3),
        (4, 4),
        (4, 5),
    ]
    assert all(r["train/loss"] == r["train/loss"] for r in rows if "train/loss" in r)  # no NaN reached the log

    # The last good checkpoint is intact: `latest` names it, every file loads weights-only, a relaunch resumes.
    assert latest(run) == "step_00000004"
    engine = SafeTorchCheckpointEngine()
    for f in (run / "checkpoints/step_00000004").glob("*.pt"):
        engine.load(str(f), map_location="cpu")
    out = run_cmd(trivial_cmd(run, *ARGS), cwd=tmp_path)
    assert f"resumed from {run}/checkpoints/step_00000004 (step 4)" in out.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 12
    assert summary["nonfinite_skipped"] == 2  # the two isolated skips before the checkpoint were saved with it
