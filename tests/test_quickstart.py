"""The README's first command: the whole pipeline on SynthMAD, and a second run that reuses every step."""

from __future__ import annotations

import json

import mlflow
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
        "A0,C3",
        "--seeds",
        "0,1",
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
        "Stage-II vanilla (A0,C3 x 2 seeds)",
        "Stage-II clipad (A0,C3 x 2 seeds)",
        "generate clipad-C3",
        "evaluate clipad-C3",
    ):
        assert f"[{step}]  $ " in first, step
    table = (tmp_path / "qs/results/results.md").read_text()
    assert "| vanilla CLIP | A0 | 2 |" in table and "| CLIP-AD | C3 | 2 |" in table and "R@5/16 (lexical)" in table
    assert table.count("| C3 − A0 | ") == 2 and "paired bootstrap over ADs pooled over 2 seed(s) (64 pairs" in table
    report = json.loads((tmp_path / "qs/results/clipad-C3_report.json").read_text())
    preds = (tmp_path / "qs/results/clipad-C3_predictions.jsonl").read_text().splitlines()
    assert report["meta"]["matching"]["matched"] == len(preds) == 32  # one AD per clip of the eval movie
    # the separate generate + eval commands give what the run's own evaluation gave
    own = json.loads(next((tmp_path / "qs/runs/stage2-clipad/clipad-C3-seed0/eval").glob("*_report.json")).read_text())
    assert report["CIDEr"] == pytest.approx(own["CIDEr"]) and report["Rep@3"] == pytest.approx(own["Rep@3"])
    assert "mlflow ui --backend-store-uri" in first and "--host 127.0.0.1" in first
    assert "workflowType=machine_learning" in first
    assert "[describe synth0002]  $ distinctad-describe" in first and "AD track: " in first
    assert (tmp_path / "qs/results/described/index.html").is_file()

    second = run_cmd(args, cwd=tmp_path, timeout=300).stdout
    assert "  $ " not in second.replace("already done, skipping:  $ ", "")  # nothing re-ran
    assert second.count("already done, skipping") == first.count("]  $ ")
    assert (tmp_path / "qs/results/results.md").read_text() == table

    # MLflow: one quick-start parent (the re-run reused it), a grid parent per feature set under it, 8 Stage-II
    # children that carry their own eval metrics, report, samples and datasets
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("distinctad-quickstart")
    runs = client.search_runs([exp.experiment_id])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("job") is None]
    quick = [r for r in top if r.info.run_name.startswith("quickstart-")]
    assert len(quick) == 1, [r.info.run_name for r in top]
    assert "| CLIP-AD | C3 | 2 |" in quick[0].data.tags["mlflow.note.content"]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == quick[0].info.run_id]
    assert sorted(r.info.run_name for r in nested) == ["ablation-stage2-clipad", "ablation-stage2-vanilla", "stage1"]
    grids = [r for r in nested if r.info.run_name.startswith("ablation-")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in {g.info.run_id for g in grids}]
    assert len(children) == 8 and all("eval/CIDEr" in c.data.metrics for c in children)
    c = next(c for c in children if c.info.run_name == "clipad-C3-seed1")
    assert "eval/R_at_5_of_16" in c.data.metrics and "eval/DW-Recall_of_16" in c.data.metrics
    arts = [a.path for a in client.list_artifacts(c.info.run_id, "eval")]
    assert any(a.endswith("_report.json") for a in arts) and any(a.endswith("_samples.md") for a in arts)
    assert {i.dataset.name for i in c.inputs.dataset_inputs} == {
        "window-train (CLIP-AD features)",
        "window-eval (CLIP-AD features)",
    }
