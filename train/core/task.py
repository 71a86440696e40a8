"""What a job gives the shared loop: a :class:`Task`, and a :class:`JobSpec` that names it in the job registry.

:func:`distinctad.train.core.loop.fit` drives a Task: it builds the model (``build_model``), wraps it in DeepSpeed,
iterates ``batches``, back-propagates ``loss``, and calls the hooks below at fixed points. The required methods raise
``NotImplementedError``; every optional hook has a no-op default here, so the loop calls them unconditionally (no
``hasattr`` probing) and a job overrides only what it needs.

A :class:`JobSpec` is one line of the registry in :mod:`distinctad.train.jobs`. Its config class must be
import-light (dataclasses only: ``distinctad-train JOB --help`` imports it and nothing else); the task builder is a
``"module:function"`` string imported only when the job runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the loop, never by --help
    import torch


class Task:
    """One training job as the loop sees it. Subclass it and implement the four required methods."""

    # -- required ----------------------------------------------------------------------------------------------

    def build_model(self) -> torch.nn.Module:
        """The model to train (plain ``nn.Module``; the loop wraps it with DeepSpeed)."""
        raise NotImplementedError

    def batches(self, epoch: int, skip: int) -> Iterator[Any]:
        """This rank's micro-batches of ``epoch``, starting after the first ``skip`` of them.

        Must be a deterministic function of (seed, epoch, rank) so a resumed run sees the batches the uninterrupted
        run would have seen.
        """
        raise NotImplementedError

    def loss(self, engine, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward pass: the loss to back-propagate and extra scalars to log as ``train/<name>`` (local values)."""
        raise NotImplementedError

    def samples_in(self, batch: Any) -> int:
        """Number of samples in ``batch`` on this rank (for samples/s and ``samples_seen``)."""
        raise NotImplementedError

    # -- optional hooks (no-op defaults) -----------------------------------------------------------------------

    def evaluate(self, engine, tracker, step: int) -> dict[str, float]:
        """Held-out metrics, logged as ``val/<name>`` unless already prefixed (collective: every rank calls it)."""
        return {}

    def export(self, engine, step: int) -> None:
        """Write the trained model in its deployable form once training finished (collective; after evaluate)."""

    def params(self) -> dict[str, Any]:
        """Extra MLflow params logged at start-up beside the config (e.g. trainable-parameter counts)."""
        return {}

    def datasets(self) -> list[dict]:
        """What the run reads, as ``distinctad.data.provenance.dataset_record`` dicts, logged as MLflow inputs."""
        return []

    def skipped_samples(self) -> int:
        """Corrupt or unusable samples this rank's reader skipped in this process so far (the loop sums ranks)."""
        return 0

    def sample_ids(self, batch: Any) -> list | None:
        """Ids of the samples in ``batch`` for ``DISTINCTAD_DEBUG_SAMPLES``; ``None``: this task does not record."""
        return None


def scalar_stats(out: Mapping[str, Any], skip: tuple[str, ...] = ("loss",)) -> dict[str, float]:
    """Every scalar a model's forward returned (0-d / one-element tensors, Python numbers), as floats.

    The loop logs them all as ``train/<name>``, so a new statistic of the model shows up without the job naming it.
    Non-scalars (logits, hidden states) and the keys in ``skip`` are left out.
    """
    stats: dict[str, float] = {}
    for key, value in out.items():
        if key in skip or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            stats[key] = float(value)
        elif hasattr(value, "numel") and hasattr(value, "detach") and value.numel() == 1:
            stats[key] = float(value.detach())
    return stats


@dataclass(frozen=True)
class JobSpec:
    """One job of ``distinctad-train``: its name, config, task builder and default YAML (torchtitan's TrainSpec)."""

    name: str
    """The ``JOB`` of ``distinctad-train JOB`` and of ``launch/<name>.sh``."""
    summary: str
    """One line for ``distinctad-train --help``."""
    config: type
    """Top-level config dataclass (run/train/deepspeed/tracking sections plus the job's own); import-light."""
    build_task: str
    """``"module:function"``: ``function(cfg) -> Task`` prepares data and models and returns the task."""
    default_yaml: str
    """The YAML ``launch/<name>.sh`` uses when none is given, relative to the repository root."""

    def task_builder(self) -> Callable[[Any], Task]:
        module, _, func = self.build_task.partition(":")
        return getattr(importlib.import_module(module), func)

    def run(self, cfg: Any) -> dict[str, Any]:
        """Build the task and train it (collective); returns the loop's summary."""
        from distinctad.train.core.loop import fit

        return fit(self.task_builder()(cfg), cfg, job=self.name)
