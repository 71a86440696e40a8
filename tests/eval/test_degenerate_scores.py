"""Inputs that make a score meaningless get a notice with counts, never a silent number (issue 14, item 6)."""

from __future__ import annotations

import math
import shutil

import pytest

from distinctad.eval import Normalizer, evaluate, to_markdown
from distinctad.eval.captions import caption_metrics, score_tokenized

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def refs_of(movie: str, n: int, offset: int = 0) -> list[dict]:
    """n ADs with distinct two-word texts (no word shared between ADs)."""
    return [{"movie": movie, "ad_index": i, "sentence": f"{WORDS[(offset + i) % 16]} {movie}{i}"} for i in range(n)]


def preds_of(refs: list[dict]) -> list[dict]:
    return [{"movie": r["movie"], "ad_index": r["ad_index"], "text": r["sentence"]} for r in refs]


@needs_java
def test_predictions_emptied_by_the_ptb_tokenizer_are_counted():
    refs = ["the door opens", "she smiles", "a car drives away", "rain falls", "he waves", "..."]
    hyps = ["...", "\x01\x02", "\u200b", ", ; : -- ''", "he waves", "something"]
    labels = [f"'m' ad_index={i}" for i in range(6)]
    overall, _, _, notices = caption_metrics(refs, hyps, ("bleu", "rouge"), groups=["m"] * 6, labels=labels)
    assert notices[0] == (
        "4 prediction(s) not empty but with no token left after the PTB tokenizer (punctuation, control or invisible "
        "characters only), scored as empty hypotheses (not counted among matching's empty predictions), first: "
        "'m' ad_index=0 '...', 'm' ad_index=1 '\\x01\\x02', 'm' ad_index=2 '\\u200b', ..."
    )
    assert notices[1].startswith(
        "1 ground-truth AD(s) not empty but with no token left after the PTB tokenizer (punctuation, control or "
        "invisible characters only), scored as empty references, first: 'm' ad_index=5 '...'"
    )
    # 3 tokens predicted in all ("he waves", "something"): p1 = 2/3, c = 3 < r = 3+2+4+2+2+0 = 13: brevity penalty.
    # No 3-gram: BLEU-3/4 are undefined, not pycocoevalcap's smoothed value.
    assert overall["BLEU-1"] == pytest.approx(100 * 2 / 3 * math.exp(1 - 13 / 3), rel=1e-6)
    assert overall["BLEU-2"] == pytest.approx(100 * (2 / 3 * 1 / 1) ** 0.5 * math.exp(1 - 13 / 3), rel=1e-6)
    assert overall["BLEU-3"] is None and overall["BLEU-4"] is None
    assert "BLEU-3..BLEU-4 undefined (reported as null): no prediction has 3 or more tokens" in notices[2]


@needs_java
def test_evaluate_reports_tokenizer_empties_in_meta_and_markdown():
    refs = refs_of("m", 3)
    preds = preds_of(refs)
    preds[1]["text"] = "... ?"  # non-empty: matching accepts it, the tokenizer leaves nothing
    preds[2]["text"] = "\u2060\u200b"  # word joiner + zero-width space
    res = evaluate(preds, refs, metrics=("bleu",), recall_k=None, progress=False)
    assert res["meta"]["matching"]["empty"] == 0 and res["meta"]["matching"]["problems"] == []
    note = [n for n in res["meta"]["notices"] if "no token left after the PTB tokenizer" in n]
    assert len(note) == 1 and note[0].startswith("2 prediction(s) not empty")
    assert "'m' ad_index=1 '... ?'" in note[0] and "'m' ad_index=2" in note[0]
    md = to_markdown(res)
    assert "## Notes" in md and f"- {note[0]}" in md


@pytest.mark.parametrize(
    ("hyps", "refs", "expected", "notice"),
    [
        # a perfect 3-word AD: BLEU-1..3 = 100; BLEU-4 has no 4-gram (pycocoevalcap's smoothing would print 3.16)
        (
            ["a b c"],
            ["a b c"],
            [pytest.approx(100.0)] * 3 + [None],
            "BLEU-4 undefined (reported as null): no prediction",
        ),
        # one-word predictions: BLEU-2..4 undefined
        (
            ["a", "b"],
            ["a x", "b y"],
            [pytest.approx(100 * 2 / 2 * 0.36787944117144233), None, None, None],
            "BLEU-2..BLEU-4",
        ),
        # nothing predicted at all
        (["", ""], ["a b", "c d"], [None, None, None, None], "BLEU-1..BLEU-4 undefined (reported as null): no "),
    ],
    ids=["3-words", "1-word", "all-empty"],
)
def test_bleu_without_ngrams_is_undefined(hyps, refs, expected, notice):
    overall, _, _, notices = score_tokenized(refs, hyps, metrics=("bleu",))
    assert [overall[f"BLEU-{n}"] for n in range(1, 5)] == expected
    assert len(notices) == 1 and notices[0].startswith(notice)


