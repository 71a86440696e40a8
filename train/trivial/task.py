"""The trivial job: a small MLP regression that proves the engine, checkpointing and tracking end to end.

Its data is a fixed synthetic set, identical on every rank, split by a per-epoch seeded permutation, so resumed
and uninterrupted runs see the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from distinctad.train.core import distributed as D
from distinctad.train.core.loop import engine_dtype
from distinctad.train.core.task import Task
from distinctad.train.trivial.config import TrivialJob, TrivialModelArgs


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_dim) -> (B,)
        return self.net(x).squeeze(-1)


def make_data(args: TrivialModelArgs, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 12345)
    x = torch.randn(args.n_samples, args.in_dim, generator=g)
    w = torch.randn(args.in_dim, generator=g)
    y = torch.tanh(x @ w / args.in_dim**0.5) + args.noise * torch.randn(args.n_samples, generator=g)
    return x, y


class TrivialTask(Task):
    """The trivial job as a :class:`~distinctad.train.core.task.Task`."""

    def __init__(self, cfg: TrivialJob):
        self.cfg = cfg
        self.x, self.y = make_data(cfg.model, cfg.run.seed)

    def build_model(self) -> nn.Module:
        return MLP(self.cfg.model.in_dim, self.cfg.model.hidden)

    def batches(self, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        mb, world, rank = self.cfg.train.micro_batch_size, D.get_world_size(), D.get_rank()
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.cfg.run.seed * 1000 + epoch))
        mine = perm[rank::world]
        n = len(perm) // world // mb  # equal batch count on every rank
        for i in range(skip, n):
            idx = mine[i * mb : (i + 1) * mb]
            yield self.x[idx], self.y[idx], idx

    def loss(self, engine, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y, _ = batch
        pred = engine(x.to(engine.device, engine_dtype(engine)))
        return nn.functional.mse_loss(pred.float(), y.to(engine.device)), {}

    def samples_in(self, batch) -> int:
        return len(batch[0])

    def sample_ids(self, batch) -> list[int]:
        """Indices into the synthetic set (for DISTINCTAD_DEBUG_SAMPLES)."""
        return batch[2].tolist()

    def evaluate(self, engine, tracker, step: int) -> dict[str, float]:
        pred = engine(self.x.to(engine.device, engine_dtype(engine))).float().cpu()
        return {"mse": float(nn.functional.mse_loss(pred, self.y))}


def build_task(cfg: TrivialJob) -> TrivialTask:
    """The registry's task builder (:mod:`distinctad.train.jobs`)."""
    return TrivialTask(cfg)
