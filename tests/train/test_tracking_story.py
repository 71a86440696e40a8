"""Runs that tell their story: datasets, system metrics, descriptions, one chart per metric, reused parents."""

from __future__ import annotations

import hashlib
import json
import time

import mlflow

from distinctad.data.provenance import dataset_record, synthetic_features
from distinctad.train.core.tracking import DESCRIPTION_TAG, ParentRun, Tracker, metric_name, ui_url

MANIFEST = {
    "kind": "window",
    "split": "eval",
    "options": {"window": 16, "num_frames": 8},
    "feature_dim": 64,
    "text_only": False,
    "sources": [],
    "totals": {"samples": 3, "ads": 48, "movies": 1, "shards": 2, "bytes": 1000},
}


def _shards(folder, synthmad: bool = False):
    folder.mkdir(parents=True)
    manifest = dict(MANIFEST)
    if synthmad:  # a features source beside SynthMAD's synthmad.json: feature mode
        (folder.parent / "synthmad.json").write_text("{}")
        manifest["sources"] = [{"role": "features", "path": str(folder.parent / "features.h5")}]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "eval-000000.tar").write_bytes(b"")
    return folder


def test_dataset_record_and_synthetic_label(tmp_path):
    real = _shards(tmp_path / "a" / "win")
    rec = dataset_record(str(real), "evaluation")
    digest = hashlib.sha256((real / "manifest.json").read_bytes()).hexdigest()[:16]
    assert (rec["name"], rec["source"], rec["digest"]) == ("window-eval", str(real.resolve()), digest)
    assert rec["profile"]["samples"] == 3 and rec["profile"]["ads"] == 48
    assert dataset_record(str(real / "eval-*.tar"), "x")["digest"] == digest  # a glob finds the same manifest
    assert not synthetic_features(str(real))
    synth = _shards(tmp_path / "s" / "win", synthmad=True)
    assert synthetic_features(str(synth)) and dataset_record(str(synth), "training")["name"].endswith(
        "(synthetic features)"
    )
    assert dataset_record(str(tmp_path / "nothing"), "x") is None


def test_training_run_logs_datasets_system_metrics_and_links_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    shards = _shards(tmp_path / "win")
    parent = ParentRun(uri, "story", "parent")
    t = Tracker(
        tmp_path / "run",
        enabled=True,
        is_master=True,
        uri=uri,
        experiment="story",
        run_name="child",
        parent_run_id=parent.run_id,
    )
    t.log_dataset(dataset_record(str(shards), "training"))
    t.log_metrics({"eval/R@5/16": 50.0}, step=1)
    time.sleep(3)  # a few samples of the 1 s system-metrics thread
    t.close()
    client = mlflow.MlflowClient(uri)
    run = client.get_run(t.run_id)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.source_type == "local" and str(shards.resolve()) in inp.dataset.source
    assert inp.dataset.digest == hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()[:16]
    assert json.loads(inp.dataset.profile)["samples"] == 3
    assert [tag.value for tag in inp.tags if tag.key == "mlflow.data.context"] == ["training"]
    assert "eval/R_at_5_of_16" in run.data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id

    parent.set_description("| a | b |")
    parent.log_configs("configs/R@5/16 lexical", {"vanilla-A0": 1.0, "clipad-A0": 2.0, "clipad-C3": 3.0})
    parent.close()
    prun = client.get_run(parent.run_id)
    assert prun.data.tags[DESCRIPTION_TAG] == "| a | b |"
    assert prun.data.tags["configs"] == "step 0 = vanilla-A0, step 1 = clipad-A0, step 2 = clipad-C3"
    hist = client.get_metric_history(parent.run_id, "configs/R_at_5_of_16_lexical")
    assert [(m.step, m.value) for m in hist] == [(0, 1.0), (1, 2.0), (2, 3.0)]

    # a re-run resumes the same parent (no second one) and can adopt a run of an earlier parent
    again = ParentRun(uri, "story", "parent-2", resume_run_id=parent.run_id)
    assert again.resumed and again.run_id == parent.run_id
    other = ParentRun(uri, "story", "other")
    other.adopt(t.run_id)
    assert client.get_run(t.run_id).data.tags["mlflow.parentRunId"] == other.run_id
    again.close()
    other.close()
    assert len(client.search_runs([parent.experiment_id])) == 3
    assert ParentRun(uri, "story", "p", resume_run_id="0" * 32).resumed is False  # unknown id: a new parent
    route = ui_url("http://h:5000", "1", "abc").split("#")
    assert route[0] == "http://h:5000/" and route[1].split("/") == [
        "",
        "experiments",
        "1",
        "runs",
        "abc?workflowType=machine_learning",
    ]
    assert metric_name("eval/Distinct-1/16 GT") == "eval/Distinct-1_of_16_GT"
