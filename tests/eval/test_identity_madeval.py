"""Predictions = ground truth on the real MAD-Eval annotation (6,520 ADs, 10 movies): one pycocoevalcap run."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from distinctad.data import ASSETS
from distinctad.data.annotations import read_annotations
from distinctad.eval import evaluate

MADEVAL = ASSETS / "madeval_anno.csv"
pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")


@pytest.fixture(scope="module")
def anns():
    return read_annotations(MADEVAL, bad_utf8="repair")


@pytest.fixture(scope="module")
def identity(anns):
    preds = [{"movie": a.movie, "ad_index": a.ad_index, "text": a.sentence} for a in anns.ads]
    return evaluate(
        preds,
        anns.ads,
        metrics=("bleu", "meteor", "rouge", "cider"),
        recall_k=(1, 5),
        recall_n=16,
        backend="lexical",
        progress=False,
    )


def test_identity_caption_metrics_are_perfect(anns, identity):
    assert len(anns.ads) == 6520 and identity["meta"]["num_ads"] == 6520 and identity["meta"]["num_movies"] == 10
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "METEOR"):
        assert identity[name] == pytest.approx(100.0, abs=1e-6), name
    # CIDEr has no fixed maximum; per-movie CIDEr is the mean of per-AD scores, so the AD-weighted mean of the
    # movies gives back the overall score.
    per_movie = identity["per_movie"]
    weighted = sum(m["CIDEr"] * m["ADs"] for m in per_movie.values()) / 6520
    assert weighted == pytest.approx(identity["CIDEr"], rel=1e-9)
    assert identity["CIDEr"] > 500
    for movie, scores in per_movie.items():
        assert scores["BLEU-4"] == pytest.approx(100.0, abs=1e-6), movie
        assert scores["METEOR"] == pytest.approx(100.0, abs=1e-6), movie


def test_identity_recall_counts_exact_duplicate_windows(anns, identity):
    n, stride = 16, 8
    window_scores, movie_scores, dup_windows = [], [], 0
    for movie, ads in anns.by_movie().items():
        scores = []
        for s in range(0, len(ads) - n + 1, stride):
            counts = Counter(a.sentence for a in ads[s : s + n])
            # an AD whose exact text occurs twice in the window ties with its twin and misses at k=1
            unique = sum(1 for a in ads[s : s + n] if counts[a.sentence] == 1)
            dup_windows += unique < n
            scores.append(unique / n)
        window_scores += scores
        movie_scores.append(sum(scores) / len(scores))
        assert identity["per_movie"][movie]["windows"] == len(scores)
    assert dup_windows > 0  # the real data has such windows: the test exercises the tie rule
    assert identity["meta"]["recall"]["windows"] == len(window_scores)
    assert identity["R@1/16"] == pytest.approx(100 * sum(window_scores) / len(window_scores), abs=1e-9)
    assert identity["R@1/16 movie-mean"] == pytest.approx(100 * sum(movie_scores) / len(movie_scores), abs=1e-9)
    assert identity["R@1/16"] < 100.0
    assert identity["R@5/16"] == 100.0 and identity["R@5/16 movie-mean"] == 100.0
