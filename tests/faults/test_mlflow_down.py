"""MLflow server down mid-run: training completes, every metric is in metrics.jsonl, one warning.

A real ``mlflow server`` on 127.0.0.1 (free port, SQLite store in tmp) is killed while the job is paused at step 5
by ``DISTINCTAD_FAULT_PAUSE_AT_STEP`` (see ``distinctad.train.core.loop``). Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distinctad.testing import child_env, free_port, metrics_rows, trivial_cmd

pytestmark = pytest.mark.slow


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2):
            return True
    except OSError:
        return False


def test_training_survives_the_mlflow_server_dying_mid_run(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = tmp_path / "mlflow.db"
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    job = None
    try:
        _wait_for(lambda: _healthy(url) or server.poll() is not None, 90, "the MLflow server")
        assert server.poll() is None, "mlflow server exited at start"
        run = tmp_path / "run"
        env = child_env({"DISTINCTAD_FAULT_PAUSE_AT_STEP": "5"})
        job = subprocess.Popen(
            trivial_cmd(
                run,
                "--tracking.enabled",
                "true",
                "--tracking.uri",
                url,
                "--tracking.experiment",
                "faults",
                "--train.max_steps",
                "12",
                "--train.log_every",
                "1",
                "--train.ckpt_every",
                "6",
            ),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: (run / "paused").exists() or job.poll() is not None, 120, "the job to reach step 5")
        assert job.poll() is None, job.communicate()[1][-3000:]
        os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, all started by this test
        server.wait(timeout=30)
        _wait_for(lambda: not _healthy(url), 30, "the server to go away")
        (run / "paused").unlink()
        _, err = job.communicate(timeout=120)
    finally:
        if job is not None and job.poll() is None:
            job.kill()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert job.returncode == 0, err[-3000:]
    rows = metrics_rows(run)
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 13))  # all steps kept locally
    assert any("val/mse" in r for r in rows)
    assert err.count("MLflow tracking failed") == 1, err[-3000:]
    assert "Traceback" not in err
    # It really was logging to the server until it died (the pause comes before step 5 is logged).
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store}")
    (found,) = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert found.info.status == "RUNNING"  # it could not be told the run ended; the local files are complete
    assert (run / "summary.json").is_file() and (run / "checkpoints/latest").read_text() == "step_00000012"
