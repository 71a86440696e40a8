"""MLflow tracking: what a run logs reads back through mlflow's own API; a dead server never stops training."""

from __future__ import annotations

import json

import mlflow

from distinctad.testing import REPO, free_port, run_cmd
from distinctad.train.core.tracking import Tracker

TRIVIAL = str(REPO / "launch/configs/trivial.yaml")


def test_tracker_logs_params_metrics_artifact_to_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker(tmp_path / "run", enabled=True, is_master=True, uri=uri, experiment="exp-a", run_name="r1")
    t.log_params({"train.lr": 0.001, "model.width": 64})
    for step, loss in enumerate([3.0, 2.0, 1.5], start=1):
        t.log_metrics({"train/loss": loss}, step=step)
    (tmp_path / "note.txt").write_text("hello")
    t.log_artifact(tmp_path / "note.txt")
    t.close()

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["exp-a"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == t.run_id and run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.001", "model.width": "64"}
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)] == ["note.txt"]
    assert (tmp_path / "mlartifacts").is_dir() and list((tmp_path / "mlartifacts").rglob("note.txt"))
    # the local JSONL copy holds the same metrics
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in lines] == [(1, 3.0), (2, 2.0), (3, 1.5)]


def test_training_job_logs_config_and_curve(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cmd(
        [
            "bash",
            str(REPO / "launch/trivial.sh"),
            TRIVIAL,
            "--tracking.uri",
            uri,
            "--tracking.experiment",
            "job-test",
            "--train.max_steps",
            "20",
            "--train.log_every",
            "5",
        ],
        cwd=tmp_path,
    )
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["job-test"], output_format="list")
    assert run.data.params["train.max_steps"] == "20" and run.data.params["world_size"] == "1"
    client = mlflow.MlflowClient()
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "val/mse" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "ds_config.json"}


def test_unreachable_tracking_server_does_not_stop_training(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = run_cmd(
        [
            "bash",
            str(REPO / "launch/trivial.sh"),
            TRIVIAL,
            "--tracking.uri",
            dead,
            "--train.max_steps",
            "10",
            "--train.log_every",
            "5",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    log = out.stdout + out.stderr
    assert log.count("is unreachable") == 1
    summary = json.loads((tmp_path / "runs/trivial/summary.json").read_text())
    assert summary["finished"] and summary["step"] == 10
    steps = [json.loads(line)["step"] for line in (tmp_path / "runs/trivial/metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 10]  # two train logs and the final eval


def test_broken_store_degrades_to_jsonl(tmp_path, caplog):
    (tmp_path / "a-file").write_text("not a directory")
    uri = f"sqlite:///{tmp_path}/a-file/mlflow.db"  # the store cannot be created under a regular file
    t = Tracker(tmp_path / "run", enabled=True, is_master=True, uri=uri, experiment="e", run_name="r")
    t.log_metrics({"train/loss": 1.0}, step=1)
    t.close()
    assert (tmp_path / "run/metrics.jsonl").read_text().count("train/loss") == 1
    assert "MLflow tracking failed" in caplog.text
