"""``evaluate()``: predictions + ground truth -> one flat metric dict; ``write_report()``: JSON + Markdown.

This is the library API the training job calls after generation and the engine behind ``distinctad-eval``.
It never imports ``distinctad.train``: it scores any system's predictions.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from distinctad.eval.captions import CAPTION_METRICS, MAX_TOKENS, METRIC_NAMES, caption_metrics, check_java
from distinctad.eval.distinctiveness import NEIGHBOUR_BACKENDS, distinctiveness, names
from distinctad.eval.errors import EvalInputError
from distinctad.eval.inputs import (
    DEFAULT_TIME_TOLERANCE,
    GT_DUPLICATE_POLICIES,
    MATCH_BY,
    NUM_EXAMPLES,
    Prediction,
    as_references,
    match,
    parse_prediction,
)
from distinctad.eval.normalize import Normalizer, collapse_whitespace
from distinctad.eval.recall import TIE_RULE, WINDOW_RULE, default_stride, recall_at_k
from distinctad.eval.similarity import SimilarityBackend, build_backend

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("bleu", "meteor", "rouge", "cider")


def recall_name(k: int, n: int) -> str:
    """The metric key, e.g. ``"R@5/16"``."""
    return f"R@{k}/{n}"


def evaluate(
    predictions: Iterable[dict | Prediction],
    references: Iterable[Any],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    recall_k: int | Sequence[int] | None = 5,
    recall_n: int = 16,
    recall_stride: int | None = None,
    backend: str | SimilarityBackend = "lexical",
    backend_model: str | None = None,
    device: str | None = None,
    allow_missing: bool = False,
    normalize: Normalizer | Callable[[str], str] | None = None,
    time_tolerance: float = DEFAULT_TIME_TOLERANCE,
    gt_duplicates: str = "match",
    match_by: str = "ad_index",
    max_tokens: int | None = MAX_TOKENS,
    java_timeout: float | None = None,
    progress: bool | None = None,
    distinct: bool = True,
    distinct_k: int = 3,
    distinct_n: int | None = None,
    neighbour_backend: str = "lexical",
) -> dict:
    """Score predicted ADs against ground truth.

    Args:
        predictions: dicts ``{"movie", "ad_index" | "start"+"end", "text"}`` (or parsed :class:`Prediction` s).
            ``ad_index`` is the AD's 0-based position in its movie after a stable sort of the movie's
            ground-truth ADs by (start, end), not a row number.
        references: ``distinctad.data.annotations.AD`` records or dicts with ``movie``, ``sentence`` and
            ``ad_index`` (or ``start``/``end``).
        metrics: caption metrics among ``bleu``, ``meteor``, ``rouge``, ``cider``, ``spice`` (SPICE is skipped
            with a notice when its Stanford models are absent).
        recall_k: k for Recall@k/N, several k, or ``None`` to skip Recall@k/N.
        recall_n: N, ADs per window.
        recall_stride: window stride; ``None`` = N/2.
        backend: similarity backend for Recall@k/N: a name (``lexical``, ``embedding``, ``bertscore``) or an
            object with ``name``, ``prepare(texts)`` and ``similarity(preds, refs)``.
        backend_model: model directory for the ``embedding`` / ``bertscore`` backends.
        device: torch device for model backends.
        allow_missing: score what matches instead of failing on missing, duplicate, unknown or empty predictions
            (duplicates and unknowns are dropped, missing ADs left out, empty ones scored as empty text).
        normalize: applied to predictions and references before scoring (e.g. a :class:`Normalizer`).
        time_tolerance: seconds, for predictions keyed by start/end.
        gt_duplicates: exact duplicate ground-truth rows (same movie, start, end, text): ``"match"`` keeps each and
            matches them one-to-one in order; ``"drop"`` scores each group once. Reported either way.
        match_by: ``"ad_index"`` or ``"time"``: the key used for predictions that carry both (a disagreement of
            the two is reported either way).
        max_tokens: sentences longer than this many PTB tokens are cut to it before the caption metrics (with a
            notice); ``None`` or 0: never.
        java_timeout: seconds for each Java call (PTB tokenizer, METEOR request, SPICE); ``None``: 300 s plus a
            per-sentence allowance.
        progress: tqdm bars (``None``: only on a terminal).
        distinct: compute the distinctiveness metrics (:mod:`distinctad.eval.distinctiveness`) on the predictions
            and on the ground truth of the same ADs.
        distinct_k: k, previous ADs looked at by ``Rep@k`` and ``Dup@k`` (our default 3, the text context's K).
        distinct_n: N, ADs per window of ``Distinct-n/N`` and ``DW-Recall/N``; ``None`` = ``recall_n``.
        neighbour_backend: similarity of ``Rep@k``: ``"lexical"`` (default) or ``"recall"`` (the Recall@k/N
            backend).

    Returns:
        A flat dict: ``"BLEU-1"`` .. ``"BLEU-4"``, ``"METEOR"``, ``"ROUGE-L"``, ``"CIDEr"``, ``"SPICE"`` (when run),
        ``"R@k/N"`` (mean over windows) and ``"R@k/N movie-mean"``, all ×100, ``None`` where undefined; the
        distinctiveness keys (``"Rep@3"``, ``"Rep@3 GT"``, ``"Rep@3 ratio"``, ``"Dup@3"``, ``"Dup@3 GT"``,
        ``"Distinct-1/16"`` (+ ``GT``), ``"Distinct-2/16"`` (+ ``GT``), ``"DW-Recall/16"``);
        ``"per_movie"``: movie -> the same keys plus ``"ADs"`` and ``"windows"``; ``"per_ad"``: ``"keys"`` (movie,
        ad_index) and, aligned with them, the per-AD scores of the metrics that are means over ADs (``"CIDEr"``,
        ``"ROUGE-L"``, ``"R@k/N"``: ×100, None where an AD has none), for paired bootstraps; ``"meta"``: counts,
        matching summary (GT duplicates included), backend, Recall@k/N window rule and counts, ``notices`` (one line per
        input that makes a score degenerate, with counts) and timings.

    Raises:
        EvalInputError: bad input, or matching problems when ``allow_missing`` is False.
        EvalEnvironmentError: Java or a backend's package/model is missing.
    """
    t_start = time.perf_counter()
    metrics = tuple(dict.fromkeys(m.lower() for m in metrics))
    unknown = set(metrics) - set(CAPTION_METRICS)
    if unknown:
        raise EvalInputError(f"unknown metric(s) {sorted(unknown)}; choose from {', '.join(CAPTION_METRICS)}")
    ks = () if recall_k is None else ((recall_k,) if isinstance(recall_k, int) else tuple(recall_k))
    if any(k < 1 for k in ks) or recall_n < 1 or (ks and max(ks) > recall_n):
        raise EvalInputError(f"Recall@k/N needs 1 <= k <= N, got k={list(ks)} N={recall_n}")
    stride = default_stride(recall_n) if recall_stride is None else recall_stride
    if stride < 1:
        raise EvalInputError(f"recall stride must be >= 1, got {stride}")
    if gt_duplicates not in GT_DUPLICATE_POLICIES:
        raise EvalInputError(f"gt_duplicates must be one of {', '.join(GT_DUPLICATE_POLICIES)}, got {gt_duplicates!r}")
    if match_by not in MATCH_BY:
        raise EvalInputError(f"match_by must be one of {', '.join(MATCH_BY)}, got {match_by!r}")
    if distinct and (distinct_k < 1 or (distinct_n is not None and distinct_n < 1)):
        raise EvalInputError(f"distinctiveness needs k >= 1 and N >= 1, got k={distinct_k} N={distinct_n}")
    if neighbour_backend not in NEIGHBOUR_BACKENDS:
        raise EvalInputError(
            f"neighbour_backend must be one of {', '.join(NEIGHBOUR_BACKENDS)}, got {neighbour_backend!r}"
        )
    # Check Java and build the backend first, so a missing dependency fails in a second, not after METEOR.
    if metrics:
        check_java()
    sim_backend = backend
    if (ks or (distinct and neighbour_backend == "recall")) and isinstance(backend, str):
        sim_backend = build_backend(backend, model=backend_model, device=device)

    preds = [
        p if isinstance(p, Prediction) else parse_prediction(p, f"predictions[{i}]") for i, p in enumerate(predictions)
    ]
    refs = as_references(references)
    matched = match(preds, refs, time_tolerance=time_tolerance, gt_duplicates=gt_duplicates, match_by=match_by)
    problems = matched.problems()
    if problems and not allow_missing:
        raise EvalInputError(
            "predictions do not match the ground truth: "
            + " | ".join(problems)
            + " (fix the predictions, or pass --allow-missing / allow_missing=True)"
        )
    for line in problems:
        logger.warning("allowed: %s", line)
    notices: list[str] = matched.notices()
    for line in notices:
        logger.warning("%s", line)
    num_warned = len(notices)
    if not matched.pairs:
        raise EvalInputError("no prediction matches a ground-truth AD")

    norm = normalize or (lambda s: s)
    hyps = [norm(p.prediction) for p in matched.pairs]
    gts = [norm(p.reference) for p in matched.pairs]
    movies = [p.movie for p in matched.pairs]
    labels = [f"{p.movie!r} ad_index={p.ad_index}" for p in matched.pairs]
    notices += _empty_text_notices(matched.pairs, hyps, gts, labels, normalize is not None)
    result: dict[str, Any] = {}
    per_movie: dict[str, dict[str, Any]] = defaultdict(dict)
    for m in movies:
        per_movie[m]["ADs"] = per_movie[m].get("ADs", 0) + 1
    timings: dict[str, float] = {}
    item_scores: dict[str, list] = {}

    if metrics:
        overall, groups, t, n = caption_metrics(
            gts,
            hyps,
            metrics,
            groups=movies,
            progress=progress,
            labels=labels,
            max_tokens=max_tokens,
            java_timeout=java_timeout,
            item_scores_out=item_scores,
        )
        result.update(overall)
        for m, scores in groups.items():
            per_movie[m].update(scores)
        timings.update(t)
        notices.extend(n)

    backend_name, recall_meta = None, None
    if ks:
        t0 = time.perf_counter()
        # Windows are cut on the ground truth: every GT AD of every movie, None where no prediction matched it.
        text = {(p.movie, p.ad_index): (h, g) for p, h, g in zip(matched.pairs, hyps, gts)}
        by_movie: dict[str, tuple[list[str | None], list[str]]] = {}
        for r in matched.references:
            h, g = text.get((r.movie, r.ad_index), (None, norm(r.sentence)))
            by_movie.setdefault(r.movie, ([], []))
            by_movie[r.movie][0].append(h)
            by_movie[r.movie][1].append(g)
        rec = recall_at_k(by_movie, sim_backend, ks=ks, window=recall_n, stride=stride, progress=progress)
        backend_name = sim_backend.name
        for k in ks:
            name = recall_name(k, recall_n)
            result[name] = _pct(rec.mean_over_windows[k])
            result[f"{name} movie-mean"] = _pct(rec.mean_over_movies[k])
            for m in per_movie:
                per_movie[m][name] = _pct(rec.per_movie[m][k])
        for m in per_movie:
            per_movie[m]["windows"] = rec.per_movie[m]["windows"]
        position = {m: {r.ad_index: i for i, r in enumerate(rs)} for m, rs in _group(matched.references).items()}
        for k in ks:
            item_scores[recall_name(k, recall_n)] = [
                _pct(rec.per_item[p.movie][k][position[p.movie][p.ad_index]]) for p in matched.pairs
            ]
        notices += _recall_notices(rec, ks, recall_n, len(by_movie))
        timings["recall"] = time.perf_counter() - t0
        recall_meta = {
            "N": recall_n,
            "stride": stride,
            "ks": list(ks),
            "windows": rec.num_windows,
            "windows_skipped": rec.num_skipped,
            "window_rule": WINDOW_RULE,
            "movies_without_window": len(rec.short_movies),
            "tied_text_windows": rec.tied_text_windows,
            "tie_rule": TIE_RULE,
        }
    distinct_meta = None
    if distinct:
        t0 = time.perf_counter()
        n_window = recall_n if distinct_n is None else distinct_n
        order = sorted(range(len(matched.pairs)), key=lambda i: (movies[i], matched.pairs[i].ad_index))
        texts: dict[str, tuple[list[str], list[str]]] = {}
        for i in order:
            texts.setdefault(movies[i], ([], []))
            texts[movies[i]][0].append(hyps[i])
            texts[movies[i]][1].append(gts[i])
        overall_d, movies_d, rep_backend = distinctiveness(
            texts, k=distinct_k, window=n_window, backend=neighbour_backend, recall_backend=sim_backend
        )
        result.update(overall_d)
        for m, scores in movies_d.items():
            per_movie[m].update(scores)
        timings["distinctiveness"] = time.perf_counter() - t0
        distinct_meta = {
            "k": distinct_k,
            "N": n_window,
            "neighbour_backend": rep_backend,
            "keys": names(distinct_k, n_window),
        }
    timings["total"] = time.perf_counter() - t_start
    for line in notices[num_warned:]:
        logger.info("%s", line)

    result["per_movie"] = {m: per_movie[m] for m in sorted(per_movie)}
    result["per_ad"] = {"keys": [[p.movie, p.ad_index] for p in matched.pairs], **item_scores}
    result["meta"] = {
        "num_ads": len(matched.pairs),
        "num_movies": len(per_movie),
        "metrics": list(metrics),
        "backend": backend_name,
        "recall": recall_meta,
        "distinctiveness": distinct_meta,
        "matching": matched.summary(),
        "normalization": normalize.describe()
        if isinstance(normalize, Normalizer)
        else (None if normalize is None else repr(normalize)),
        "max_tokens": max_tokens or None,
        "notices": notices,
        "timings_s": timings,
    }
    return result


def _group(refs: Iterable[Any]) -> dict[str, list[Any]]:
    """References by movie, in their order."""
    out: dict[str, list[Any]] = defaultdict(list)
    for r in refs:
        out[r.movie].append(r)
    return out


def _examples(items: Sequence[str]) -> str:
    return ", ".join(items[:NUM_EXAMPLES]) + (", ..." if len(items) > NUM_EXAMPLES else "")


def _empty_text_notices(
    pairs: Sequence[Any], hyps: Sequence[str], gts: Sequence[str], labels: Sequence[str], normalized: bool
) -> list[str]:
    """Ground-truth ADs with empty text, and texts that only the normalisation emptied."""
    out = []
    empty_gt = [i for i, p in enumerate(pairs) if not collapse_whitespace(p.reference)]
    if empty_gt:
        out.append(
            f"{len(empty_gt)} ground-truth AD(s) have empty text; their predictions are scored against an empty "
            f"reference, first: {_examples([labels[i] for i in empty_gt])}"
        )
    if normalized:
        for side, raw, normed in (
            ("prediction", [p.prediction for p in pairs], hyps),
            ("ground-truth AD", [p.reference for p in pairs], gts),
        ):
            gone = [i for i, (r, n) in enumerate(zip(raw, normed)) if collapse_whitespace(r) and not n.strip()]
            if gone:
                out.append(
                    f"{len(gone)} {side}(s) not empty but empty after the normalisation (--replace-names, "
                    f"--lowercase, --strip-punct), scored as empty text, first: "
                    + _examples([f"{labels[i]} {collapse_whitespace(raw[i])[:40]!r}" for i in gone])
                )
    return out


def _recall_notices(rec: Any, ks: Sequence[int], n: int, num_movies: int) -> list[str]:
    """The inputs that make Recall@k/N degenerate or partial, with counts."""
    out = []
    names = ", ".join(recall_name(k, n) for k in ks)
    if rec.num_windows == 0:
        out.append(
            f"{names} undefined (reported as null): no movie has a complete window of N={n} ground-truth ADs "
            f"with predictions ({len(rec.short_movies)} of {num_movies} movies have fewer than {n} ADs, "
            f"{rec.num_skipped} windows hold an AD without prediction)"
        )
    elif rec.short_movies:
        out.append(
            f"R@k/{n}: {len(rec.short_movies)} of {num_movies} movies have fewer than N={n} ground-truth ADs and "
            f"contribute no window (their R@k/{n} is –), first: {_examples([repr(m) for m in rec.short_movies])}"
        )
    if rec.num_skipped:
        out.append(
            f"R@k/{n}: {rec.num_skipped} of {rec.num_windows + rec.num_skipped} ground-truth windows skipped because "
            f"they hold an AD without prediction (--allow-missing); scores are over the {rec.num_windows} complete "
            "windows"
        )
    trivial = [k for k in ks if k >= n]
    if trivial:
        out.append(
            f"{', '.join(recall_name(k, n) for k in trivial)} is 100 by construction (k = N: every ground truth of "
            "the window is in the top k)"
        )
    if rec.tied_text_windows:
        out.append(
            f"R@k/{n}: {rec.tied_text_windows} of {rec.num_windows} windows hold two ground-truth ADs with the same "
            "text; ties count against, so even a perfect prediction of either misses at k=1"
        )
    return out


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def metric_columns(result: dict) -> list[str]:
    """The metric keys of a result, in report order."""
    names = [n for m in CAPTION_METRICS for n in METRIC_NAMES[m] if n in result]
    return names + sorted(k for k in result if k.startswith("R@"))


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def to_markdown(result: dict, title: str = "DistinctAD evaluation") -> str:
    """A Markdown report: overall table, per-movie table, notes."""
    meta = result.get("meta", {})
    cols = metric_columns(result)
    lines = [f"# {title}", ""]
    lines.append(f"{meta.get('num_ads', '?')} ADs over {meta.get('num_movies', '?')} movies. Scores ×100.")
    if meta.get("recall"):
        r = meta["recall"]
        skipped = r.get("windows_skipped", 0)
        lines.append(
            f"R@k/N: {r.get('window_rule', 'windows of N consecutive ADs')}; N={r['N']}, stride {r['stride']}, "
            f"{r['windows']} windows scored, {skipped} skipped; similarity backend: {meta.get('backend')}; "
            f"{r['tie_rule']}. `movie-mean` is the unweighted mean over movies."
        )
    lines += ["", "| Metric | Score |", "|---|---:|"]
    lines += [f"| {c} | {_fmt(result[c])} |" for c in cols]
    movie_cols = [c for c in cols if not c.endswith("movie-mean")]
    per_movie = result.get("per_movie", {})
    if per_movie:
        extra = ["ADs"] + (["windows"] if meta.get("recall") else [])
        lines += ["", "## Per movie", ""]
        lines.append("| Movie | " + " | ".join(extra + movie_cols) + " |")
        lines.append("|---|" + "---:|" * (len(extra) + len(movie_cols)))
        for movie, scores in per_movie.items():
            cells = [_fmt(scores.get(c)) for c in extra + movie_cols]
            lines.append(f"| {movie} | " + " | ".join(cells) + " |")
    lines += _distinct_markdown(result)
    notes = list(meta.get("notices", [])) + list(meta.get("matching", {}).get("problems", []))
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _distinct_markdown(result: dict) -> list[str]:
    """The distinctiveness section: predictions beside the ground truth, overall and per movie."""
    d = result.get("meta", {}).get("distinctiveness")
    if not d:
        return []
    key = d["keys"]
    lines = [
        "",
        "## Distinctiveness",
        "",
        f"Neighbour repetition over the k={d['k']} previous ADs (similarity: {d['neighbour_backend']}); distinct-n "
        f"and distinctive-word recall over windows of N={d['N']} ADs. ×100; the ratio is predictions / ground truth.",
        "",
        "| Metric | Predictions | Ground truth | Ratio |",
        "|---|---:|---:|---:|",
        f"| {key['rep']} (neighbour repetition) | {_fmt(result.get(key['rep']))} | {_fmt(result.get(key['rep_gt']))} "
        f"| {_fmt(result.get(key['rep_ratio']))} |",
        f"| {key['dup']} (consecutive duplicates) | {_fmt(result.get(key['dup']))} | "
        f"{_fmt(result.get(key['dup_gt']))} | |",
    ]
    for n in ("d1", "d2"):
        lines.append(f"| {key[n]} | {_fmt(result.get(key[n]))} | {_fmt(result.get(key[n + '_gt']))} | |")
    lines.append(f"| {key['dw']} (distinctive-word recall) | {_fmt(result.get(key['dw']))} | | |")
    per_movie = result.get("per_movie", {})
    if per_movie:
        cols = [key[c] for c in ("rep", "rep_gt", "rep_ratio", "dup", "dup_gt", "d1", "d1_gt", "d2", "d2_gt", "dw")]
        lines += ["", "### Distinctiveness per movie", "", "| Movie | " + " | ".join(cols) + " |"]
        lines.append("|---|" + "---:|" * len(cols))
        for movie, scores in per_movie.items():
            lines.append(f"| {movie} | " + " | ".join(_fmt(scores.get(c)) for c in cols) + " |")
    return lines


def write_report(result: dict, prefix: str | os.PathLike) -> tuple[str, str]:
    """Write ``prefix.json`` and ``prefix.md`` atomically; returns both paths."""
    from distinctad.common import atomic_write_json, atomic_write_text

    prefix = str(prefix)
    json_path, md_path = prefix + ".json", prefix + ".md"
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, to_markdown(result))
    return json_path, md_path


def mlflow_metric_name(name: str) -> str:
    """One metric name as an MLflow key: ``"R@5/16"`` -> ``"R_at_5_of_16"``, ``"Rep@3 GT"`` -> ``"Rep_at_3_GT"``.

    MLflow keys allow letters, digits and ``_-. /``, and its UI groups charts by what comes before a "/", so a "/"
    inside a metric's own name (``R@5/16``) would make a section per prefix holding a chart titled "16": it becomes
    ``_of_``."""
    return name.replace("@", "_at_").replace("/", "_of_").replace(" ", "_")


def log_to_mlflow(
    result: dict,
    experiment: str,
    *,
    run_name: str | None = None,
    params: dict | None = None,
    artifacts: Sequence[str] = (),
) -> str:
    """Log a result to MLflow: overall metrics as ``eval/<name>``, per movie as ``eval/movie/<movie>/<name>``.

    The tracking URI comes from ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``. Returns the run id.
    """
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    mlflow.set_experiment(experiment)
    metrics = {f"eval/{mlflow_metric_name(k)}": v for k, v in result.items() if isinstance(v, (int, float))}
    for movie, scores in result.get("per_movie", {}).items():
        safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in movie)
        metrics.update(
            {
                f"eval/movie/{safe}/{mlflow_metric_name(k)}": v
                for k, v in scores.items()
                if isinstance(v, (int, float)) and v is not None
            }
        )
    with mlflow.start_run(run_name=run_name) as run:
        meta = result.get("meta", {})
        mlflow.log_params(
            {
                **{k: str(v) for k, v in (params or {}).items()},
                "num_ads": meta.get("num_ads"),
                "num_movies": meta.get("num_movies"),
                "backend": str(meta.get("backend")),
            }
        )
        mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(path)
        return run.info.run_id
