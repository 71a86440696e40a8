"""Recall@k/N windows, ranks and ties on hand-made similarity matrices; the similarity backends."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from distinctad.eval.errors import EvalEnvironmentError
from distinctad.eval.recall import paired_ranks, recall_at_k, window_starts
from distinctad.eval.similarity import LexicalBackend, build_backend


class MatrixBackend:
    """Texts are "movie:i"; similarity looks up a hand-made per-movie matrix and records every call."""

    name = "matrix"

    def __init__(self, mats: dict[str, np.ndarray]) -> None:
        self.mats, self.calls = mats, []

    def prepare(self, texts):
        pass

    def similarity(self, preds, refs):
        movies = {t.split(":")[0] for t in (*preds, *refs)}
        assert len(movies) == 1, "a window crossed movies"
        movie = movies.pop()
        rows, cols = [int(t.split(":")[1]) for t in preds], [int(t.split(":")[1]) for t in refs]
        self.calls.append((movie, rows[0], len(rows)))
        return self.mats[movie][np.ix_(rows, cols)]


def items(movie: str, n: int) -> tuple[list[str], list[str]]:
    texts = [f"{movie}:{i}" for i in range(n)]
    return texts, list(texts)


def test_window_starts_edges():
    assert window_starts(16, 16) == [0]
    assert window_starts(15, 16) == []  # a movie shorter than N yields no window
    assert window_starts(23, 16) == [0]  # only full windows: [8, 24) would overrun
    assert window_starts(24, 16) == [0, 8]
    assert window_starts(40, 16) == [0, 8, 16, 24]
    assert window_starts(10, 4, stride=3) == [0, 3, 6]
    assert window_starts(10, 4, stride=10) == [0]
    assert window_starts(3, 1) == [0, 1, 2]  # N=1: stride max(1//2, 1) = 1
    with pytest.raises(ValueError):
        window_starts(10, 4, stride=0)


def test_paired_ranks_ties_count_against():
    sim = np.array([[1.0, 1.0, 0.0], [0.2, 0.5, 0.9], [0.0, 0.0, 0.0]])
    # row 0 ties with one other -> 2; row 1 has one better -> 2; row 2 ties with two others -> 3
    assert paired_ranks(sim).tolist() == [2, 2, 3]
    assert paired_ranks(np.eye(4)).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        paired_ranks(np.zeros((2, 3)))


def test_recall_on_hand_made_matrices():
    a = np.eye(6)
    a[1, 0] = 2.0  # window 0: prediction 1 prefers GT 0 -> rank 2
    a[3, 5] = 5.0  # only inside window 2 (GT 5 is not in window 0): rank 2 there, a hit in window 0
    a[4, 2] = 1.0  # tie with its own GT in window 2 -> rank 2
    a[5, 3], a[5, 4] = 3.0, 4.0  # rank 3 in window 2
    c = np.eye(4)
    c[0, 0], c[0, 1] = 0.5, 0.7  # rank 2
    mats = {"A": a, "B": np.eye(3), "C": c}
    backend = MatrixBackend(mats)
    res = recall_at_k({m: items(m, len(x)) for m, x in mats.items()}, backend, ks=(1, 2), window=4)
    assert res.stride == 2
    # A (6 ADs, N=4, stride 2): windows at 0 and 2; B (3 ADs) none; C one window
    assert sorted(backend.calls) == [("A", 0, 4), ("A", 2, 4), ("C", 0, 4)]
    assert res.num_windows == 3
    assert res.per_movie["A"] == {
        "windows": 2,
        "windows_skipped": 0,
        1: pytest.approx((3 / 4 + 1 / 4) / 2),
        2: pytest.approx(7 / 8),
    }
    assert res.per_movie["B"] == {"windows": 0, "windows_skipped": 0, 1: None, 2: None}
    assert res.per_movie["C"] == {"windows": 1, "windows_skipped": 0, 1: pytest.approx(3 / 4), 2: pytest.approx(1.0)}
    assert res.mean_over_windows[1] == pytest.approx((3 / 4 + 1 / 4 + 3 / 4) / 3)
    assert res.mean_over_windows[2] == pytest.approx((1 + 3 / 4 + 1) / 3)
    # unweighted over the movies that have a window (A and C)
    assert res.mean_over_movies[1] == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert res.mean_over_movies[2] == pytest.approx((7 / 8 + 1) / 2)


def test_recall_stride_option_and_no_window():
    mats = {"A": np.eye(6)}
    backend = MatrixBackend(mats)
    res = recall_at_k({"A": items("A", 6)}, backend, ks=1, window=4, stride=1)
    assert [c[1] for c in backend.calls] == [0, 1, 2] and res.mean_over_windows[1] == 1.0
    res = recall_at_k({"A": items("A", 6)}, MatrixBackend(mats), ks=1, window=8)
    assert res.num_windows == 0 and res.mean_over_windows[1] is None and res.mean_over_movies[1] is None


def test_windows_holding_a_missing_prediction_are_skipped():
    # A: 6 ADs, N=4, stride 2 -> GT windows at 0 and 2. Prediction 1 missing: window 0 skipped, never closed up
    # into [0, 2, 3, 4] as a cut over matched ADs only would do.
    a = np.eye(6)
    a[4, 2] = 1.0  # a tie with its own GT in window 2 -> rank 2
    preds, refs = items("A", 6)
    preds[1] = None
    backend = MatrixBackend({"A": a, "B": np.eye(4)})
    b_preds, b_refs = items("B", 4)
    b_preds[3] = None  # B's only window is incomplete
    res = recall_at_k({"A": (preds, refs), "B": (b_preds, b_refs)}, backend, ks=(1,), window=4)
    assert backend.calls == [("A", 2, 4)]
    assert (res.num_windows, res.num_skipped) == (1, 2)
    assert res.per_movie["A"] == {"windows": 1, "windows_skipped": 1, 1: pytest.approx(3 / 4)}
    assert res.per_movie["B"] == {"windows": 0, "windows_skipped": 1, 1: None}
    assert res.mean_over_windows[1] == pytest.approx(3 / 4) and res.mean_over_movies[1] == pytest.approx(3 / 4)
    # N=2, stride 1: [0,2) and [1,3) are complete, [2,4) holds the missing prediction
    res = recall_at_k({"B": (b_preds, b_refs)}, MatrixBackend({"B": np.eye(4)}), ks=1, window=2, stride=1)
    assert (res.num_windows, res.num_skipped, res.mean_over_windows[1]) == (2, 1, pytest.approx(1.0))


def test_lexical_backend_values():
    lex = LexicalBackend()
    # unigram F1 2*2/6, bigram F1 2*1/4 -> mean 7/12
    assert lex.pair("The cat sat.", "the cat ran") == pytest.approx(7 / 12)
    assert lex.pair("Hi", "hi!") == 1.0  # no bigram on either side: unigram F1 alone
    assert lex.pair("Hi", "hi there") == pytest.approx((2 / 3 + 0) / 2)
    assert lex.pair("He doesn't go", "he does not go") == pytest.approx((2 * 2 / 7 + 0) / 2)
    assert lex.pair("...", "...") == 0.0
    sim = lex.similarity(["a b", "c"], ["a b", "c", "b a"])
    assert sim.shape == (2, 3)
    assert sim[0].tolist() == pytest.approx([1.0, 0.0, 0.5])  # "b a": unigrams match, bigram does not


def test_embedding_backend_tiny_bert(tmp_path):
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a man woman opens door closes window dog".split()
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = BertModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    backend = build_backend("embedding", model=str(tmp_path))
    preds = ["the man opens the door", "a dog"]
    refs = ["the man opens the door", "a woman closes a window", "dog"]
    sim = backend.similarity(preds, refs)
    assert sim.shape == (2, 3)

    def embed(text):  # one text at a time: no padding, so a wrong pooling mask in the batch would show
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            v = model(**enc).last_hidden_state[0].mean(0)
        return v / v.norm()

    expected = [[float(embed(p) @ embed(r)) for r in refs] for p in preds]
    assert sim.tolist() == [pytest.approx(row, abs=1e-5) for row in expected]
    assert sim[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert "embedding" in backend.name


def test_embedding_backend_missing_dir(tmp_path):
    with pytest.raises(EvalEnvironmentError, match="local model directory"):
        build_backend("embedding", model=str(tmp_path / "nope"))


def test_bertscore_backend_names_what_is_missing(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bert_score" else real_find_spec(name, *a)
    )
    with pytest.raises(EvalEnvironmentError, match="`bert-score` package"):
        build_backend("bertscore")
    # package present but no roberta-large anywhere on disk
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "bert_score" else real_find_spec(name, *a)
    )
    monkeypatch.delenv("DISTINCTAD_BERTSCORE_MODEL", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(EvalEnvironmentError, match="roberta-large on disk"):
        build_backend("bertscore")
    with pytest.raises(ValueError, match="unknown similarity backend"):
        build_backend("nope")