def test_bleu_per_movie_undefined_is_counted():
    refs = ["a b c d e", "f g h i j", "k l", "m n o", "p"]
    hyps = ["a b c d e", "f g h i j", "k l", "m n o", "p"]
    groups = ["long", "long", "two", "three", "one"]
    overall, per_group, _, notices = score_tokenized(refs, hyps, metrics=("bleu",), groups=groups)
    assert overall["BLEU-4"] == pytest.approx(100.0)
    assert per_group["long"]["BLEU-4"] == pytest.approx(100.0)
    assert per_group["three"]["BLEU-3"] == pytest.approx(100.0) and per_group["three"]["BLEU-4"] is None
    assert per_group["two"]["BLEU-2"] == pytest.approx(100.0) and per_group["two"]["BLEU-3"] is None
    assert per_group["one"]["BLEU-1"] == pytest.approx(100.0) and per_group["one"]["BLEU-2"] is None
    assert notices == [
        "BLEU per movie undefined (shown as –) where no prediction of the movie has n or more tokens: BLEU-4 in 1, "
        "BLEU-3..BLEU-4 in 1, BLEU-2..BLEU-4 in 1 of 4 movies, first: 'one', 'two', 'three'"
    ]


def test_cider_on_a_single_ad_is_undefined():
    overall, per_group, _, notices = score_tokenized(["a man walks"], ["a man walks"], ("cider",), groups=["m"])
    assert overall["CIDEr"] is None and per_group["m"]["CIDEr"] is None
    assert notices == [
        "CIDEr undefined (reported as null) on a single AD: its idf weights come from the ground truth itself, so "
        "every n-gram gets log(1/1) = 0 and any prediction would score 0"
    ]
    overall, _, _, notices = score_tokenized(["a b", "c d"], ["a b", "c e"], ("cider",))
    assert overall["CIDEr"] == pytest.approx(312.5) and notices == []  # two ADs: defined (hand value, see reference)


def test_recall_degenerate_inputs_are_noticed():
    # m1: 5 ADs, two of them with the same GT text; m2: 2 ADs (fewer than N=4): no window
    refs = refs_of("m1", 5) + refs_of("m2", 2, offset=8)
    refs[3]["sentence"] = refs[4]["sentence"]
    res = evaluate(preds_of(refs), refs, metrics=(), recall_k=(1, 4), recall_n=4, recall_stride=1, progress=False)
    notices = res["meta"]["notices"]
    assert (
        "R@k/4: 1 of 2 movies have fewer than N=4 ground-truth ADs and contribute no window (their R@k/4 is –), "
        "first: 'm2'" in notices
    )
    assert "R@4/4 is 100 by construction (k = N: every ground truth of the window is in the top k)" in notices
    assert (
        "R@k/4: 1 of 2 windows hold two ground-truth ADs with the same text; ties count against, so even a perfect "
        "prediction of either misses at k=1" in notices
    )
    # windows [0,4) and [1,5); the second holds ADs 3 and 4 with the same text: both miss at k=1 -> 2/4
    assert res["R@1/4"] == pytest.approx(100 * (1 + 0.5) / 2) and res["R@4/4"] == 100.0
    assert res["per_movie"]["m2"]["R@1/4"] is None and res["meta"]["recall"]["movies_without_window"] == 1
    assert res["meta"]["recall"]["tied_text_windows"] == 1
    # no window at all
    res = evaluate(preds_of(refs[5:]), refs[5:], metrics=(), recall_k=1, recall_n=4, progress=False)
    assert res["R@1/4"] is None and res["R@1/4 movie-mean"] is None
    assert res["meta"]["notices"] == [
        "R@1/4 undefined (reported as null): no movie has a complete window of N=4 ground-truth ADs with predictions "
        "(1 of 1 movies have fewer than 4 ADs, 0 windows hold an AD without prediction)"
    ]
    assert "| R@1/4 | – |" in to_markdown(res)


def test_texts_emptied_by_normalisation_and_empty_ground_truth():
    refs = refs_of("m", 4)
    refs[3]["sentence"] = ""  # an empty GT AD, kept as a reference
    preds = preds_of(refs)
    preds[3]["text"] = "something"
    preds[0]["text"] = "... !"  # only punctuation: empty after --strip-punct
    preds[1]["text"] = "Ana"  # only a name: "someone" after --replace-names, not empty
    res = evaluate(
        preds, refs, metrics=(), recall_k=1, recall_n=2, normalize=Normalizer(names=("Ana",), strip_punct=True)
    )
    notices = res["meta"]["notices"]
    assert (
        "1 ground-truth AD(s) have empty text; their predictions are scored against an empty reference, first: "
        "'m' ad_index=3" in notices
    )
    assert (
        "1 prediction(s) not empty but empty after the normalisation (--replace-names, --lowercase, --strip-punct), "
        "scored as empty text, first: 'm' ad_index=0 '... !'" in notices
    )
    assert not any("ground-truth AD(s) not empty but empty after the normalisation" in n for n in notices)
