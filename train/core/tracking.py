"""Experiment tracking behind one small interface (torchtitan's ``BaseLogger`` pattern).

Rank 0 gets an :class:`MLflowLogger`, every other rank a :class:`NullLogger`. Metrics are always also appended to
``<run dir>/metrics.jsonl``, so a tracking server that is down (or goes down mid-run) costs nothing but a warning:
training goes on and nothing is lost.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from distinctad.common import warn_once

try:
    import mlflow
except ImportError:  # optional at import time; the logger then degrades to JSONL only
    mlflow = None

logger = logging.getLogger(__name__)
DEFAULT_URI = "sqlite:///mlflow.db"
# Opens our experiments in the MLflow UI's "model training" view (runs, metrics, artifacts), not the GenAI one.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri(configured: str = "") -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else a local SQLite store (artifacts in ./mlartifacts)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _http_reachable(uri: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


DESCRIPTION_TAG = "mlflow.note.content"
"""The tag MLflow's UI shows (and edits) as a run's or experiment's description (Markdown)."""


def shard_dataset(record: dict):
    """An MLflow dataset for a shard set (``distinctad.data.provenance.dataset_record``): a ``MetaDataset`` whose
    source is the shard folder, digest the manifest's hash and profile the sample counts, so a run's Datasets
    section shows exactly what it read. None without mlflow."""
    if mlflow is None:
        return None
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    class ShardDataset(MetaDataset):
        @property
        def profile(self) -> dict:
            return {k: v for k, v in record["profile"].items() if v is not None}

        def to_dict(self) -> dict[str, str]:  # as mlflow's NumpyDataset does: the profile travels as JSON
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    return ShardDataset(LocalArtifactDatasetSource(record["source"]), name=record["name"], digest=record["digest"])


def ui_url(host: str, experiment_id: str, run_id: str = "") -> str:
    """A link into MLflow's UI that opens the model-training view.

    MLflow 3's UI picks the GenAI or the model-training layout from its ``workflowType`` query parameter, else the
    browser's remembered choice (default GenAI), not from the ``mlflow.experimentKind`` tag (mlflow/mlflow#24498):
    a link without it opens our experiment on the GenAI overview.
    """
    route = ["#", "experiments", experiment_id, *(["runs", run_id] if run_id else [])]
    return host.rstrip("/") + "/" + "/".join(route) + "?workflowType=machine_learning"


def metric_name(name: str) -> str:
    """An MLflow metric key: ``eval/R@5/16`` -> ``eval/R_at_5_of_16``, ``eval/Rep@3 GT`` -> ``eval/Rep_at_3_GT``.

    MLflow allows letters, digits and ``_-. /`` only, and its UI makes a chart section of what precedes a "/": a
    "/" that starts a number is part of a metric's own name (``R@5/16``, ``Distinct-1/16``) and becomes ``_of_``,
    so the section stays ``eval`` and the chart is ``R_at_5_of_16``; the other "/" keep separating sections.
    """
    name = re.sub(r"/(?=\d)", "_of_", name.replace("@", "_at_"))
    return re.sub(r"[^\w\-./]", "_", name)


class BaseLogger:
    """What a job may send to tracking."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_dataset(self, record: dict | None) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullLogger(BaseLogger):
    """Ranks other than 0."""


class JsonlLogger(BaseLogger):
    """Append-only metrics file in the run directory; survives anything MLflow does."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
            f.flush()


