"""BLEU and CIDEr-D checked against their published definitions, computed independently here."""

from __future__ import annotations

import math
import shutil
from collections import Counter

import pytest

from distinctad.eval.captions import caption_metrics, score_tokenized


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu_reference(hyps: list[str], refs: list[str], max_n: int = 4) -> list[float]:
    """Corpus BLEU (Papineni et al. 2002): clipped n-gram precisions summed over the corpus, geometric mean,
    brevity penalty exp(1 - r/c) when the candidate corpus is shorter (one reference per sentence)."""
    correct, guess = [0] * max_n, [0] * max_n
    c = r = 0
    for h, ref in zip(hyps, refs):
        hw, rw = h.split(), ref.split()
        c, r = c + len(hw), r + len(rw)
        for n in range(1, max_n + 1):
            hc, rc = ngrams(hw, n), ngrams(rw, n)
            correct[n - 1] += sum(min(cnt, rc[g]) for g, cnt in hc.items())
            guess[n - 1] += max(len(hw) - n + 1, 0)
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    out, prod = [], 1.0
    for n in range(max_n):
        prod *= correct[n] / guess[n]
        out.append(100 * bp * prod ** (1 / (n + 1)))
    return out


def cider_d_reference(hyps: list[str], refs: list[str], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015) as the coco-caption code every AD paper uses: tf-idf n-gram vectors
    (raw term frequency × log(#images / document frequency over the references)), the candidate clipped by the
    reference (min), cosine, gaussian length penalty σ=6, mean over n=1..4, ×10, mean over images."""
    num = len(refs)
    df: Counter = Counter()
    for ref in refs:
        rw = ref.split()
        df.update({g for n in range(1, 5) for g in ngrams(rw, n)})

    def vec(words: list[str], n: int) -> dict:
        return {g: tf * (math.log(num) - math.log(max(1.0, df[g]))) for g, tf in ngrams(words, n).items()}

    scores = []
    for h, ref in zip(hyps, refs):
        hw, rw = h.split(), ref.split()
        penalty = math.exp(-((len(hw) - len(rw)) ** 2) / (2 * sigma**2))
        per_n = []
        for n in range(1, 5):
            vh, vr = vec(hw, n), vec(rw, n)
            nh, nr = math.sqrt(sum(v * v for v in vh.values())), math.sqrt(sum(v * v for v in vr.values()))
            dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vh.items())
            per_n.append(penalty * (dot / (nh * nr) if nh and nr else 0.0))
        scores.append(10 * sum(per_n) / 4)
    return 100 * sum(scores) / len(scores)


def test_bleu_literal_values():
    # "the the the the" vs "the cat": clipped unigram precision 1/4, no brevity penalty (c=4 > r=2)
    overall, *_ = score_tokenized(["the cat"], ["the the the the"], metrics=("bleu",))
    assert overall["BLEU-1"] == pytest.approx(25.0, rel=1e-6)
    # one sentence: p1..p4 = 5/6, 3/5, 2/4, 1/3 and c = r = 6
    overall, *_ = score_tokenized(["the cat sat on the mat"], ["the cat sat on a mat"], metrics=("bleu",))
    assert overall["BLEU-1"] == pytest.approx(100 * 5 / 6, rel=1e-6)
    assert overall["BLEU-2"] == pytest.approx(100 * (5 / 6 * 3 / 5) ** (1 / 2), rel=1e-6)
    assert overall["BLEU-3"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3), rel=1e-6)
    assert overall["BLEU-4"] == pytest.approx(100 * (1 / 12) ** (1 / 4), rel=1e-6)
    # corpus of two: statistics are summed before dividing; c=12 < r=14 gives the brevity penalty exp(1-14/12)
    refs = ["the cat sat on the mat", "a man walks his dog in the park"]
    hyps = ["the cat sat on a mat", "a man walks in the park"]
    overall, *_ = score_tokenized(refs, hyps, metrics=("bleu",))
    bp = math.exp(1 - 14 / 12)
    assert overall["BLEU-4"] == pytest.approx(100 * bp * (11 / 12 * 7 / 10 * 4 / 8 * 1 / 6) ** (1 / 4), rel=1e-6)
    assert [overall[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu_reference(hyps, refs), rel=1e-6)


def test_bleu_matches_direct_implementation_on_a_small_corpus():
    refs = [
        "a woman opens the red door",
        "he looks at her and smiles",
        "the car drives down a dark road",
        "she picks up the phone",
        "rain falls on the window",
    ]
    hyps = [
        "a woman opens a door",
        "he smiles at her",
        "a car drives down the road at night",
        "she picks up the phone",
        "rain falls",
    ]
    overall, per_group, *_ = score_tokenized(refs, hyps, metrics=("bleu",), groups=["x", "x", "y", "y", "y"])
    assert [overall[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu_reference(hyps, refs), rel=1e-6)
    # per group = BLEU recomputed on the group's sentences
    assert per_group["y"]["BLEU-2"] == pytest.approx(bleu_reference(hyps[2:], refs[2:])[1], rel=1e-6)


def test_cider_literal_values():
    # image 1 identical (n=1,2 cosine 1, no tri/4-grams): 10*(1+1)/4 = 5; image 2 "c e" vs "c d": unigram
    # cosine 1/2, rest 0: 10*0.5/4 = 1.25; corpus mean 3.125
    overall, *_ = score_tokenized(["a b", "c d"], ["a b", "c e"], metrics=("cider",))
    assert overall["CIDEr"] == pytest.approx(312.5, rel=1e-9)
    # length penalty: "a b" vs "a b c" -> exp(-1/72) * 10 * (2/sqrt(6) + 1/sqrt(2)) / 4; image 2 identical -> 5
    overall, *_ = score_tokenized(["a b c", "d e"], ["a b", "d e"], metrics=("cider",))
    first = math.exp(-1 / 72) * 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    assert overall["CIDEr"] == pytest.approx(100 * (first + 5) / 2, rel=1e-9)


def test_cider_matches_direct_implementation_with_shared_ngrams():
    # "the" and "a" occur in every image's reference: their idf is 0, so they carry no weight
    refs = [
        "a man opens the door",
        "a woman opens the window slowly",
        "the dog runs in a park",
        "a boy reads the letter",
    ]
    hyps = ["a man opens a door", "a woman closes the window", "a dog runs", "the boy reads a long letter aloud"]
    overall, per_group, *_ = score_tokenized(refs, hyps, metrics=("cider",), groups=["m1", "m1", "m2", "m2"])
    assert overall["CIDEr"] == pytest.approx(cider_d_reference(hyps, refs), rel=1e-9)
    assert (per_group["m1"]["CIDEr"] + per_group["m2"]["CIDEr"]) / 2 == pytest.approx(overall["CIDEr"], rel=1e-9)


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_ptb_tokenizer_lowercases_and_drops_punctuation_before_scoring():
    # One Java call: raw text with case, punctuation, a newline and a Unicode line separator inside an AD
    # (which would misalign the tokenizer's one-sentence-a-line output if not collapsed).
    refs = ["The cat sat on the mat.", "A man walks his dog\nin the park!"]
    hyps = ["the cat, sat on a mat", "A man\u2028walks in the park..."]
    overall, _, timings, _ = caption_metrics(refs, hyps, metrics=("bleu", "cider"))
    tok_refs = ["the cat sat on the mat", "a man walks his dog in the park"]
    tok_hyps = ["the cat sat on a mat", "a man walks in the park"]
    assert [overall[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu_reference(tok_hyps, tok_refs), rel=1e-6)
    assert overall["CIDEr"] == pytest.approx(cider_d_reference(tok_hyps, tok_refs), rel=1e-9)
    assert timings["tokenize"] > 0
