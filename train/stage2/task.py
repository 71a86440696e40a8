"""Stage-II job: train the DistinctAD captioner on window feature shards, evaluate through the eval harness.

    deepspeed launch/stage2.sh [CONFIG.yaml] [--section.key VALUE ...]

Without ``data.train_shards`` the job generates and shards the embedded SynthMAD default (once, under
``data.synth_dir``). Evaluation generates an AD for every clip of the eval split (sharded over ranks), gathers the
predictions on rank 0 and scores them with :func:`distinctad.eval.evaluate` (captioning metrics + Recall@k/N).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distinctad.data.synth_default import ensure_synthmad
from distinctad.data.wds_pipeline import get_wds_loader
from distinctad.train.core import distributed as D
from distinctad.train.core.task import Task, scalar_stats
from distinctad.train.core.tracking import Tracker
from distinctad.train.models.captioner import DistinctADCaptioner, prepare_batch
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.stage2.config import Stage2Job

logger = logging.getLogger(__name__)


def resolve_data(cfg: Stage2Job) -> None:
    """Fill empty shard paths with the SynthMAD default (rank 0 builds it; the others wait)."""
    if cfg.data.train_shards and cfg.data.eval_shards:
        return
    dirs = None
    if D.is_master():
        dirs = ensure_synthmad(
            cfg.data.synth_dir,
            kinds=("window",),
            movies=cfg.data.synth_movies,
            ads_per_movie=cfg.data.synth_ads_per_movie,
            seed=cfg.data.synth_seed,
            feature_dim=cfg.model.feature_dim,
        )
    dirs = D.broadcast_object(dirs)
    cfg.data.train_shards = cfg.data.train_shards or dirs["window-train"]
    cfg.data.eval_shards = cfg.data.eval_shards or dirs["window-eval"]


def shard_sentences(shards: str) -> list[str]:
    """Every AD sentence in the ``json`` members of window shards (nothing else is decoded)."""
    import tarfile

    from distinctad.data.shardlist import expand_shards
    from distinctad.eval.inputs import EvalInputError, read_shard_references

    sentences: list[str] = []
    for url in expand_shards(shards):
        try:
            sentences += [r.sentence for r in read_shard_references(url)]
        except (EvalInputError, OSError, tarfile.TarError) as e:  # a truncated shard must not stop training
            logger.warning("tokenizer training skips unreadable shard %s (%s)", url, e)
    return sentences


def resolve_tokenizer(cfg: Stage2Job) -> None:
    """Tiny random LLMs have no tokenizer: train a BPE one on the training ADs into the run directory."""
    from distinctad.train.models.llm import TINY_LLMS, train_bpe_tokenizer

    if cfg.model.tokenizer or cfg.model.llm not in TINY_LLMS:
        return
    out = Path(cfg.run.out_dir) / "tokenizer"
    if D.is_master() and not (out / "tokenizer.json").is_file():
        logger.info("training a BPE tokenizer on the training ADs into %s", out)
        train_bpe_tokenizer(shard_sentences(cfg.data.train_shards), vocab_size=2000, out_dir=out)
    D.barrier()
    cfg.model.tokenizer = str(out.resolve())


class Stage2Task(Task):
    """The captioner as a :class:`distinctad.train.core.task.Task`."""

    def __init__(self, cfg: Stage2Job, tokenizer):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.train_data = get_wds_loader(
            cfg.data.train_shards,
            "window",
            cfg.train.micro_batch_size,
            is_train=True,
            num_workers=cfg.data.num_workers,
            resampled=cfg.data.resampled,
            seed=cfg.run.seed,
        )

    def build_model(self) -> torch.nn.Module:
        return DistinctADCaptioner(self.cfg.model, self.tokenizer)

    def batches(self, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        self.train_data.set_epoch(epoch, skip_batches=skip)
        for batch in self.train_data.dataloader:
            yield prepare_batch(batch, self.tokenizer, self.cfg.model)

    def samples_in(self, batch: dict[str, Any]) -> int:
        return int(batch["clip_mask"].shape[0])

    def skipped_samples(self) -> int:
        """Corrupt or unusable windows this rank's reader skipped (the loop sums them over ranks)."""
        return self.train_data.num_skipped

    def loss(self, engine, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        out = engine(**{k: v.to(engine.device) for k, v in batch.items()})
        sync_ema_mean(engine.module)
        return out["loss"], scalar_stats(out)

    def evaluate(self, engine, tracker: Tracker, step: int) -> dict[str, float]:
        if not self.cfg.eval.enabled:
            return {}
        preds = predict(
            engine.module,
            self.tokenizer,
            self.cfg.data.eval_shards,
            self.cfg.eval.generation,
            max_windows=self.cfg.eval.max_windows,
            zero3=engine.zero_optimization_stage() == 3,
        )
        if not D.is_master():
            return {}
        return score(preds, self.cfg, Path(self.cfg.run.out_dir) / "eval" / f"step_{step:08d}", tracker)


def sync_ema_mean(model: torch.nn.Module) -> None:
    """Average the Contextual-EMA running mean μ over ranks, so every replica keeps the same buffer."""
    ema = getattr(model, "ema", None)
    if ema is None or not dist.is_initialized() or D.get_world_size() == 1:
        return
    dist.all_reduce(ema.mu.data)
    ema.mu.data /= D.get_world_size()


@torch.no_grad()
def predict(
    model: DistinctADCaptioner,
    tokenizer,
    shards: str,
    gen: GenerationArgs,
    *,
    max_windows: int = 0,
    zero3: bool = False,
) -> list[dict[str, Any]]:
    """One generated AD per clip of ``shards``; collective: every rank generates its share, all get the union."""
    data = get_wds_loader(shards, "window", gen.batch_size, is_train=False)
    mine: list[dict[str, Any]] = []
    device = next(model.parameters()).device
    windows = 0
    for batch in data.dataloader:
        valid = batch["valid"].bool() & batch["clip_mask"].any(dim=1)
        windows += int(valid.sum())
        over = bool(max_windows) and windows > max_windows
        if not valid.any() or over:
            if zero3 and D.get_world_size() > 1:
                # ZeRO-3 generation is collective: a rank with nothing to say still joins every forward pass.
                batch["clip_mask"][:, 0] = True
                prepared = prepare_batch(batch, tokenizer, model.cfg)
                model.generate(_to(prepared, device), tokenizer, gen, synced_gpus=True)
            continue
        keep = valid.nonzero().flatten().tolist()
        sub = {k: (v[keep] if isinstance(v, torch.Tensor) else [v[i] for i in keep]) for k, v in batch.items()}
        prepared = prepare_batch(sub, tokenizer, model.cfg)
        extra = {"synced_gpus": True} if zero3 and D.get_world_size() > 1 else {}
        texts = model.generate(_to(prepared, device), tokenizer, gen, **extra)
        for b, window_texts in enumerate(texts):
            indices = sub["ad_index"][b][sub["clip_mask"][b].bool()].tolist()
            for ad_index, text in zip(indices, window_texts, strict=True):
                mine.append({"movie": sub["movie"][b], "ad_index": int(ad_index), "text": text})
    return [p for part in D.all_gather_object(mine) for p in part]


def _to(prepared: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in prepared.items()}


def score(preds: list[dict[str, Any]], cfg: Stage2Job, out_prefix: Path, tracker: Tracker | None) -> dict[str, float]:
    """Score predictions with the eval harness; write predictions, report and a samples table (rank 0)."""
    from distinctad.eval import evaluate, write_report
    from distinctad.eval.inputs import read_shard_references
    from distinctad.eval.outputs import write_predictions, write_samples_table

    refs = read_shard_references(cfg.data.eval_shards)
    if cfg.eval.max_windows:
        wanted = {(p["movie"], p["ad_index"]) for p in preds}
        refs = [r for r in refs if (r.movie, r.ad_index) in wanted]
    empty = sum(not p["text"].strip() for p in preds)
    if empty:
        logger.warning("%d of %d generated ADs are empty; they score as empty hypotheses", empty, len(preds))
    # predict() yields exactly one AD per eval clip, so the only "problem" allowed here is an empty generation.
    result = evaluate(
        preds,
        refs,
        metrics=tuple(cfg.eval.metrics),
        recall_k=cfg.eval.recall_k,
        recall_n=cfg.eval.recall_n,
        backend=cfg.eval.backend,
        backend_model=cfg.eval.backend_model or None,
        progress=False,
        allow_missing=bool(empty),
    )
    preds_path = write_predictions(f"{out_prefix}_predictions.jsonl", preds)
    json_path, md_path = write_report(result, f"{out_prefix}_report")
    first = sorted(preds, key=lambda p: (p["movie"], p["ad_index"]))[: cfg.eval.samples_to_log]
    samples_path = write_samples_table(f"{out_prefix}_samples.md", first, refs)
    if tracker is not None:
        for path in (preds_path, json_path, md_path, samples_path):
            tracker.log_artifact(path, "eval")
    return {f"eval/{k}": float(v) for k, v in result.items() if isinstance(v, (int, float))}


def build_task(cfg: Stage2Job) -> Stage2Task:
    """The registry's task builder: SynthMAD default and tokenizer resolved (collective), then the task."""
    from distinctad.train.models.llm import load_tokenizer

    resolve_data(cfg)
    resolve_tokenizer(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.llm)
    return Stage2Task(cfg, tokenizer)
