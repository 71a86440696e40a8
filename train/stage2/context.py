"""Which text context the captioner sees when it generates: ``gt``, ``predicted`` or ``none``.

- ``gt`` (what AD papers commonly report): each clip sees the K ground-truth ADs before it — the window's stored
  context, then the window's own earlier ADs (:func:`~distinctad.train.models.captioner.prepare_batch`).
- ``predicted`` (what a real description track can use): windows of a movie are generated one after another and
  each window's context is the last K ADs the model generated for the windows before it (autoregressive across
  windows); the clips of one window are generated together, so they do not see each other's ADs. No ground-truth
  text reaches the model.
- ``none``: no text context at all.

K is the captioner's ``context_ads``. Under several ranks, ``predicted`` chains the windows each rank reads (a movie
split over ranks restarts its chain on each).
"""

from __future__ import annotations

from typing import Any

CONTEXT_MODES = ("gt", "predicted", "none")


def check_mode(mode: str) -> str:
    if mode not in CONTEXT_MODES:
        raise ValueError(f"context must be one of {', '.join(CONTEXT_MODES)}, got {mode!r}")
    return mode


def with_context(batch: dict[str, Any], mode: str, histories: dict[str, list[str]], k: int) -> dict[str, Any]:
    """A shallow copy of a window batch whose text context follows ``mode``.

    Args:
        batch: collated window batch (``sentences`` (B, N), ``context`` (B, ·), ``movie`` (B,)).
        mode: a :data:`CONTEXT_MODES` name; ``gt`` returns the batch unchanged.
        histories: movie -> ADs generated so far (``predicted``), oldest first.
        k: ADs of context (the captioner's ``context_ads``).
    """
    check_mode(mode)
    if mode == "gt":
        return batch
    out = dict(batch)
    # blank sentences: prepare_batch would otherwise feed the window's earlier ground-truth ADs as context
    out["sentences"] = [["" for _ in row] for row in batch["sentences"]]
    if mode == "none" or k <= 0:
        out["context"] = [[] for _ in batch["sentences"]]
    else:
        out["context"] = [list(histories.get(m, [])[-k:]) for m in batch["movie"]]
    return out


def one_window(batch: dict[str, Any], b: int) -> dict[str, Any]:
    """Window ``b`` of a collated batch as a batch of one."""
    return {k: (v[b : b + 1] if hasattr(v, "__getitem__") and not isinstance(v, str) else v) for k, v in batch.items()}


def generate_candidates(
    model, tokenizer, batch: dict[str, Any], gen, num_return: int = 1, **generate_kwargs
) -> list[list[list[str]]]:
    """The ``num_return`` best beams of every valid clip: per window, per valid clip, texts best first.

    ``num_return`` must not exceed ``gen.num_beams`` (HF ``num_return_sequences``).
    """
    import torch

    from distinctad.train.models.captioner import prepare_batch

    param = next(model.parameters())
    prepared = {  # floating inputs in the model's dtype (a bf16 model for describe --precision bf16)
        k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
        for k, v in prepare_batch(batch, tokenizer, model.cfg).items()
    }
    with torch.no_grad():
        ids = model.generate_ids(prepared, gen, num_return_sequences=num_return, **generate_kwargs)
    texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    grouped, at = [], 0
    for count in prepared["clip_mask"].bool().sum(dim=1).tolist():
        grouped.append([texts[(at + i) * num_return : (at + i + 1) * num_return] for i in range(count)])
        at += count
    return grouped


def generate_in_context(
    model, tokenizer, batch: dict[str, Any], gen, mode: str, histories: dict[str, list[str]], **generate_kwargs
) -> list[list[str]]:
    """One AD per valid clip under ``mode``; ``predicted`` goes window by window and appends each window's ADs to
    ``histories[movie]`` before the next one. Returns, per window, the ADs of its valid clips."""
    k = model.cfg.context_ads
    if mode != "predicted":
        ctx = with_context(batch, mode, histories, k)
        return [[c[0] for c in clips] for clips in generate_candidates(model, tokenizer, ctx, gen, **generate_kwargs)]
    out = []
    for b in range(len(batch["movie"])):
        single = with_context(one_window(batch, b), mode, histories, k)
        texts = [c[0] for c in generate_candidates(model, tokenizer, single, gen, **generate_kwargs)[0]]
        histories.setdefault(batch["movie"][b], []).extend(texts)
        out.append(texts)
    return out
