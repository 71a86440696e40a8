"""Matching: duplicate ground-truth rows (item 7), ad_index vs start/end (item 8), R@k/N windows on the GT (item 9)."""

from __future__ import annotations

import json
import shutil

import pytest

from distinctad.eval import evaluate, to_markdown
from distinctad.eval.cli import build_parser, main
from distinctad.eval.errors import EvalInputError
from distinctad.eval.inputs import AD_INDEX_DEFINITION, Prediction, find_gt_duplicates, match, read_references

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")


def write_csv(path, rows):
    """rows: (movie, start, end, sentence), in file order."""
    path.write_text("movie,sentence,start,end\n" + "".join(f'{m},"{s}",{a},{b}\n' for m, a, b, s in rows))
    return path


def write_jsonl(path, preds):
    path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return path


def by_time(rows):
    return [{"movie": m, "start": a, "end": b, "text": s} for m, a, b, s in rows]


# --------------------------------------------------------------------------------------------------------------
# item 7: exact duplicate GT rows


DUP_CASES = {
    # one duplicated pair
    "pair": [("m", 1.0, 2.0, "A door opens."), ("m", 1.0, 2.0, "A door opens."), ("m", 3.0, 4.0, "She runs.")],
    # five identical rows in one movie (as a public TV/movie AD set has)
    "five": [("m", 5.0, 6.0, "He nods.")] * 5 + [("m", 1.0, 2.0, "Night."), ("m", 7.0, 8.0, "Dawn.")],
    # two groups in two movies, rows unsorted in the file
    "two-movies": [
        ("b", 9.0, 9.5, "Rain."),
        ("a", 2.0, 3.0, "A car."),
        ("b", 9.0, 9.5, "Rain."),
        ("a", 0.0, 1.0, "Start."),
        ("a", 2.0, 3.0, "A car."),
    ],
}
# (duplicate rows, groups, first group's movie and ad_index list)
DUP_EXPECTED = {"pair": (1, 1, "m", [0, 1]), "five": (4, 1, "m", [1, 2, 3, 4, 5]), "two-movies": (2, 2, "a", [1, 2])}


@pytest.mark.parametrize("case", list(DUP_CASES))
def test_gt_duplicates_match_one_to_one_by_default(tmp_path, case):
    rows = DUP_CASES[case]
    refs = read_references(str(write_csv(tmp_path / "gt.csv", rows)))
    rows_n, groups_n, movie, indices = DUP_EXPECTED[case]
    groups = find_gt_duplicates(refs)
    assert len(groups) == groups_n and sum(len(g) - 1 for g in groups) == rows_n
    assert (groups[0][0].movie, [r.ad_index for r in groups[0]]) == (movie, indices)
    # a correct prediction file keyed by start/end (the issue: "1 missing ... 1 duplicate")
    res = evaluate(by_time(rows), refs, metrics=(), recall_k=None)
    dup = res["meta"]["matching"]["gt_duplicates"]
    assert res["meta"]["matching"]["problems"] == [] and res["meta"]["num_ads"] == len(rows)
    assert (dup["rows"], dup["groups"], dup["policy"]) == (rows_n, groups_n, "match")
    assert dup["first"]["movie"] == movie and dup["first"]["ad_index"] == indices
    note = res["meta"]["notices"][0]
    assert note.startswith(f"ground truth: {rows_n} exact duplicate row(s) (same movie, start, end and text) in ")
    assert note.endswith("each row kept and matched one-to-one in order (--gt-duplicates match)")
    assert f"(ad_index {', '.join(map(str, indices))})" in note and note in to_markdown(res)
    # keyed by ad_index: the same
    preds = [{"movie": r.movie, "ad_index": r.ad_index, "text": r.sentence} for r in refs]
    assert evaluate(preds, refs, metrics=(), recall_k=None)["meta"]["matching"]["problems"] == []


