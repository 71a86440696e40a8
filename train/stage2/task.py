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

from distinctad.data.paths import PathProblem, check_dir, check_output_dir, check_run_paths, check_shards
from distinctad.data.provenance import SYNTHETIC_NOTE, synthetic_features
from distinctad.data.synth_default import ensure_synthmad
from distinctad.data.wds_pipeline import get_wds_loader
from distinctad.train.core import distributed as D
from distinctad.train.core.config import ConfigError
from distinctad.train.core.engine import use_pin_memory
from distinctad.train.core.task import Task, scalar_stats
from distinctad.train.core.tracking import Tracker
from distinctad.train.models.captioner import DistinctADCaptioner, prepare_batch
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.stage2.config import Stage2Job
from distinctad.train.stage2.context import CONTEXT_MODES, generate_in_context

logger = logging.getLogger(__name__)


def check_paths(cfg: Stage2Job) -> None:
    """Every path setting, before SynthMAD is built, a tokenizer trained or tracking started.

    Raises:
        ConfigError: ``KEY: PATH: problem``, one line (a missing or empty shard folder, a file where a folder is
            expected, a pattern matching nothing, a model that is neither a folder nor in the local hub cache).
    """
    from distinctad.train.models.llm import TINY_LLMS, resolve_local

    d = cfg.data
    if cfg.eval.context not in CONTEXT_MODES:
        raise ConfigError(f"eval.context: must be one of {', '.join(CONTEXT_MODES)}, got {cfg.eval.context!r}")
    try:
        check_run_paths(cfg)
        if d.train_shards:
            check_shards("data.train_shards", d.train_shards)
        if d.eval_shards:
            check_shards("data.eval_shards", d.eval_shards)
        if not (d.train_shards and d.eval_shards):
            check_output_dir("data.synth_dir", d.synth_dir)
        if cfg.eval.enabled and cfg.eval.backend != "lexical" and cfg.eval.backend_model:
            check_dir("eval.backend_model", cfg.eval.backend_model, "model folder")
    except PathProblem as e:
        raise ConfigError(str(e)) from None
    for key, name in (("model.llm", cfg.model.llm), ("model.tokenizer", cfg.model.tokenizer)):
        if name and name not in TINY_LLMS:
            try:
                resolve_local(name, key)
            except FileNotFoundError as e:
                raise ConfigError(str(e)) from None


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
        self.pin = use_pin_memory(cfg.train.host_memory)

    def build_model(self) -> torch.nn.Module:
        return DistinctADCaptioner(self.cfg.model, self.tokenizer)

    def datasets(self) -> list[dict]:
        """The train and eval window shards as MLflow datasets (source folder, manifest digest, counts)."""
        from distinctad.data.provenance import dataset_record

        records = [dataset_record(self.cfg.data.train_shards, "training")]
        if self.cfg.eval.enabled:
            records.append(dataset_record(self.cfg.data.eval_shards, "evaluation"))
        return [r for r in records if r is not None]

    def batches(self, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        self.train_data.set_epoch(epoch, skip_batches=skip)
        for batch in self.train_data.dataloader:
            prepared = prepare_batch(batch, self.tokenizer, self.cfg.model)  # built here, so pinned here
            yield {k: v.pin_memory() for k, v in prepared.items()} if self.pin else prepared

    def samples_in(self, batch: dict[str, Any]) -> int:
        return int(batch["clip_mask"].shape[0])

    def skipped_samples(self) -> int:
        """Corrupt or unusable windows this rank's reader skipped (the loop sums them over ranks)."""
        return self.train_data.num_skipped

    def loss(self, engine, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        out = engine(**{k: v.to(engine.device, non_blocking=True) for k, v in batch.items()})
        sync_ema_mean(engine.module)
        return out["loss"], scalar_stats(out)

    def evaluate(self, engine, tracker: Tracker, step: int) -> dict[str, float]:
        """Generate for the eval split and score it; corrupt eval samples are skipped, counted and the report marked
        partial (as training skips them), so a finished run is never lost to a bad eval shard."""
        if not self.cfg.eval.enabled:
            return {}
        stats: dict[str, int] = {}
        preds = predict(
            engine.module,
            self.tokenizer,
            self.cfg.data.eval_shards,
            self.cfg.eval.generation,
            max_windows=self.cfg.eval.max_windows,
            zero3=engine.zero_optimization_stage() == 3,
            stats=stats,
            context=self.cfg.eval.context,
        )
        if not D.is_master():
            return {}
        out_prefix = Path(self.cfg.run.out_dir) / "eval" / f"step_{step:08d}"
        return score(preds, self.cfg, out_prefix, tracker, reader_skipped=stats.get("skipped_samples", 0))


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
    stats: dict[str, int] | None = None,
    context: str = "gt",
) -> list[dict[str, Any]]:
    """One generated AD per readable clip of ``shards``; collective: every rank generates its share, all get the union.

    ``context``: the text context the captioner sees (``gt``, ``predicted``, ``none``;
    :mod:`distinctad.train.stage2.context`).

    Corrupt samples and the unreadable rest of a truncated shard are skipped by the reader (logged); ``stats``, when
    given, receives ``skipped_samples``: the windows ``sizes.json`` lists that no rank could read.
    """
    if context == "predicted" and zero3 and D.get_world_size() > 1:
        raise ConfigError("context 'predicted' generates window by window, which ZeRO-3 on several ranks cannot do")
    histories: dict[str, list[str]] = {}  # movie -> ADs generated so far (context 'predicted')
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
        extra = {"synced_gpus": True} if zero3 and D.get_world_size() > 1 else {}
        if context == "gt":
            prepared = prepare_batch(sub, tokenizer, model.cfg)
            texts = model.generate(_to(prepared, device), tokenizer, gen, **extra)
        else:
            texts = generate_in_context(model, tokenizer, sub, gen, context, histories, **extra)
        for b, window_texts in enumerate(texts):
            indices = sub["ad_index"][b][sub["clip_mask"][b].bool()].tolist()
            for ad_index, text in zip(indices, window_texts, strict=True):
                mine.append({"movie": sub["movie"][b], "ad_index": int(ad_index), "text": text})
    parts = D.all_gather_object((mine, windows))
    if stats is not None:  # windows sizes.json promises that no rank could read (the reader logged why)
        stats["skipped_samples"] = max(data.num_samples - sum(n for _, n in parts), 0)
    return [p for part, _ in parts for p in part]


def _to(prepared: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in prepared.items()}


def score(
    preds: list[dict[str, Any]],
    cfg: Stage2Job,
    out_prefix: Path,
    tracker: Tracker | None,
    *,
    reader_skipped: int = 0,
) -> dict[str, float]:
    """Score predictions with the eval harness; write predictions, report and a samples table (rank 0).

    Lenient about the eval shards, as training is about its own: ground truth is read with
    ``read_shard_references(..., skipped=...)``, and ADs of samples the reader could not read (``reader_skipped``
    windows; their ADs have no prediction) are left out of the scores. Then the report is marked partial
    (``meta.partial`` and a notice), the counts are logged as ``eval/skipped_samples`` and ``eval/unscored_ads``,
    and the job goes on. When nothing at all can be scored, one warning says why and only the counts are returned.
    """
    from distinctad.eval import evaluate, write_report
    from distinctad.eval.inputs import EvalInputError, read_shard_references
    from distinctad.eval.outputs import write_predictions, write_samples_table

    problems: list[str] = []
    try:
        refs = read_shard_references(cfg.data.eval_shards, skipped=problems)
    except EvalInputError as e:  # not one readable AD
        problems.append(str(e))
        refs = []
    predicted = {(p["movie"], p["ad_index"]) for p in preds}
    known = {(r.movie, r.ad_index) for r in refs}
    if cfg.eval.max_windows:
        refs = [r for r in refs if (r.movie, r.ad_index) in predicted]
    # predict() yields one AD per clip the reader could read: a ground-truth AD without one was in a skipped sample.
    unscored = [r for r in refs if (r.movie, r.ad_index) not in predicted]
    orphans = [p for p in preds if (p["movie"], p["ad_index"]) not in known]  # its json unreadable to the GT read
    partial = bool(reader_skipped or problems or unscored or orphans)
    counts = {"eval/skipped_samples": float(reader_skipped), "eval/unscored_ads": float(len(unscored) + len(orphans))}
    if partial:
        # The readable ground truth stays whole: with allow_missing the harness scores the matched ADs and cuts
        # Recall@k/N windows on the ground truth, skipping (and counting) windows that lost an AD.
        preds = [p for p in preds if (p["movie"], p["ad_index"]) in known]
        first = problems[0] if problems else "see the reader's warnings above"
        note = (
            f"partial evaluation: {reader_skipped} eval window(s) could not be read (corrupt or truncated shards), "
            f"{len(unscored) + len(orphans)} AD(s) not scored ({len(problems)} unreadable part(s) of the ground "
            f"truth; first: {first})"
        )
        logger.warning("%s", note)
    if not preds or not refs:
        logger.warning("eval at %s: nothing left to score in %s; no report written", out_prefix, cfg.data.eval_shards)
        return {**counts, "eval/partial": 1.0}
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
        allow_missing=bool(empty) or partial,
    )
    if synthetic_features(cfg.data.eval_shards):
        result["meta"].setdefault("notices", []).append(SYNTHETIC_NOTE)
    if partial:
        result["meta"]["partial"] = {
            "skipped_samples": reader_skipped,
            "unscored_ads": len(unscored) + len(orphans),
            "unreadable": problems,
        }
        result["meta"].setdefault("notices", []).append(note)
    preds_path = write_predictions(f"{out_prefix}_predictions.jsonl", preds)
    json_path, md_path = write_report(result, f"{out_prefix}_report")
    first = sorted(preds, key=lambda p: (p["movie"], p["ad_index"]))[: cfg.eval.samples_to_log]
    samples_path = write_samples_table(f"{out_prefix}_samples.md", first, refs)
    if tracker is not None:
        for path in (preds_path, json_path, md_path, samples_path):
            tracker.log_artifact(path, "eval")
    metrics = {f"eval/{k}": float(v) for k, v in result.items() if isinstance(v, (int, float))}
    return {**metrics, **counts, "eval/partial": float(partial)}


def build_task(cfg: Stage2Job) -> Stage2Task:
    """The registry's task builder: paths checked, SynthMAD default and tokenizer resolved (collective), then the
    task."""
    from distinctad.train.models.llm import load_tokenizer

    check_paths(cfg)
    resolve_data(cfg)
    resolve_tokenizer(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.llm)
    return Stage2Task(cfg, tokenizer)
