"""Trivial job config: dataclasses only (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from distinctad.train.core.params import DeepSpeedArgs, RunArgs, TrackingArgs, TrainArgs


@dataclass
class TrivialModelArgs:
    in_dim: int = 16
    """Input features."""
    hidden: int = 64
    """Hidden width of the MLP."""
    n_samples: int = 512
    """Size of the fixed synthetic regression set."""
    noise: float = 0.01
    """Label noise of the synthetic set."""


@dataclass
class TrivialJob:
    run: RunArgs = field(default_factory=RunArgs)
    """Run identity, output directory, seed, resume."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """Optimisation, logging and checkpoint cadence."""
    deepspeed: DeepSpeedArgs = field(default_factory=DeepSpeedArgs)
    """DeepSpeed JSON, ZeRO stage, precision."""
    tracking: TrackingArgs = field(default_factory=TrackingArgs)
    """MLflow tracking."""
    model: TrivialModelArgs = field(default_factory=TrivialModelArgs)
    """The trivial MLP and its data."""
