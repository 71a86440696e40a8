"""The training loop every job shares: engine, tracking, checkpoint/resume, non-finite-loss guard.

A job supplies a :class:`~distinctad.train.core.task.Task` (what the model is, what a batch is, what the loss is,
plus optional hooks); :func:`fit` does the rest.
The data position (epoch, micro-batch within the epoch) is part of the checkpoint, and a task's ``batches`` must be
a deterministic function of (seed, epoch, rank), so a resumed run sees exactly the batches the uninterrupted run
would have seen. How a relaunch resumes when its config or topology differs from the checkpoint's is
:mod:`distinctad.train.core.resume`'s.

Faults it survives: a non-finite loss skips the step (all ranks agree) and ``train.max_bad_steps`` of them in a row
stop the job with :class:`NonFiniteLossError`, the last good checkpoint untouched; corrupt samples are skipped by
the reader and counted (``data/skipped_samples`` in the metrics, ``skipped_samples`` in ``summary.json``, from the
task's ``skipped_samples()`` hook); a tracking server that goes away costs a warning (see ``tracking.py``); a
failed checkpoint write raises :class:`~distinctad.train.core.checkpoint.CheckpointError` with ``latest`` unchanged.

Debug option: ``DISTINCTAD_DEBUG_SAMPLES=1`` appends, for tasks whose ``sample_ids(batch)`` hook returns ids, one line
per micro-batch to ``<run dir>/samples/rank{r}.jsonl``: ``{"launch": first step of this launch, "epoch", "micro"
(0-based within the epoch), "step" (the optimizer step it counts towards), "trained", "ids"}``, to check that a
resumed run sees each sample of an epoch once.

Testing hooks (environment variables, never set outside tests; they fire on rank ``$DISTINCTAD_FAULT_RANK``,
default the last rank):

- ``DISTINCTAD_FAULT_KILL_AT_STEP=n``: that rank kills itself with SIGKILL right after optimizer step ``n`` (before a
  checkpoint of step ``n``), as an OOM killer or a lost node would.
- ``DISTINCTAD_FAULT_NAN_AT_STEPS=a,b,...`` / ``DISTINCTAD_FAULT_INF_AT_STEPS=...``: the loss of the ``a``-th,
  ``b``-th... forward pass of this launch (1-based; with ``grad_accum`` 1 and nothing skipped before, pass ``n`` is
  step ``n``) becomes NaN / +inf on that rank.
- ``DISTINCTAD_FAULT_PAUSE_AT_STEP=n``: rank 0 writes ``<run dir>/paused`` after step ``n`` and waits (at most
  ``DISTINCTAD_FAULT_PAUSE_S`` seconds, default 120) until the file is removed, so a test can break something
  (stop the MLflow server) at a known point of the run.
- ``DISTINCTAD_FAULT_ENOSPC_AT_STEP=n``: see :mod:`distinctad.train.core.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from distinctad.common import atomic_write_json, local_world_size, usable_cores
from distinctad.train.core import checkpoint, resume
from distinctad.train.core import distributed as D
from distinctad.train.core.config import config_hash, flatten, save_config, to_dict
from distinctad.train.core.engine import apply_optimizer_settings, build_ds_config, build_engine
from distinctad.train.core.params import DeepSpeedArgs, RunArgs, TrackingArgs, TrainArgs
from distinctad.train.core.task import Task
from distinctad.train.core.tracking import DESCRIPTION_TAG, Tracker

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


@dataclasses.dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    samples_seen: int = 0
    nonfinite_skipped: int = 0
    skipped_samples: int = 0  # corrupt samples skipped by the readers of all ranks, over all launches


@dataclasses.dataclass
class Faults:
    """The testing hooks of the module docstring, read from the environment once per launch."""

    rank: int = -1
    kill_at_step: int = 0
    nan_at: frozenset[int] = frozenset()
    inf_at: frozenset[int] = frozenset()
    pause_at_step: int = 0
    pause_s: float = 120.0

    @classmethod
    def from_env(cls) -> Faults:
        env = os.environ

        def steps(name: str) -> frozenset[int]:
            return frozenset(int(x) for x in env.get(name, "").split(",") if x.strip())

        return cls(
            rank=int(env.get("DISTINCTAD_FAULT_RANK", D.get_world_size() - 1)),
            kill_at_step=int(env.get("DISTINCTAD_FAULT_KILL_AT_STEP", 0)),
            nan_at=steps("DISTINCTAD_FAULT_NAN_AT_STEPS"),
            inf_at=steps("DISTINCTAD_FAULT_INF_AT_STEPS"),
            pause_at_step=int(env.get("DISTINCTAD_FAULT_PAUSE_AT_STEP", 0)),
            pause_s=float(env.get("DISTINCTAD_FAULT_PAUSE_S", 120)),
        )

    def corrupt_loss(self, loss: torch.Tensor, forward_pass: int) -> torch.Tensor:
        if D.get_rank() != self.rank:
            return loss
        if forward_pass in self.nan_at:
            return loss * float("nan")
        if forward_pass in self.inf_at:
            return loss + float("inf")
        return loss

    def after_step(self, step: int, run_dir: Path) -> None:
        if self.kill_at_step and step == self.kill_at_step and D.get_rank() == self.rank:
            logger.warning("fault injection: rank %d kills itself (SIGKILL) after step %d", D.get_rank(), step)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        if self.pause_at_step and step == self.pause_at_step and D.is_master():
            flag = run_dir / "paused"
            flag.write_text(str(step))
            deadline = time.monotonic() + self.pause_s
            while flag.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            flag.unlink(missing_ok=True)


class SampleRecorder:
    """``DISTINCTAD_DEBUG_SAMPLES=1``: the ids of every micro-batch this rank sees, one JSON line each."""

    def __init__(self, task: Task, run_dir: Path, launch: int):
        self.task = task
        self.enabled = os.environ.get("DISTINCTAD_DEBUG_SAMPLES", "") not in ("", "0")
        self.path = run_dir / "samples" / f"rank{D.get_rank()}.jsonl"
        self.file = None  # opened on the first ids: a task that records none leaves no file behind
        self.launch = launch

    def record(self, batch: Any, state: TrainState, micro: int, trained: bool) -> None:
        if not self.enabled:
            return
        ids = self.task.sample_ids(batch)
        if ids is None:  # this task records no ids
            return
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        row = {
            "launch": self.launch,
            "epoch": state.epoch,
            "micro": micro,
            "step": state.step + 1,
            "trained": trained,
            "ids": list(ids),
        }
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()  # a SIGKILLed rank keeps what it has recorded

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


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
    seed_everything(run.seed)
    model = task.build_model()
    topology = resume.Topology.of_launch(build_ds_config(ds, train), train.micro_batch_size)
    resume_from = checkpoint.find_resume(run.resume, ckpt_dir)
    # Before the engine exists: the checkpoint's topology decides how it loads (resume.py), the same on every rank.
    prepared = resume.prepare(model, cfg, topology, *resume_from) if resume_from is not None else None
    universal = prepared is not None and prepared.plan.mode == resume.UNIVERSAL_MODE
    engine, ds_cfg = build_engine(model, train, ds, load_universal=universal)
    state = TrainState()
    resume_params: dict[str, Any] = {}
    if prepared is not None:
        client = resume.restore(engine, prepared)
        state = TrainState(**{k: client[k] for k in dataclasses.asdict(state) if k in client})
        state.micro_in_epoch, note = resume.rescale_position(state.micro_in_epoch, prepared.saved, topology)
        level, line = resume.summary(prepared, [note] if note else [])
        if line and D.is_master():  # the same on every rank: said once
            logger.log(level, "%s", line)
        # this launch's config is in force for every key: the schedule and optimizer settings too
        logger.info("optimizer settings in force: %s", apply_optimizer_settings(engine, train))
        resume_params = {
            "resume.from": str(prepared.where),
            "resume.step": state.step,
            "resume.mode": prepared.plan.mode,
            "resume.checkpoint_topology": str(prepared.saved),
            "resume.changed_keys": ",".join(k for k, _, _ in prepared.changes) or "(none)",
        }

    threads = D.all_gather_object((torch.get_num_threads(), torch.get_num_interop_threads()))
    if D.is_master():  # every rank's share of the cores (distinctad.common.set_threads), said once
        logger.info(
            "torch threads per rank: intra-op %s, inter-op %s (%d usable cores, %d local ranks, OMP_NUM_THREADS=%s)",
            [t[0] for t in threads],
            [t[1] for t in threads],
            usable_cores(),
            local_world_size(),
            os.environ.get("OMP_NUM_THREADS", "unset"),
        )

    if D.is_master():  # after the resume checks: a refused relaunch leaves the run directory as it was
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    D.barrier()

    tracker = Tracker(
        run_dir,
        enabled=track.enabled,
        is_master=D.is_master(),
        uri=track.uri,
        experiment=track.experiment,
        run_name=run.name,
        parent_run_id=track.parent_run_id,
    )
    tracker.set_tags({"job": job, "resumed_from_step": str(state.step)})
    tracker.log_params(
        {
            **flatten(to_dict(cfg)),
            "world_size": D.get_world_size(),
            "topology.nodes": topology.nodes,
            "topology.zero_stage": topology.zero_stage,
            "topology.precision": topology.precision,
            "threads.intra_op": [t[0] for t in threads],
            **resume_params,
            **task.params(),
        }
    )
    if D.is_master():
        atomic_write_json(run_dir / "ds_config.json", ds_cfg)
        tracker.log_artifact(run_dir / "config.yaml")
        tracker.log_artifact(run_dir / "ds_config.json")
        for record in task.datasets():
            tracker.log_dataset(record)
        if track.parent_run_id:  # the child's description links back to the run that groups it
            tracker.set_tags({DESCRIPTION_TAG: f"Part of parent run `{track.parent_run_id}` (see *Parent run* above)."})

    status = "FAILED"
    try:
        result = _train(task, engine, cfg, state, tracker, ckpt_dir, topology)
        status = "FINISHED"
        return result
    finally:
        tracker.close(status)


def _train(
    task: Task, engine, cfg: Any, state: TrainState, tracker: Tracker, ckpt_dir: Path, topology: resume.Topology
) -> dict[str, Any]:
    train: TrainArgs = cfg.train
    run_dir = Path(cfg.run.out_dir)
    faults = Faults.from_env()
    recorder = SampleRecorder(task, run_dir, launch=state.step)
    bad_in_a_row = 0
    forward_passes = 0
    start_step = state.step
    skipped_before = state.skipped_samples  # earlier launches; the readers count this launch's from 0
    window_loss: list[float] = []
    window_extra: dict[str, list[float]] = {}
    t_last, samples_last = time.perf_counter(), state.samples_seen
    val: dict[str, float] = {}

    def count_skipped() -> None:  # collective
        state.skipped_samples = skipped_before + round(D.all_reduce_mean(task.skipped_samples()) * D.get_world_size())

    def save() -> None:
        count_skipped()
        client = {**dataclasses.asdict(state), "config_hash": config_hash(cfg), "topology": topology.record()}
        checkpoint.save(engine, ckpt_dir, state.step, client, cfg, train.keep_checkpoints)

    timers = {"data": 0.0, "eval": 0.0, "ckpt": 0.0}
    t_start = time.perf_counter()
    stopped_early = False
    try:
        while state.step < train.max_steps and not stopped_early:
            seen_in_epoch = 0
            for batch in _timed(task.batches(state.epoch, state.micro_in_epoch), timers):
                seen_in_epoch += 1
                forward_passes += 1
                loss, extra = task.loss(engine, batch)
                loss = faults.corrupt_loss(loss, forward_passes)
                micro = state.micro_in_epoch
                state.micro_in_epoch += 1
                if D.any_rank(not bool(torch.isfinite(loss.detach()).all())):
                    recorder.record(batch, state, micro, trained=False)
                    bad_in_a_row += 1
                    state.nonfinite_skipped += 1
                    logger.warning(
                        "non-finite loss at step %d (micro-batch %d of epoch %d): step skipped (%d in a "
                        "row, train.max_bad_steps=%d)",
                        state.step + 1,
                        micro,
                        state.epoch,
                        bad_in_a_row,
                        train.max_bad_steps,
                    )
                    tracker.log_metrics({"train/nonfinite_skipped": state.nonfinite_skipped}, step=state.step)
                    if bad_in_a_row >= train.max_bad_steps:
                        last = checkpoint.latest_tag(ckpt_dir)
                        raise NonFiniteLossError(
                            f"{bad_in_a_row} non-finite losses in a row at step {state.step + 1} "
                            f"(train.max_bad_steps={train.max_bad_steps}); stopped. Last good checkpoint: "
                            f"{ckpt_dir / last if last else '(none yet)'}"
                        )
                    continue
                recorder.record(batch, state, micro, trained=True)
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
                faults.after_step(state.step, run_dir)

                if state.step % train.log_every == 0 or state.step == train.max_steps:
                    now = time.perf_counter()
                    metrics = {
                        "train/loss": D.all_reduce_mean(sum(window_loss) / len(window_loss)),
                        "train/lr": engine.get_lr()[0],
                        "train/samples_per_s": (state.samples_seen - samples_last) / max(now - t_last, 1e-9),
                        "train/epoch": state.epoch,
                    }
                    for k, vs in window_extra.items():
                        metrics[f"train/{k}"] = D.all_reduce_mean(sum(vs) / len(vs))
                    count_skipped()
                    metrics["data/skipped_samples"] = state.skipped_samples
                    tracker.log_metrics(metrics, step=state.step)
                    logger.info(
                        "step %d/%d | loss %.4f | lr %.2e | %.1f samples/s",
                        state.step,
                        train.max_steps,
                        metrics["train/loss"],
                        metrics["train/lr"],
                        metrics["train/samples_per_s"],
                    )
                    window_loss, window_extra = [], {}
                    t_last, samples_last = now, state.samples_seen

                last = state.step >= train.max_steps
                if train.eval_every and state.step % train.eval_every == 0 and not last:
                    t0 = time.perf_counter()
                    val = _evaluate(task, engine, tracker, state.step)
                    timers["eval"] += time.perf_counter() - t0
                stop_now = train.stop_after and state.step - start_step >= train.stop_after
                if last or stop_now or (train.ckpt_every and state.step % train.ckpt_every == 0):
                    t0 = time.perf_counter()
                    save()
                    timers["ckpt"] += time.perf_counter() - t0
                if stop_now and not last:
                    logger.info("stopping after %d steps of this launch (train.stop_after)", train.stop_after)
                    stopped_early = True
                    break
                if last:
                    break
            else:
                if seen_in_epoch == 0 and state.micro_in_epoch == 0:
                    raise RuntimeError(
                        f"epoch {state.epoch} yielded no batch on rank {D.get_rank()}: too little "
                        "data for this batch size and world size"
                    )
                state.epoch += 1
                state.micro_in_epoch = 0
    finally:
        recorder.close()

    t_loop = time.perf_counter() - t_start
    step_s = t_loop - timers["data"] - timers["eval"] - timers["ckpt"]
    if state.step >= train.max_steps:
        t0 = time.perf_counter()
        val = _evaluate(task, engine, tracker, state.step)
        timers["eval"] += time.perf_counter() - t0
        task.export(engine, state.step)  # collective; after the last evaluation, so it exports what was scored
    count_skipped()
    if state.skipped_samples:
        logger.warning("%d corrupt or unusable samples were skipped (see the warnings above)", state.skipped_samples)
    summary = {
        "step": state.step,
        "epoch": state.epoch,
        "samples_seen": state.samples_seen,
        "nonfinite_skipped": state.nonfinite_skipped,
        "skipped_samples": state.skipped_samples,
        "world_size": D.get_world_size(),
        "finished": state.step >= train.max_steps,
        "mlflow_run_id": tracker.run_id or "",
        **val,
    }
    # Where this launch's time went (rank 0's view): waiting for data, compute, evaluation, checkpoints.
    summary.update(
        {
            "time/wall_s": time.perf_counter() - t_start,
            "time/data_s": timers["data"],
            "time/step_s": step_s,
            "time/eval_s": timers["eval"],
            "time/ckpt_s": timers["ckpt"],
        }
    )
    if D.is_master():
        atomic_write_json(run_dir / "summary.json", summary)
        logger.info("summary: %s", json.dumps(summary))
    return summary


def _timed(batches: Iterator[Any], timers: dict[str, float]) -> Iterator[Any]:
    """Yield from ``batches``, adding the time spent waiting for each one to ``timers["data"]``."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        timers["data"] += time.perf_counter() - t0
        yield batch


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
