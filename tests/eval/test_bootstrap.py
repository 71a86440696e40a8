"""The paired bootstrap against cases whose answer is known in closed form."""

from __future__ import annotations

import math

import pytest

from distinctad.eval.stats import paired_bootstrap


def test_constant_difference_has_a_zero_width_interval():
    r = paired_bootstrap([3.0, 5.0, 7.0], [1.0, 3.0, 5.0], resamples=200)
    assert (r.diff, r.low, r.high, r.n) == (2.0, 2.0, 2.0, 3) and r.significant
    assert r.format() == "+2.00 [+2.00, +2.00] *"


@pytest.mark.parametrize("ones", [1000, 1300])
def test_interval_matches_the_normal_approximation(ones):
    """Differences of 2,000 pairs, ``ones`` of +1 and the rest -1: mean m = (2·ones − 2000)/2000 and standard error
    sqrt((1 − m²)/2000); the bootstrap's 95% interval must sit within 10% of m ± 1.96·se (its half-width 0.044)."""
    n = 2000
    a = [1.0] * ones + [0.0] * (n - ones)
    b = [0.0] * ones + [1.0] * (n - ones)
    r = paired_bootstrap(a, b, resamples=4000, seed=1)
    m = (2 * ones - n) / n
    half = 1.96 * math.sqrt((1 - m * m) / n)
    assert r.diff == pytest.approx(m)
    assert r.low == pytest.approx(m - half, abs=0.1 * half) and r.high == pytest.approx(m + half, abs=0.1 * half)
    assert r.significant == (ones != 1000)  # mean 0: the interval holds 0; mean 0.3: far from it


def test_pairs_without_a_score_are_left_out_and_the_result_is_seeded():
    a, b = [1.0, None, 2.0, 4.0], [0.0, 5.0, None, 1.0]
    r = paired_bootstrap(a, b, resamples=500, seed=3)
    assert r.n == 2 and r.diff == pytest.approx(2.0)
    assert r == paired_bootstrap(a, b, resamples=500, seed=3)
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no pair"):
        paired_bootstrap([None], [1.0])