def test_gt_duplicates_drop(tmp_path):
    rows = DUP_CASES["five"]
    refs = read_references(str(write_csv(tmp_path / "gt.csv", rows)))
    # one prediction per row (time keys): the 4 for dropped rows are ignored, not duplicates
    res = evaluate(by_time(rows), refs, metrics=(), recall_k=None, gt_duplicates="drop")
    m = res["meta"]["matching"]
    assert m["problems"] == [] and res["meta"]["num_ads"] == 3 and m["references"] == 3
    assert m["gt_duplicates"]["ignored_predictions"] == 4 and m["gt_duplicates"]["rows"] == 4
    assert res["meta"]["notices"][0].endswith(
        "dropped, each group scored once (--gt-duplicates drop); 4 prediction(s) for the dropped rows ignored"
    )
    # one prediction per distinct AD: fine when dropping; under "match" the 4 rows are missing, with the hint
    unique = by_time([rows[0], rows[5], rows[6]])
    assert evaluate(unique, refs, metrics=(), recall_k=None, gt_duplicates="drop")["meta"]["num_ads"] == 3
    with pytest.raises(EvalInputError, match=r"4 missing .*\(4 of them exact duplicate GT rows; --gt-duplicates drop"):
        evaluate(unique, refs, metrics=(), recall_k=None)
    # by ad_index: the dropped rows' indices are absorbed; a 7th prediction for the group is a real duplicate
    preds = [{"movie": "m", "ad_index": i, "text": "x"} for i in range(7)] + [
        {"movie": "m", "ad_index": 3, "text": "y"}
    ]
    got = match([Prediction(**p, where=f"p:{i}") for i, p in enumerate(preds)], refs, gt_duplicates="drop")
    assert len(got.pairs) == 3 and len(got.ignored_for_dropped) == 4 and [p.where for p in got.duplicate] == ["p:7"]


