"""Distinctiveness metrics: does a system say what is new in each clip, or repeat its neighbours? (DESIGN §10)

Computed per movie on the ADs in movie order (``ad_index``), for the predictions and, as the reference a system
should be compared with, for the ground truth of the same ADs. With x_1..x_n the ADs of one movie:

- **neighbour repetition** ``Rep@k`` = mean over i ≥ 2 of mean_{j = max(1, i−k)}^{i−1} sim(x_i, x_j), ×100:
  how similar an AD is to the k ADs before it. ``sim`` is the lexical similarity of the Recall@k/N backend
  (mean of unigram and bigram F1, in [0, 1]) by default, or the Recall@k/N backend itself when chosen.
  ``Rep@k ratio`` = Rep@k(predictions) / Rep@k(ground truth): 1 repeats as much as the narrators, > 1 more.
- **consecutive duplicates** ``Dup@k`` = share (×100) of ADs i ≥ 2 whose normalised text (lower-cased word
  tokens, punctuation dropped) equals that of one of the k ADs before it.
- **distinct-n** ``Distinct-n/N`` (n = 1, 2): the movie is cut into windows of N consecutive ADs (stride N, the
  last one shorter, as the window shards); per window, #distinct n-grams / #n-grams over its ADs' word tokens
  (n-grams never cross ADs); mean over the windows that hold at least one n-gram, ×100.
- **distinctive-word recall** ``DW-Recall/N``: in the same windows of the *ground truth*, D_i = the distinctive
  words of AD i (:func:`distinctad.eval.words.distinctive_words`, the L_dist targets' definition); the share of
  D_i that occurs among the prediction's words (:func:`distinctad.eval.words.word_set`); mean over the ADs whose
  D_i is not empty, ×100. (On the ground truth it is 100 by construction, so it has no GT column.)

Overall values pool the ADs (or windows) of all movies; per-movie values use that movie's alone. A movie with a
single AD has no neighbour, so its Rep and Dup are undefined (``None``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from distinctad.eval.similarity import LexicalBackend, SimilarityBackend, lexical_tokens
from distinctad.eval.words import distinctive_words, word_set

NEIGHBOUR_BACKENDS = ("lexical", "recall")
"""``lexical``: the lexical similarity (default); ``recall``: the Recall@k/N similarity backend."""


def names(k: int, n: int) -> dict[str, str]:
    """Report keys for neighbour count k and window N, e.g. ``rep -> "Rep@3"``, ``d1 -> "Distinct-1/16"``."""
    return {
        "rep": f"Rep@{k}",
        "rep_gt": f"Rep@{k} GT",
        "rep_ratio": f"Rep@{k} ratio",
        "dup": f"Dup@{k}",
        "dup_gt": f"Dup@{k} GT",
        "d1": f"Distinct-1/{n}",
        "d1_gt": f"Distinct-1/{n} GT",
        "d2": f"Distinct-2/{n}",
        "d2_gt": f"Distinct-2/{n} GT",
        "dw": f"DW-Recall/{n}",
    }


def _normalised(text: str) -> str:
    return " ".join(lexical_tokens(text))


def neighbour_similarities(texts: Sequence[str], k: int, sim: Callable[[str, list[str]], np.ndarray]) -> list[float]:
    """Per AD i ≥ 2: mean similarity to its ≤ k previous ADs; ``sim(text, others)`` -> (len(others),) array."""
    out = []
    for i in range(1, len(texts)):
        prev = list(texts[max(0, i - k) : i])
        out.append(float(np.mean(sim(texts[i], prev))))
    return out


def duplicate_flags(texts: Sequence[str], k: int) -> list[bool]:
    """Per AD i ≥ 2: its normalised text equals one of its ≤ k previous ADs'."""
    norm = [_normalised(t) for t in texts]
    return [norm[i] in norm[max(0, i - k) : i] for i in range(1, len(norm))]


