"""The README's first command: the whole pipeline on SynthMAD, and a second run that reuses every step."""

from __future__ import annotations

import json

import pytest

from distinctad.testing import REPO, run_cmd

pytestmark = pytest.mark.slow


def test_quickstart_runs_end_to_end_and_reuses_finished_steps(tmp_path):
    args = [
        "bash",
        str(REPO / "launch/quickstart.sh"),
        "--work",
        str(tmp_path / "qs"),
        "--movies",
        "3",
        "--ads-per-movie",
        "32",
        "--stage1-steps",
        "8",
        "--stage2-steps",
        "12",
        "--configs",
        "A0",
        "--num-beams",
        "1",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
    ]
    first = run_cmd(args, cwd=tmp_path, timeout=900).stdout
    for step in (
        "SynthMAD",
        "frames shards (train)",
        "Stage-I (CLIP-AD)",
        "extract vanilla (eval)",
        "extract clipad (train)",
        "Stage-II clipad-A0",
        "generate vanilla-A0",
        "evaluate clipad-A0",
    ):
        assert f"[{step}]  $ " in first, step
    table = (tmp_path / "qs/results/results.md").read_text()
    assert "| vanilla CLIP | A0 |" in table and "| CLIP-AD | A0 |" in table
    report = json.loads((tmp_path / "qs/results/clipad-A0_report.json").read_text())
    preds = (tmp_path / "qs/results/clipad-A0_predictions.jsonl").read_text().splitlines()
    assert report["meta"]["matching"]["matched"] == len(preds) == 32  # one AD per clip of the eval movie
    assert "mlflow ui --backend-store-uri" in first and "--host 127.0.0.1" in first
    assert "[describe synth0002]  $ distinctad-describe" in first and "AD track: " in first
    assert (tmp_path / "qs/results/described/index.html").is_file()

    second = run_cmd(args, cwd=tmp_path, timeout=300).stdout
    assert "  $ " not in second.replace("already done, skipping:  $ ", "")  # nothing re-ran
    assert second.count("already done, skipping") == first.count("]  $ ")
    assert (tmp_path / "qs/results/results.md").read_text() == table