class MLflowLogger(BaseLogger):
    """MLflow run on rank 0 that turns every tracking failure into a single warning."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        jsonl: JsonlLogger,
        parent_run_id: str = "",
        system_metrics: bool = True,
    ):
        self.jsonl = jsonl
        self.active = False
        self.run_id = None
        if mlflow is None:
            warn_once(logger, "mlflow is not installed; metrics go to metrics.jsonl only")
            return
        if uri.startswith(("http://", "https://")):
            # Fail fast: the MLflow client retries a dead server for minutes by default.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
            if not _http_reachable(uri):
                warn_once(
                    logger,
                    f"MLflow tracking server {uri} is unreachable; training goes on and metrics "
                    f"are written to {jsonl.path}",
                )
                return
        try:
            mlflow.set_tracking_uri(uri)
            if mlflow.get_experiment_by_name(experiment) is None and not uri.startswith(("http://", "https://")):
                # local stores keep artifacts in ./mlartifacts, beside mlflow.db (MLflow's server layout)
                try:
                    mlflow.create_experiment(
                        experiment, artifact_location=Path("mlartifacts").resolve().as_uri(), tags=EXPERIMENT_TAGS
                    )
                except mlflow.exceptions.MlflowException:
                    pass  # another job created it first
            mlflow.set_experiment(experiment)
            tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
            # CPU, memory, disk, network (and GPU with pynvml) from a thread MLflow runs; needs psutil. Every 5 s
            # unless $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says otherwise (MLflow's 10 s misses short runs).
            if system_metrics and "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL" not in os.environ:
                mlflow.set_system_metrics_sampling_interval(5)
            self.run = mlflow.start_run(run_name=run_name, tags=tags, log_system_metrics=system_metrics or None)
            self.run_id = self.run.info.run_id
            self.active = True
            logger.info("MLflow run %s in experiment '%s' at %s", self.run_id, experiment, uri)
        except Exception as e:  # noqa: BLE001 - any tracking failure must not stop training
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        self.active = False
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warn_once(logger, f"MLflow tracking failed ({first}); training goes on, metrics kept in {self.jsonl.path}")

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            getattr(mlflow, fn)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow params are strings of at most 6000 chars and cannot change once logged.
        self._call("log_params", {k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", {metric_name(k): float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._call("log_artifact", str(path), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", tags)

    def log_dataset(self, record: dict | None) -> None:
        if record is not None and self.active:
            try:
                mlflow.log_input(shard_dataset(record), context=record["context"])
            except Exception as e:  # noqa: BLE001
                self._fail(e)

    def close(self, status: str = "FINISHED") -> None:
        self._call("end_run", status=status)
        self.active = False


class Tracker(BaseLogger):
    """The logger a job uses: JSONL always, MLflow when enabled (rank 0 only)."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool,
        is_master: bool,
        uri: str = "",
        experiment: str = "distinctad",
        run_name: str = "run",
        parent_run_id: str = "",
        system_metrics: bool = True,
    ):
        self.is_master = is_master
        self.jsonl = JsonlLogger(Path(run_dir) / "metrics.jsonl") if is_master else None
        self.backend: BaseLogger = NullLogger()
        if is_master and enabled:
            self.backend = MLflowLogger(
                tracking_uri(uri), experiment, run_name, self.jsonl, parent_run_id, system_metrics=system_metrics
            )
        self.run_id = self.backend.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        self.backend.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.jsonl is not None:
            self.jsonl.log_metrics(metrics, step)
        self.backend.log_metrics(metrics, step)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.backend.log_artifact(path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.backend.log_text(text, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.backend.set_tags(tags)

    def log_dataset(self, record: dict | None) -> None:
        self.backend.log_dataset(record)

    def close(self, status: str = "FINISHED") -> None:
        self.backend.close(status)


class ParentRun:
    """An MLflow run that groups child runs (a pipeline, an ablation grid); rank 0 only, never fatal.

    It uses the client API, not the fluent one, so child jobs can start their own (fluent) runs while it is open.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        enabled: bool = True,
        resume_run_id: str = "",
        parent_run_id: str = "",
    ):
        self.run_id = ""
        self.experiment_id = ""
        self.client = None
        self.resumed = False
        if not enabled or mlflow is None:
            return
        try:
            uri = tracking_uri(uri)
            if uri.startswith(("http://", "https://")) and not _http_reachable(uri):
                raise ConnectionError(f"{uri} is unreachable")
            mlflow.set_tracking_uri(uri)
            self.client = mlflow.MlflowClient(uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                artifacts = None if uri.startswith("http") else Path("mlartifacts").resolve().as_uri()
                exp_id = self.client.create_experiment(experiment, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
            else:
                exp_id = exp.experiment_id
            self.experiment_id = exp_id
            if resume_run_id and self._resumable(resume_run_id, exp_id):
                # a re-run of the same pipeline: the same parent, not a second one with the same numbers
                self.run_id, self.resumed = resume_run_id, True
                self.client.update_run(resume_run_id, status="RUNNING")
            else:
                tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
                self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        except Exception as e:  # noqa: BLE001
            self.client = None
            warn_once(
                logger,
                f"MLflow parent run not created ({str(e).splitlines()[0] if str(e) else e}); "
                "child runs are logged without a parent",
            )

    def _resumable(self, run_id: str, exp_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - deleted, another store: start a new parent
            return False
        return run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active"

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> None:
        if self.client is None:
            return
        try:
            getattr(self.client, fn)(self.run_id, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            warn_once(logger, f"MLflow parent run: {fn} failed ({str(e).splitlines()[0] if str(e) else e})")

    def log_params(self, params: dict[str, Any]) -> None:
        if self.resumed:  # params cannot change; a resumed parent keeps the first launch's
            return
        for k, v in params.items():
            self._call("log_param", k, str(v)[:6000])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for k, v in metrics.items():
            self._call("log_metric", metric_name(k), float(v), step=step)

    def set_description(self, markdown: str) -> None:
        """The run's description in the UI (the results table, with its notes)."""
        self._call("set_tag", DESCRIPTION_TAG, markdown[:60000])

    def log_configs(self, metric: str, values: dict[str, float]) -> None:
        """One metric, one value per configuration, as one series ``<metric>`` with step = the configuration's
        position (listed in the ``configs`` tag): one chart in the parent run compares them all."""
        for step, value in enumerate(values.values()):
            self._call("log_metric", metric_name(metric), float(value), step=step)
        self._call("set_tag", "configs", ", ".join(f"step {i} = {c}" for i, c in enumerate(values)))

    def log_dataset(self, record: dict | None, run_id: str = "") -> None:
        """Log a shard set as an input of this run (or of ``run_id``, e.g. a child run that has ended)."""
        if record is None or self.client is None or not (run_id or self.run_id):
            return
        try:
            from mlflow.entities import DatasetInput, InputTag

            ds = shard_dataset(record)._to_mlflow_entity()
            tag = InputTag(key="mlflow.data.context", value=record["context"])
            self.client.log_inputs(run_id or self.run_id, datasets=[DatasetInput(dataset=ds, tags=[tag])])
        except Exception as e:  # noqa: BLE001
            warn_once(logger, f"MLflow parent run: log_inputs failed ({str(e).splitlines()[0] if str(e) else e})")

    def adopt(self, child_run_id: str) -> None:
        """Make an existing run (a reused step's) a child of this one."""
        if self.client is None or not child_run_id or child_run_id == self.run_id:
            return
        try:
            self.client.set_tag(child_run_id, "mlflow.parentRunId", self.run_id)
        except Exception as e:  # noqa: BLE001
            warn_once(
                logger, f"MLflow parent run: cannot adopt {child_run_id} ({str(e).splitlines()[0] if str(e) else e})"
            )

    def link(self) -> str:
        """The parent's page in the UI, relative to the server root (see :func:`ui_url`)."""
        return ui_url("", self.experiment_id, self.run_id) if self.run_id else ""

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._call("log_artifact", str(path), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        self._call("set_terminated", status)
