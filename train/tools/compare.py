"""Results tables with their uncertainty: mean ± std over seeds, and paired-bootstrap differences against a baseline.

Shared by ``distinctad-ablate`` and the quick start. Each run's eval report (``evaluate()``'s JSON) carries per-AD
scores (``per_ad``) for the metrics that are means over ADs (CIDEr, ROUGE-L, R@k/N); a row is compared with the
baseline by pairing the same AD under the same seed and pooling the pairs of all seeds
(:func:`distinctad.eval.stats.paired_bootstrap`). BLEU and METEOR are corpus statistics: mean ± std only.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from distinctad.eval.stats import DEFAULT_RESAMPLES, BootstrapResult, paired_bootstrap

DISTINCT_COLUMNS = ["Rep@3 ratio", "Dup@3", "DW-Recall/16"]
"""Distinctiveness columns of the results tables (eval harness keys at its defaults k=3, N=16)."""


def backend_short(backend: str | None) -> str:
    """``"lexical (mean of unigram ...)"`` -> ``"lexical"``: the name a Recall column carries."""
    return (backend or "lexical").split(" ", 1)[0]


def column_label(column: str, backend: str | None) -> str:
    """A table header: a Recall column names its similarity backend (``"R@5/16 (lexical)"``)."""
    return f"{column} ({backend_short(backend)})" if column.startswith("R@") else column


def mlflow_column(column: str, backend: str | None) -> str:
    """A column as an MLflow metric name, the Recall backend named too: ``"R@5/16"`` -> ``"R@5/16 lexical"`` (which
    the tracker writes ``R_at_5_of_16_lexical``)."""
    return f"{column} {backend_short(backend)}" if column.startswith("R@") else column


def fmt(values: Sequence[float]) -> str:
    """``"12.34 ± 0.56"`` over seeds (one value: no ±; none: ``–``)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def latest_report(run_dir: str | Path) -> dict | None:
    """The last ``eval/step_*_report.json`` of a Stage-II run directory (None if it has none)."""
    found = sorted(Path(run_dir).glob("eval/step_*_report.json"))
    return json.loads(found[-1].read_text(encoding="utf-8")) if found else None


def per_ad(report: dict | None, metric: str) -> dict[tuple[str, int], float | None]:
    """(movie, ad_index) -> the AD's score of ``metric`` in a report ({} when the report has none)."""
    if not report or metric not in report.get("per_ad", {}):
        return {}
    keys = report["per_ad"]["keys"]
    return {(m, int(i)): v for (m, i), v in zip(keys, report["per_ad"][metric])}


def compare(
    rows: Sequence[dict | None],
    bases: Sequence[dict | None],
    metric: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
) -> BootstrapResult | None:
    """Paired bootstrap of ``metric`` (row − baseline) over ADs pooled over seeds.

    Args:
        rows, bases: the reports of the row and of the baseline, one per seed, in the same seed order.
        metric: a key of ``per_ad`` (``"CIDEr"``, ``"ROUGE-L"``, ``"R@5/16"``).

    Returns:
        None when no seed has per-AD scores of ``metric`` for both.
    """
    a: list[float | None] = []
    b: list[float | None] = []
    for row, base in zip(rows, bases, strict=True):
        ra, rb = per_ad(row, metric), per_ad(base, metric)
        for key in sorted(ra.keys() & rb.keys()):
            a.append(ra[key])
            b.append(rb[key])
    if not any(x is not None and y is not None for x, y in zip(a, b)):
        return None
    return paired_bootstrap(a, b, resamples=resamples)


def bootstrap_columns(columns: Sequence[str]) -> list[str]:
    """The columns whose per-AD scores exist (means over ADs): CIDEr, ROUGE-L, R@k/N."""
    return [c for c in columns if c in ("CIDEr", "ROUGE-L") or c.startswith("R@")]


def difference_table(
    labels: Sequence[str],
    rows: dict[str, Sequence[dict | None]],
    base: Sequence[dict | None],
    columns: Sequence[str],
    backend: str | None,
    *,
    base_name: str = "A0",
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[str, dict[str, dict[str, BootstrapResult | None]]]:
    """Markdown table of each row's difference from the baseline with its 95% interval, and the raw results.

    Args:
        labels: the row labels, in order (keys of ``rows``).
        rows: label -> reports per seed; ``base``: the baseline's reports per seed (same seed order).
        columns: metric columns (only :func:`bootstrap_columns` of them are compared).
        backend: the Recall backend, for the headers.
    """
    cols = bootstrap_columns(columns)
    out: dict[str, dict[str, BootstrapResult | None]] = {}
    n_pairs = 0
    lines = [
        f"| {base_name} → row | " + " | ".join(f"Δ {column_label(c, backend)} [95% CI]" for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for label in labels:
        out[label] = {c: compare(rows[label], base, c, resamples=resamples) for c in cols}
        n_pairs = max([n_pairs, *(r.n for r in out[label].values() if r is not None)])
        cells = [r.format() if r is not None else "–" for r in out[label].values()]
        lines.append(f"| {label} − {base_name} | " + " | ".join(cells) + " |")
    seeds = len(base)
    head = (
        f"Differences from {base_name}: paired bootstrap over ADs pooled over {seeds} seed(s) ({n_pairs} pairs, "
        f"{resamples} resamples), 95% percentile interval; * = significant (the interval excludes 0)."
    )
    return head + "\n\n" + "\n".join(lines) + "\n", out
