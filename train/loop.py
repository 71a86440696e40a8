"""The training loop every job shares: engine, tracking, checkpoint/resume, non-finite-loss guard.

A job supplies a :class:`Task` (what the model is, what a batch is, what the loss is); :func:`fit` does the rest.
The data position (epoch, micro-batch within the epoch) is part of the checkpoint, and a task's ``batches`` must be
a deterministic function of (seed, epoch, rank), so a resumed run sees exactly the batches the uninterrupted run
would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from distinctad.data.atomic import atomic_write_json
from distinctad.train import checkpoint
from distinctad.train import distributed as D
from distinctad.train.config import config_hash, flatten, save_config, to_dict
from distinctad.train.engine import build_engine
from distinctad.train.params import DeepSpeedArgs, RunArgs, TrackingArgs, TrainArgs
from distinctad.train.tracking import Tracker

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


class Task(Protocol):
    def build_model(self) -> torch.nn.Module: ...

    def batches(self, epoch: int, skip: int) -> Iterator[Any]:
        """This rank's micro-batches of ``epoch``, starting after the first ``skip`` of them."""

    def loss(self, engine, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward pass: the loss to back-propagate and extra scalars to log (local to this rank)."""

    def evaluate(self, engine, tracker: Tracker, step: int) -> dict[str, float]:
        """Held-out metrics (collective: called on every rank)."""

    def samples_in(self, batch: Any) -> int: ...


@dataclasses.dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    samples_seen: int = 0
    nonfinite_skipped: int = 0


def engine_dtype(engine) -> torch.dtype:
    """The dtype the engine's module computes in (inputs must match it)."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(task: Task, cfg: Any, *, job: str) -> dict[str, Any]:
    """Train ``task`` as ``cfg`` (a job config with run/train/deepspeed/tracking sections) says; collective."""
    run: RunArgs = cfg.run
    train: TrainArgs = cfg.train
    ds: DeepSpeedArgs = cfg.deepspeed
    track: TrackingArgs = cfg.tracking
    run_dir = Path(run.out_dir)
    ckpt_dir = run_dir / "checkpoints"
    if D.is_master():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    D.barrier()

    seed_everything(run.seed)
    model = task.build_model()
    engine, ds_cfg = build_engine(model, train, ds)
    state = TrainState()
    resume_from = checkpoint.find_resume(run.resume, ckpt_dir)
    if resume_from is not None:
        client = checkpoint.load(engine, *resume_from)
        state = TrainState(**{k: client[k] for k in dataclasses.asdict(state) if k in client})
        if client.get("config_hash") != config_hash(cfg):
            logger.warning("resuming with a config that differs from the checkpoint's (see config.yaml there)")

    tracker = Tracker(run_dir, enabled=track.enabled, is_master=D.is_master(), uri=track.uri,
                      experiment=track.experiment, run_name=run.name, parent_run_id=track.parent_run_id)
    tracker.set_tags({"job": job, "resumed_from_step": str(state.step)})
    tracker.log_params({**flatten(to_dict(cfg)), "world_size": D.get_world_size()})
    if D.is_master():
        atomic_write_json(run_dir / "ds_config.json", ds_cfg)
        tracker.log_artifact(run_dir / "config.yaml")
        tracker.log_artifact(run_dir / "ds_config.json")

    status = "FAILED"
    try:
        result = _train(task, engine, cfg, state, tracker, ckpt_dir)
        status = "FINISHED"
        return result
    finally:
        tracker.close(status)


def _train(task: Task, engine, cfg: Any, state: TrainState, tracker: Tracker, ckpt_dir: Path) -> dict[str, Any]:
    train: TrainArgs = cfg.train
    bad_in_a_row = 0
    start_step = state.step
    window_loss: list[float] = []
    window_extra: dict[str, list[float]] = {}
    t_last, samples_last = time.perf_counter(), state.samples_seen
    val: dict[str, float] = {}

    def save() -> None:
        client = {**dataclasses.asdict(state), "config_hash": config_hash(cfg)}
        checkpoint.save(engine, ckpt_dir, state.step, client, cfg, train.keep_checkpoints)

    stopped_early = False
    while state.step < train.max_steps and not stopped_early:
        seen_in_epoch = 0
        for batch in task.batches(state.epoch, state.micro_in_epoch):
            seen_in_epoch += 1
            loss, extra = task.loss(engine, batch)
            state.micro_in_epoch += 1
            if D.any_rank(not bool(torch.isfinite(loss.detach()).all())):
                bad_in_a_row += 1
                state.nonfinite_skipped += 1
                logger.warning("non-finite loss at step %d (micro-batch %d of epoch %d): step skipped (%d in a row)",
                               state.step, state.micro_in_epoch, state.epoch, bad_in_a_row)
                tracker.log_metrics({"train/nonfinite_skipped": state.nonfinite_skipped}, step=state.step)
                if bad_in_a_row >= train.max_bad_steps:
                    raise NonFiniteLossError(
                        f"{bad_in_a_row} non-finite losses in a row at step {state.step}; stopping. The last good "
                        f"checkpoint is {ckpt_dir / (checkpoint.latest_tag(ckpt_dir) or '(none yet)')}")
                continue
            bad_in_a_row = 0
            boundary = engine.is_gradient_accumulation_boundary()
            engine.backward(loss)
            engine.step()
            state.samples_seen += task.samples_in(batch) * D.get_world_size()
            window_loss.append(float(loss.detach()))
            for k, v in extra.items():
                window_extra.setdefault(k, []).append(float(v))
            if not boundary:
                continue
            state.step += 1

            if state.step % train.log_every == 0 or state.step == train.max_steps:
                now = time.perf_counter()
                metrics = {"train/loss": D.all_reduce_mean(sum(window_loss) / len(window_loss)),
                           "train/lr": engine.get_lr()[0],
                           "train/samples_per_s": (state.samples_seen - samples_last) / max(now - t_last, 1e-9),
                           "train/epoch": state.epoch}
                for k, vs in window_extra.items():
                    metrics[f"train/{k}"] = D.all_reduce_mean(sum(vs) / len(vs))
                tracker.log_metrics(metrics, step=state.step)
                logger.info("step %d/%d | loss %.4f | lr %.2e | %.1f samples/s", state.step, train.max_steps,
                            metrics["train/loss"], metrics["train/lr"], metrics["train/samples_per_s"])
                window_loss, window_extra = [], {}
                t_last, samples_last = now, state.samples_seen

            last = state.step >= train.max_steps
            if train.eval_every and state.step % train.eval_every == 0 and not last:
                val = _evaluate(task, engine, tracker, state.step)
            stop_now = train.stop_after and state.step - start_step >= train.stop_after
            if last or stop_now or (train.ckpt_every and state.step % train.ckpt_every == 0):
                save()
            if stop_now and not last:
                logger.info("stopping after %d steps of this launch (train.stop_after)", train.stop_after)
                stopped_early = True
                break
            if last:
                break
        else:
            if seen_in_epoch == 0 and state.micro_in_epoch == 0:
                raise RuntimeError(f"epoch {state.epoch} yielded no batch on rank {D.get_rank()}: too little data "
                                   "for this batch size and world size")
            state.epoch += 1
            state.micro_in_epoch = 0

    if state.step >= train.max_steps:
        val = _evaluate(task, engine, tracker, state.step)
    summary = {"step": state.step, "epoch": state.epoch, "samples_seen": state.samples_seen,
               "nonfinite_skipped": state.nonfinite_skipped, "world_size": D.get_world_size(),
               "finished": state.step >= train.max_steps, **val}
    if D.is_master():
        atomic_write_json(Path(cfg.run.out_dir) / "summary.json", summary)
        logger.info("summary: %s", json.dumps(summary))
    return summary


def _evaluate(task: Task, engine, tracker: Tracker, step: int) -> dict[str, float]:
    engine.eval()
    with torch.no_grad():
        metrics = task.evaluate(engine, tracker, step)
    engine.train()
    metrics = {k if k.startswith(("val/", "eval/")) else f"val/{k}": v for k, v in metrics.items()}
    finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    tracker.log_metrics(finite, step=step)
    if finite:
        logger.info("eval at step %d: %s", step, " | ".join(f"{k} {v:.4g}" for k, v in finite.items()))
    return finite