def test_cli_gt_duplicates_flag(tmp_path, capsys):
    rows = DUP_CASES["pair"]
    gt = write_csv(tmp_path / "gt.csv", rows)
    pred = write_jsonl(tmp_path / "p.jsonl", by_time(rows))
    args = ["--pred", str(pred), "--gt", str(gt), "--metrics", "none", "--no-recall", "--no-progress"]
    main(args + ["--out", str(tmp_path / "r")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["meta"]["num_ads"] == 3 and report["meta"]["matching"]["gt_duplicates"]["rows"] == 1
    main(args + ["--out", str(tmp_path / "d"), "--gt-duplicates", "drop"])
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["meta"]["num_ads"] == 2 and report["meta"]["matching"]["gt_duplicates"]["ignored_predictions"] == 1
    assert "(--gt-duplicates drop)" in capsys.readouterr().out


def test_same_time_different_text_is_paired_in_order_with_a_notice():
    refs = [
        {"movie": "m", "start": 1.0, "end": 2.0, "sentence": "First."},
        {"movie": "m", "start": 1.0, "end": 2.0, "sentence": "Second."},
    ]
    preds = [{"movie": "m", "start": 1.0, "end": 2.0, "text": t} for t in ("First.", "Second.")]
    res = evaluate(preds, refs, metrics=(), recall_k=None)
    assert res["meta"]["matching"]["shared_time"] == 2 and res["meta"]["matching"]["gt_duplicates"]["rows"] == 0
    assert res["meta"]["notices"][0].startswith(
        "2 prediction(s) keyed by start/end matched a time shared by ground-truth ADs with different texts, paired "
        "in file order, first: predictions[0] 'm' start=1.0 end=2.0"
    )


# --------------------------------------------------------------------------------------------------------------
# item 8: ad_index defined, and checked against start/end


UNSORTED = [("m", 10.0, 11.0, "The ship sails into a storm."), ("m", 1.0, 2.0, "A girl waves from the pier.")]


def row_numbered(rows):
    """What a user who numbers ADs in CSV row order writes."""
    return [{"movie": m, "ad_index": i, "start": a, "end": b, "text": s} for i, (m, a, b, s) in enumerate(rows)]


def test_ad_index_is_documented():
    assert "stable sort of the movie's ground-truth ADs by (start, end)" in AD_INDEX_DEFINITION
    help_text = " ".join(build_parser().format_help().split())
    for phrase in (
        "--pred PRED Predictions JSONL",
        "after a stable sort of the movie's",
        "by (start, end), ties in file",
        "not its row number in the file",
        "--match-by {ad_index,time}",
        "--gt-duplicates {match,drop}",
    ):
        assert phrase in help_text, phrase


def test_ad_index_and_times_that_disagree_are_counted(tmp_path):
    refs = read_references(str(write_csv(tmp_path / "gt.csv", UNSORTED)))
    assert [(r.ad_index, r.start) for r in refs] == [(0, 1.0), (1, 10.0)]
    preds = [Prediction(**p, where=f"p.jsonl:{i + 1}") for i, p in enumerate(row_numbered(UNSORTED))]
    got = match(preds, refs)
    assert len(got.key_conflicts) == 2 and got.ok
    assert [(p.prediction, p.reference) for p in got.pairs] == [(UNSORTED[0][3], UNSORTED[1][3])] + [
        (UNSORTED[1][3], UNSORTED[0][3])
    ]  # ad_index won: wrong pairs, but now reported
    note = got.notices()[0]
    assert note.startswith(
        "2 prediction(s) carry both ad_index and start/end pointing to different ground-truth ADs; ad_index was used "
        "(--match-by ad_index), first: p.jsonl:1 'm' ad_index=0 (GT 1.0-2.0) but start=10.0 end=11.0 (ad_index 1); "
        "p.jsonl:2 'm' ad_index=1 (GT 10.0-11.0) but start=1.0 end=2.0 (ad_index 0). "
    )
    assert note.endswith(f"{AD_INDEX_DEFINITION}; --match-by time pairs by start/end instead")
    by_times = match(preds, refs, match_by="time")
    assert [(p.prediction, p.reference) for p in by_times.pairs] == [(s, s) for *_, s in sorted(UNSORTED)]
    assert len(by_times.key_conflicts) == 2 and "start/end was used (--match-by time)" in by_times.notices()[0]


@pytest.mark.parametrize(
    ("pred", "conflict"),
    [
        ({"ad_index": 0, "start": 1.02, "end": 1.98}, None),  # agree within the tolerance
        ({"ad_index": 1, "start": 1.0, "end": 2.0}, "'m' ad_index=1 (GT 10.0-11.0) but start=1.0 end=2.0 (ad_index 0)"),
        ({"ad_index": 7, "start": 10.0, "end": 11.0}, "ad_index=7 (no such AD) but start=10.0 end=11.0 (ad_index 1)"),
        ({"ad_index": 0, "start": 50.0, "end": 51.0}, "ad_index=0 (GT 1.0-2.0) but start=50.0 end=51.0 (no GT AD)"),
        ({"ad_index": 0}, None),  # one key only
        ({"start": 10.0, "end": 11.0}, None),
    ],
)
def test_key_conflict_kinds(tmp_path, pred, conflict):
    refs = read_references(str(write_csv(tmp_path / "gt.csv", UNSORTED)))
    got = match([Prediction(movie="m", text="x", **pred)], refs)
    if conflict is None:
        assert got.key_conflicts == [] and got.notices() == []
    else:
        assert len(got.key_conflicts) == 1 and conflict in got.notices()[0]


def test_no_conflict_for_twins_or_untimed_ground_truth(tmp_path):
    refs = read_references(str(write_csv(tmp_path / "gt.csv", DUP_CASES["pair"])))
    preds = [Prediction("m", "x", ad_index=i, start=1.0, end=2.0) for i in (0, 1)]  # twins share their times
    assert match(preds, refs).key_conflicts == []
    untimed = [{"movie": "m", "ad_index": 0, "sentence": "a"}]
    assert evaluate([{"movie": "m", "ad_index": 0, "start": 5.0, "end": 6.0, "text": "a"}], untimed, metrics=(),
                    recall_k=None)["meta"]["matching"]["key_conflicts"] == 0  # fmt: skip


@needs_java
def test_row_order_ad_index_two_row_example_warns_and_match_by_time_fixes_it(tmp_path, capsys):
    gt = write_csv(tmp_path / "gt.csv", UNSORTED)
    pred = write_jsonl(tmp_path / "p.jsonl", row_numbered(UNSORTED))
    args = ["--pred", str(pred), "--gt", str(gt), "--metrics", "bleu", "--no-recall", "--no-progress"]
    main(args + ["--out", str(tmp_path / "a")])
    wrong = json.loads((tmp_path / "a.json").read_text())
    # "the ship sails into a storm" vs "a girl waves from the pier" and back: "the", "a" match -> 4/12
    assert wrong["BLEU-1"] == pytest.approx(100 / 3, rel=1e-6) and wrong["meta"]["matching"]["key_conflicts"] == 2
    err = capsys.readouterr().err
    assert err.count("WARNING distinctad.eval.harness: 2 prediction(s) carry both ad_index and start/end") == 1
    main(args + ["--out", str(tmp_path / "t"), "--match-by", "time"])
    right = json.loads((tmp_path / "t.json").read_text())
    assert right["BLEU-1"] == pytest.approx(100.0) and right["meta"]["matching"]["match_by"] == "time"


# --------------------------------------------------------------------------------------------------------------
# item 9: Recall@k/N windows are cut on the ground truth

TEXTS = [
    "alpha one",
    "bravo two",
    "charlie three",
    "delta four",
    "echo five",
    "foxtrot six",
    "golf seven",
    "hotel eight",
]


def test_recall_windows_are_cut_on_the_ground_truth():
    refs = [{"movie": "m", "ad_index": i, "sentence": t} for i, t in enumerate(TEXTS)]
    preds = [{"movie": "m", "ad_index": i, "text": t} for i, t in enumerate(TEXTS) if i != 3]
    preds[4]["text"] = TEXTS[6]  # prediction for AD 5 says AD 6's text: a miss at k=1 in window [4, 8)
    # N=4, stride 2: GT windows [0,4) [2,6) [4,8); AD 3 has no prediction, so only [4,8) is complete
    res = evaluate(preds, refs, metrics=(), recall_k=1, recall_n=4, allow_missing=True, progress=False)
    r = res["meta"]["recall"]
    assert (r["windows"], r["windows_skipped"]) == (1, 2) and res["per_movie"]["m"]["windows"] == 1
    assert r["window_rule"].startswith("windows of N consecutive ground-truth ADs; a window holding an AD without")
    # window [4,8): ADs 4, 6, 7 hit; 5 prefers GT 6 -> 3/4
    assert res["R@1/4"] == pytest.approx(75.0)
    assert (
        "R@k/4: 2 of 3 ground-truth windows skipped because they hold an AD without prediction (--allow-missing); "
        "scores are over the 1 complete windows" in res["meta"]["notices"]
    )
    assert "1 windows scored, 2 skipped" in to_markdown(res)


def test_recall_windows_skip_gaps_over_several_movies():
    refs = [{"movie": m, "ad_index": i, "sentence": f"{m} {t}"} for m in ("a", "b", "c") for i, t in enumerate(TEXTS)]
    keep = {("a", i) for i in range(8)} | {("b", 0), ("b", 7)}  # b: only its first and last; c: nothing
    preds = [{"movie": r["movie"], "ad_index": r["ad_index"], "text": r["sentence"]} for r in refs
             if (r["movie"], r["ad_index"]) in keep]  # fmt: skip
    res = evaluate(preds, refs, metrics=(), recall_k=1, recall_n=2, allow_missing=True, progress=False)
    # N=2, stride 1: 7 windows per movie. a: 7 scored; b: none complete; c: none
    assert res["meta"]["recall"]["windows"] == 7 and res["meta"]["recall"]["windows_skipped"] == 14
    assert res["per_movie"]["b"]["windows"] == 0 and res["per_movie"]["b"]["R@1/2"] is None
    assert "c" not in res["per_movie"] and res["R@1/2 movie-mean"] == pytest.approx(res["per_movie"]["a"]["R@1/2"])
    # a strict run has every window complete: nothing skipped, no notice
    strict = evaluate(preds[:8], refs[:8], metrics=(), recall_k=1, recall_n=2, progress=False)
    assert strict["meta"]["recall"]["windows_skipped"] == 0
    assert not any("skipped" in n for n in strict["meta"]["notices"])
