"""Recall@k/N (AutoAD-II): can a prediction be told apart from its neighbours' ground truth?

For each movie, windows of N consecutive ground-truth ADs start every ``stride`` ADs (default N/2); only full
windows count and windows never cross movies, so a movie with fewer than N ADs contributes none. Windows are cut
on the ground truth, whatever was predicted: a window that holds an AD without prediction (allowed missing
predictions) is skipped and counted, never closed up over the gap. In a window, prediction i is
scored against all N ground truths; it is a hit when its own GT i ranks in the top k. A window scores its hit
rate; the report gives the mean over all windows and the unweighted mean over movies (each movie = the mean of
its windows).

Tie rule (AutoAD-II's ``torch.topk`` breaks ties arbitrarily; we make it deterministic and pessimistic): the rank
of GT i for prediction i is ``1 + #{j: s_ij > s_ii} + #{j != i: s_ij == s_ii}``, i.e. ties count against the
prediction. A prediction equally similar to two identical GTs therefore misses at k=1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from distinctad.eval.similarity import SimilarityBackend

TIE_RULE = "ties count against: rank = 1 + #(others more similar) + #(others equally similar)"
WINDOW_RULE = (
    "windows of N consecutive ground-truth ADs; a window holding an AD without prediction is skipped, not closed up"
)


def window_starts(num_items: int, window: int, stride: int | None = None) -> list[int]:
    """Start indices of the full windows of ``window`` items, every ``stride`` (default ``window // 2``)."""
    if window < 1:
        raise ValueError(f"window N must be >= 1, got {window}")
    stride = default_stride(window) if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return list(range(0, num_items - window + 1, stride))


def default_stride(window: int) -> int:
    """N/2, as AutoAD-II (at least 1)."""
    return max(window // 2, 1)


def paired_ranks(sim: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of GT i among all GTs for prediction i, ties counting against.

    Args:
        sim: (N, N) similarities, row = prediction, column = ground truth.

    Returns:
        (N,) integer ranks.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got shape {sim.shape}")
    diag = np.diag(sim)[:, None]  # (N, 1)
    greater = (sim > diag).sum(1)
    equal_others = (sim == diag).sum(1) - 1  # the diagonal always equals itself
    return 1 + greater + equal_others


@dataclass
class RecallResult:
    """Recall@k/N as fractions in [0, 1] (``None`` where no window exists).

    Attributes:
        ks: the k values.
        window: N.
        stride: window stride.
        mean_over_windows: k -> mean hit rate over all windows of all movies.
        mean_over_movies: k -> unweighted mean over movies that have at least one window.
        per_movie: movie -> {"windows": scored, "windows_skipped": skipped, k: mean hit rate or None}.
        num_windows: windows scored over all movies.
        num_skipped: windows skipped because they hold an AD without prediction.
        short_movies: movies with fewer than N ground-truth ADs (no window at all).
        tied_text_windows: scored windows in which two ground truths have the same text (their ADs tie, so even a
            perfect prediction misses at small k).
        per_item: movie -> k -> per AD (in the movie's order) the mean hit over the scored windows that hold it,
            None for an AD in no scored window; the mean over a window's ADs is that window's hit rate, so these
            are the per-AD scores a paired bootstrap resamples.
    """

    ks: tuple[int, ...]
    window: int
    stride: int
    mean_over_windows: dict[int, float | None] = field(default_factory=dict)
    mean_over_movies: dict[int, float | None] = field(default_factory=dict)
    per_movie: dict[str, dict] = field(default_factory=dict)
    num_windows: int = 0
    num_skipped: int = 0
    short_movies: list[str] = field(default_factory=list)
    tied_text_windows: int = 0
    per_item: dict[str, dict[int, list[float | None]]] = field(default_factory=dict)


def recall_at_k(
    movies: Mapping[str, tuple[Sequence[str | None], Sequence[str]]],
    backend: SimilarityBackend,
    ks: int | Sequence[int] = (5,),
    window: int = 16,
    stride: int | None = None,
    progress: bool | None = None,
) -> RecallResult:
    """Recall@k/N over movies.

    Args:
        movies: movie -> (predictions, ground truths), aligned and in AD order: all of the movie's ground truth,
            with ``None`` as the prediction of an AD that has none (windows holding one are skipped).
        backend: similarity backend (its ``similarity`` is called once per window).
        ks: one k or several (all computed from the same similarity matrices).
        window: N, ADs per window.
        stride: window stride; ``None`` = N/2.
        progress: tqdm bar over windows (``None``: only on a terminal).

    Returns:
        A :class:`RecallResult`.
    """
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1, got {ks}")
    stride = default_stride(window) if stride is None else stride
    plan = []
    result = RecallResult(ks=ks, window=window, stride=stride)
    for movie, (preds, refs) in movies.items():
        if len(preds) != len(refs):
            raise ValueError(f"movie {movie!r}: {len(preds)} predictions but {len(refs)} ground truths")
        starts = window_starts(len(refs), window, stride)
        if not starts:
            result.short_movies.append(movie)
        complete = [s for s in starts if all(p is not None for p in preds[s : s + window])]
        plan.append((movie, preds, refs, complete, len(starts) - len(complete)))
    needed = (t for _, p, r, starts, _ in plan for s in starts for t in (*p[s : s + window], *r[s : s + window]))
    backend.prepare(list(dict.fromkeys(needed)))

    hits_all: dict[int, list[float]] = {k: [] for k in ks}
    total = sum(len(s) for _, _, _, s, _ in plan)
    with tqdm(total=total, desc=f"R@k/{window} windows", disable=None if progress is None else not progress) as bar:
        for movie, preds, refs, starts, skipped in plan:
            movie_hits: dict[int, list[float]] = {k: [] for k in ks}
            item_hits = {k: np.zeros(len(refs)) for k in ks}
            item_windows = np.zeros(len(refs))
            for s in starts:
                gts = refs[s : s + window]
                result.tied_text_windows += len(set(gts)) < len(gts)
                ranks = paired_ranks(backend.similarity(preds[s : s + window], gts))
                item_windows[s : s + window] += 1
                for k in ks:
                    movie_hits[k].append(float(np.mean(ranks <= k)))
                    item_hits[k][s : s + window] += ranks <= k
                bar.update(1)
            result.per_item[movie] = {
                k: [float(h / c) if c else None for h, c in zip(item_hits[k], item_windows)] for k in ks
            }
            entry: dict = {"windows": len(starts), "windows_skipped": skipped}
            for k in ks:
                entry[k] = float(np.mean(movie_hits[k])) if starts else None
                hits_all[k].extend(movie_hits[k])
            result.per_movie[movie] = entry
            result.num_skipped += skipped
    result.num_windows = total
    for k in ks:
        result.mean_over_windows[k] = float(np.mean(hits_all[k])) if total else None
        movie_means = [e[k] for e in result.per_movie.values() if e[k] is not None]
        result.mean_over_movies[k] = float(np.mean(movie_means)) if movie_means else None
    return result
