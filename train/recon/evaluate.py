"""Evaluating a recon run: reconstruct every eval AD from its CLIP embedding (:func:`predict`), the teacher-forced
loss (:func:`eval_loss`), and the scored Table A.1 row with predictions, report and samples (:func:`score`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from distinctad.common import atomic_write_json, atomic_write_text
from distinctad.data.annotations import AD
from distinctad.eval.outputs import write_predictions, write_samples_table
from distinctad.train.core import distributed as D
from distinctad.train.core.tracking import Tracker
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.recon.config import ReconJob
from distinctad.train.recon.data import evenly_spaced
from distinctad.train.recon.model import ReconModel, collate
from distinctad.train.recon.table import describe_models, table_a1_markdown

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: ReconModel, tokenizer, ads: Sequence[AD], gen: GenerationArgs, progress: bool = True
) -> list[dict[str, Any]]:
    """Reconstruct every AD of ``ads``; collective: each rank takes a contiguous share, all get the union.

    Returns:
        ``{"movie", "ad_index", "text"}`` per AD of ``ads``, on every rank.
    """
    share = math.ceil(len(ads) / D.get_world_size())
    mine = list(ads[D.get_rank() * share : (D.get_rank() + 1) * share])
    out: list[dict[str, Any]] = []
    kwargs = gen.decoding()
    steps = range(0, len(mine), gen.batch_size)
    for i in tqdm(steps, desc="reconstructing", disable=not (progress and D.is_master())):
        chunk = mine[i : i + gen.batch_size]
        texts = model.reconstruct([a.sentence for a in chunk], tokenizer, **kwargs)
        out += [{"movie": a.movie, "ad_index": a.ad_index, "text": t} for a, t in zip(chunk, texts, strict=True)]
    return [p for part in D.all_gather_object(out) for p in part]


@torch.no_grad()
def eval_loss(model: ReconModel, tokenizer, ads: Sequence[AD], batch_size: int, max_ad_tokens: int = 64) -> float:
    """Teacher-forced reconstruction loss (mean NLL per AD token, <EOS> included) over ``ads``; collective.

    A decoding-free measure of how much of the AD the CLIP embedding lets the frozen LM recover.
    """
    share = math.ceil(len(ads) / D.get_world_size())
    mine = list(ads[D.get_rank() * share : (D.get_rank() + 1) * share])
    device = model.projector.weight.device
    total = torch.zeros(2, dtype=torch.float64, device=D.device())  # (sum of NLL, tokens)
    for i in range(0, len(mine), batch_size):
        batch = collate([a.sentence.strip() for a in mine[i : i + batch_size]], model, tokenizer, max_ad_tokens)
        out = model(**{k: v.to(device) for k, v in batch.items()})
        total += torch.stack([out["loss"].double() * out["num_tokens"], out["num_tokens"].double()]).to(total)
    if D.get_world_size() > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def score(
    preds: list[dict[str, Any]],
    refs: Sequence[AD],
    cfg: ReconJob,
    out_prefix: Path,
    tracker: Tracker | None,
    n_train: int,
    n_trainable: int,
    models: str = "",
    loss: float | None = None,
) -> dict[str, float]:
    """Score reconstructions with the eval harness; write predictions, harness report, Table A.1 and samples.

    Rank 0 only. Files are ``{out_prefix}_predictions.jsonl``, ``_report.*``, ``_table_a1.{json,md}`` and
    ``_samples.md``, each also logged to ``tracker`` when given.

    Args:
        preds: :func:`predict`'s output.
        refs: the eval ADs (ground truth).
        cfg: the job config (metrics, samples to show, the model section named in the row).
        out_prefix: path prefix of the files, e.g. ``<run dir>/eval/step_00000100``.
        tracker: MLflow tracker for the artifacts, or None.
        n_train: training ADs (named in the row's source).
        n_trainable: trainable parameters (the projector).
        models: short name of the frozen parts (default: :func:`describe_models` of ``cfg.model``).
        loss: :func:`eval_loss`, added to the row and the notes when given.

    Returns:
        ``{"eval/<metric>": score}`` (×100).
    """
    from distinctad.eval import evaluate, write_report

    result = evaluate(preds, refs, metrics=tuple(cfg.eval.metrics), recall_k=None, progress=False)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    preds = sorted(preds, key=lambda p: (p["movie"], p["ad_index"]))
    paths = [str(write_predictions(f"{out_prefix}_predictions.jsonl", preds))]
    paths += list(write_report(result, f"{out_prefix}_report"))
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
    row = {
        "projector_input": cfg.model.projector_input,
        "source": f"this run ({models or describe_models(cfg.model)}; {n_train} train → {len(refs)} eval ADs)",
        "metrics": metrics,
        "num_eval_ads": len(refs),
        "trainable_params": n_trainable,
        "clip": f"{cfg.model.clip_model} ({cfg.model.clip_pretrained})",
        "llm": cfg.model.llm,
    }
    if loss is not None:
        row["eval_loss"] = loss
    notes = [f"Only the linear projector trains: {n_trainable:,} parameters; CLIP text tower and LM frozen."]
    if loss is not None:
        notes.append(f"Teacher-forced reconstruction loss on the eval ADs: {loss:.4f} nats per AD token.")
    notes += list(result["meta"].get("notices", []))
    atomic_write_json(f"{out_prefix}_table_a1.json", row)
    atomic_write_text(f"{out_prefix}_table_a1.md", table_a1_markdown([row], notes=notes))
    shown = evenly_spaced(preds, cfg.eval.samples_to_log)
    write_samples_table(f"{out_prefix}_samples.md", shown, refs, column="reconstruction")
    paths += [f"{out_prefix}_table_a1.json", f"{out_prefix}_table_a1.md", f"{out_prefix}_samples.md"]
    if tracker is not None:
        for path in paths:
            tracker.log_artifact(path, "eval")
    logger.info("Table A.1 row written to %s_table_a1.md", out_prefix)
    return {f"eval/{k}": v for k, v in metrics.items()}
