"""Trivial job config: dataclasses only (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from distinctad.train.core.params import JobConfig


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
class TrivialJob(JobConfig):
    model: TrivialModelArgs = field(default_factory=TrivialModelArgs)
    """The trivial MLP and its data."""
