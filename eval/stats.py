"""Uncertainty of a difference between two systems: the paired bootstrap over ADs.

Two systems scored on the same ADs give per-AD scores a_i and b_i (CIDEr-D, ROUGE-L and Recall@k/N are means of
per-AD scores, see ``evaluate()["per_ad"]``). The paired bootstrap (Efron & Tibshirani 1993; Koehn 2004 for MT)
resamples the n pairs with replacement B times and takes the mean difference of each resample; the 2.5th and
97.5th percentiles of those B means are the 95% interval of mean(a) − mean(b). The difference is called
significant when the interval excludes 0. Pairs from several seeds are pooled: (seed, AD) is the unit resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
"""B, our default: enough for a stable 95% percentile interval (its ends move by < 0.1 of the half-width)."""


@dataclass(frozen=True)
class BootstrapResult:
    """Mean difference and its percentile interval (in the units of the scores).

    Attributes:
        diff: mean(a) − mean(b) over the n pairs.
        low, high: the interval's ends.
        n: pairs used (pairs where either score is None are left out).
        confidence: e.g. 0.95.
    """

    diff: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 2) -> str:
        """``"+3.10 [+1.20, +5.00] *"`` (``*``: significant)."""
        f = f"{{:+.{digits}f}}"
        mark = " *" if self.significant else ""
        return f"{f.format(self.diff)} [{f.format(self.low)}, {f.format(self.high)}]{mark}"


def paired_bootstrap(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Paired bootstrap percentile interval of mean(a) − mean(b).

    Args:
        a, b: aligned per-pair scores (None: no score, the pair is left out).
        resamples: B.
        confidence: interval coverage, in (0, 1).
        seed: seed of the resampling (the same inputs always give the same interval).

    Returns:
        A :class:`BootstrapResult`.

    Raises:
        ValueError: misaligned inputs, no usable pair, B < 1 or a confidence outside (0, 1).
    """
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs aligned scores, got {len(a)} and {len(b)}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    d = np.array([x - y for x, y in zip(a, b) if x is not None and y is not None], dtype=np.float64)
    if d.size == 0:
        raise ValueError("paired bootstrap: no pair has both scores")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // d.size)  # bounded memory: at most ~2M indices at a time
    for s in range(0, resamples, chunk):
        m = min(chunk, resamples - s)
        means[s : s + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return BootstrapResult(float(d.mean()), float(low), float(high), int(d.size), confidence)
