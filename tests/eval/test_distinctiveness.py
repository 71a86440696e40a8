"""Distinctiveness metrics against values worked out by hand (see the comments), and the one shared D_i definition."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distinctad.eval import evaluate, write_report
from distinctad.eval.distinctiveness import distinct_n, distinctiveness, duplicate_flags
from distinctad.eval.harness import mlflow_metric_name
from distinctad.eval.recall import recall_at_k
from distinctad.eval.similarity import LexicalBackend

# Movie "m": 3 ADs; movie "n": 1 AD.
GT_M = ["Ana opens the red door.", "Ana closes the door.", "Bob runs."]
PRED_M = ["Ana opens the door.", "Ana opens the door.", "Bob runs fast."]
GT_N, PRED_N = ["A cat sleeps."], ["A cat sleeps."]


def _records():
    refs = [{"movie": "m", "ad_index": i, "sentence": s} for i, s in enumerate(GT_M)]
    refs += [{"movie": "n", "ad_index": 0, "sentence": GT_N[0]}]
    preds = [{"movie": "m", "ad_index": i, "text": s} for i, s in enumerate(PRED_M)]
    preds += [{"movie": "n", "ad_index": 0, "text": PRED_N[0]}]
    return preds[::-1], refs  # predictions in any order: the metrics follow ad_index


def test_hand_computed_values_k1_n2():
    overall, per_movie, backend = distinctiveness({"m": (PRED_M, GT_M), "n": (PRED_N, GT_N)}, k=1, window=2)
    assert backend.startswith("lexical")
    m = per_movie["m"]
    # Rep@1, predictions: sim(P2, P1) = 1 (same text); sim(P3, P2) = 0 (no shared word) -> mean 0.5
    assert m["Rep@1"] == pytest.approx(50.0)
    # Rep@1, GT: sim(G2, G1) = mean(unigram F1 2*3/(4+5), bigram F1 0) = 1/3; sim(G3, G2) = 0 -> 1/6
    assert m["Rep@1 GT"] == pytest.approx(100 / 6)
    assert m["Rep@1 ratio"] == pytest.approx(3.0)
    # Dup@1: P2 == P1, P3 != P2 -> 1/2; the GT has none
    assert (m["Dup@1"], m["Dup@1 GT"]) == (pytest.approx(50.0), 0.0)
    # windows [0, 1], [2]: predictions 4/8 and 3/3 distinct unigrams, 3/6 and 2/2 bigrams
    assert m["Distinct-1/2"] == pytest.approx(75.0) and m["Distinct-2/2"] == pytest.approx(75.0)
    # GT: 6/9 and 2/2 unigrams, 7/7 and 1/1 bigrams
    assert m["Distinct-1/2 GT"] == pytest.approx(100 * (2 / 3 + 1) / 2) and m["Distinct-2/2 GT"] == 100.0
    # D_1 = {opens, red}: P1 says opens -> 1/2; D_2 = {closes}: 0; D_3 = {bob, runs}: 2/2 -> mean 0.5
    assert m["DW-Recall/2"] == pytest.approx(50.0)
    # a movie of one AD has no neighbour
    n = per_movie["n"]
    assert n["Rep@1"] is None and n["Dup@1"] is None and n["Rep@1 ratio"] is None
    assert n["Distinct-1/2"] == 100.0 and n["DW-Recall/2"] == 100.0
    # overall pools ADs (windows) of all movies: distinct-1 windows 0.5, 1, 1; DW ADs 0.5, 0, 1, 1
    assert overall["Rep@1"] == pytest.approx(50.0) and overall["Dup@1"] == pytest.approx(50.0)
    assert overall["Distinct-1/2"] == pytest.approx(100 * 2.5 / 3)
    assert overall["DW-Recall/2"] == pytest.approx(62.5)


def test_duplicates_look_back_k_and_normalise():
    texts = ["A b.", "c d", "a  B!", "e"]
    assert duplicate_flags(texts, 1) == [False, False, False]
    assert duplicate_flags(texts, 2) == [False, True, False]  # "a  B!" == "A b." after normalisation
    assert distinct_n(["x"], 2) is None and distinct_n(["x y x y"], 2) == pytest.approx(2 / 3)


class _Constant:
    name = "constant 0.25"

    def prepare(self, texts):
        pass

    def similarity(self, preds, refs):
        return np.full((len(preds), len(refs)), 0.25)


def test_neighbour_repetition_with_the_recall_backend():
    overall, _, backend = distinctiveness(
        {"m": (PRED_M, GT_M)}, k=2, window=2, backend="recall", recall_backend=_Constant()
    )
    assert backend == "constant 0.25"
    assert overall["Rep@2"] == pytest.approx(25.0) and overall["Rep@2 ratio"] == pytest.approx(1.0)


def test_evaluate_reports_them_in_json_and_markdown(tmp_path):
    preds, refs = _records()
    result = evaluate(preds, refs, metrics=(), recall_k=None, distinct_k=1, distinct_n=2)
    assert result["Rep@1"] == pytest.approx(50.0) and result["Rep@1 GT"] == pytest.approx(100 / 6)
    assert result["per_movie"]["m"]["DW-Recall/2"] == pytest.approx(50.0)
    assert result["meta"]["distinctiveness"]["k"] == 1 and result["meta"]["distinctiveness"]["N"] == 2
    json_path, md_path = write_report(result, tmp_path / "r")
    assert json.load(open(json_path))["Dup@1"] == pytest.approx(50.0)
    md = open(md_path).read()
    assert "## Distinctiveness" in md and "| Rep@1 (neighbour repetition) | 50.00 | 16.67 | 3.00 |" in md
    assert "| m | 50.00 | 16.67 | 3.00 | 50.00 | 0.00 | 75.00 |" in md
    with pytest.raises(Exception, match="neighbour_backend"):
        evaluate(preds, refs, metrics=(), recall_k=None, neighbour_backend="bleu")


def test_per_ad_recall_scores_for_the_bootstrap():
    # windows of N=2, stride 1: [0,1] hits P0, P1 ties 0 = 0 against G0 and misses; [1,2] P1 misses, P2 hits
    rec = recall_at_k({"m": (["a a", "c c", "c c"], ["a a", "b b", "c c"])}, LexicalBackend(), ks=1, window=2, stride=1)
    assert rec.per_item["m"][1] == [1.0, 0.0, 1.0]
    refs = [{"movie": "m", "ad_index": i, "sentence": s} for i, s in enumerate(["a a", "b b", "c c"])]
    preds = [{"movie": "m", "ad_index": i, "text": s} for i, s in enumerate(["a a", "c c", "c c"])]
    result = evaluate(preds, refs, metrics=(), recall_k=1, recall_n=2, recall_stride=1, distinct=False)
    assert result["per_ad"] == {"keys": [["m", 0], ["m", 1], ["m", 2]], "R@1/2": [100.0, 0.0, 100.0]}
    assert "distinctiveness" in result["meta"] and result["meta"]["distinctiveness"] is None


def test_one_definition_of_distinctive_words_and_mlflow_names():
    from distinctad.eval import words
    from distinctad.train.models import distinctive

    assert distinctive.distinctive_words is words.distinctive_words
    assert distinctive.content_words is words.content_words
    assert mlflow_metric_name("R@5/16") == "R_at_5_of_16" and mlflow_metric_name("Rep@3 GT") == "Rep_at_3_GT"