def windows(num: int, size: int) -> list[range]:
    """Windows of ``size`` consecutive items, stride ``size``, the last one shorter (as the window shards)."""
    return [range(s, min(s + size, num)) for s in range(0, num, size)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """#distinct n-grams / #n-grams over the texts' word tokens (n-grams within each text); None without n-grams."""
    grams = [tuple(t[i : i + n]) for t in map(lexical_tokens, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def distinctive_word_recall(preds: Sequence[str], refs: Sequence[str]) -> list[float | None]:
    """Per AD of one window: share of the ground truth's distinctive words D_i found in the prediction (None: D_i
    empty)."""
    out: list[float | None] = []
    for pred, words in zip(preds, distinctive_words(list(refs)), strict=True):
        said = word_set(pred)
        out.append(sum(w in said for w in words) / len(words) if words else None)
    return out


@dataclass
class MovieScores:
    """Raw per-item values of one movie (fractions, not ×100), pooled over movies for the overall numbers."""

    rep: list[float]
    rep_gt: list[float]
    dup: list[bool]
    dup_gt: list[bool]
    d1: list[float]
    d1_gt: list[float]
    d2: list[float]
    d2_gt: list[float]
    dw: list[float]


def movie_scores(
    preds: Sequence[str], refs: Sequence[str], *, k: int, window: int, sim: Callable[[str, list[str]], np.ndarray]
) -> MovieScores:
    """Every distinctiveness value of one movie; ``preds`` and ``refs`` aligned, in AD order."""
    d: dict[str, list] = {key: [] for key in ("d1", "d1_gt", "d2", "d2_gt", "dw")}
    for w in windows(len(refs), window):
        p, r = [preds[i] for i in w], [refs[i] for i in w]
        for n in (1, 2):
            for key, texts in ((f"d{n}", p), (f"d{n}_gt", r)):
                v = distinct_n(texts, n)
                if v is not None:
                    d[key].append(v)
        d["dw"] += [v for v in distinctive_word_recall(p, r) if v is not None]
    return MovieScores(
        rep=neighbour_similarities(preds, k, sim),
        rep_gt=neighbour_similarities(refs, k, sim),
        dup=duplicate_flags(preds, k),
        dup_gt=duplicate_flags(refs, k),
        **d,
    )


def _mean100(values: Sequence[float]) -> float | None:
    return 100.0 * float(np.mean(values)) if len(values) else None


def summarise(s: MovieScores, k: int, window: int) -> dict[str, float | None]:
    """The report values (×100; the ratio unitless) of pooled raw values."""
    key = names(k, window)
    out = {key[f]: _mean100(getattr(s, f)) for f in ("rep", "rep_gt", "dup", "dup_gt", "d1", "d1_gt", "d2", "d2_gt")}
    out[key["dw"]] = _mean100(s.dw)
    rep, rep_gt = out[key["rep"]], out[key["rep_gt"]]
    out[key["rep_ratio"]] = rep / rep_gt if rep is not None and rep_gt else None
    return out


def similarity_fn(backend: str, recall_backend: SimilarityBackend | None) -> Callable[[str, list[str]], np.ndarray]:
    """``sim(text, others)`` for neighbour repetition: lexical, or the Recall@k/N backend (``backend="recall"``)."""
    if backend not in NEIGHBOUR_BACKENDS:
        raise ValueError(f"neighbour backend must be one of {NEIGHBOUR_BACKENDS}, got {backend!r}")
    if backend == "recall":
        if recall_backend is None:
            raise ValueError("neighbour backend 'recall' needs the Recall@k/N similarity backend")
        return lambda text, others: np.asarray(recall_backend.similarity([text], others), dtype=np.float64)[0]
    lex = LexicalBackend()
    return lambda text, others: np.array([lex.pair(text, o) for o in others], dtype=np.float64)


def distinctiveness(
    movies: dict[str, tuple[Sequence[str], Sequence[str]]],
    *,
    k: int = 3,
    window: int = 16,
    backend: str = "lexical",
    recall_backend: SimilarityBackend | None = None,
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]], str]:
    """Distinctiveness metrics over movies.

    Args:
        movies: movie -> (predictions, ground truths), aligned, in AD order (only ADs that have a prediction).
        k: neighbours looked back at for Rep@k and Dup@k (our default 3, the text context's K).
        window: N, ADs per window for distinct-n and distinctive-word recall (our default: the R@k/N window, 16).
        backend: ``lexical`` or ``recall`` (use ``recall_backend``) for neighbour repetition.
        recall_backend: the Recall@k/N similarity backend.

    Returns:
        ``(overall, per_movie, backend_name)``: report keys from :func:`names` -> value (×100, the ratio unitless;
        None where undefined).

    Raises:
        ValueError: k or window < 1, or an unknown backend.
    """
    if k < 1 or window < 1:
        raise ValueError(f"distinctiveness needs k >= 1 and N >= 1, got k={k} N={window}")
    sim = similarity_fn(backend, recall_backend)
    backend_name = LexicalBackend.name if backend == "lexical" else recall_backend.name  # type: ignore[union-attr]
    pooled = MovieScores(*([] for _ in range(9)))
    per_movie = {}
    for movie, (preds, refs) in movies.items():
        s = movie_scores(preds, refs, k=k, window=window, sim=sim)
        per_movie[movie] = summarise(s, k, window)
        for f in pooled.__dataclass_fields__:
            getattr(pooled, f).extend(getattr(s, f))
    return summarise(pooled, k, window), per_movie, backend_name
