"""Predictions/GT reading, matching problems, normalisation, and the distinctad-eval command end to end."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from distinctad.eval import Normalizer, evaluate
from distinctad.eval.cli import main
from distinctad.eval.errors import EvalInputError
from distinctad.eval.inputs import Prediction, as_references, match, read_predictions, read_shard_references
from distinctad.eval.normalize import load_names

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")

GT = [
    ("film.one", 0, 1.0, 2.0, "Ana opens the red door."),
    ("film.one", 1, 2.5, 4.0, "She looks at Ben."),
    ("film.one", 2, 4.5, 6.0, "Ben smiles."),
    ("film.one", 3, 7.0, 9.0, "A car drives away."),
    ("film2", 0, 0.0, 1.0, "Rain falls on the window."),
    ("film2", 1, 1.5, 3.0, "Ben reads a letter."),
]


def write_csv(path, rows=GT):
    lines = ["movie,sentence,start,end"] + [f'{m},"{s}",{a},{b}' for m, _, a, b, s in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, preds):
    path.write_text("".join(json.dumps(p) + "\n" for p in preds), encoding="utf-8")
    return path


def identity_preds(rows=GT):
    return [{"movie": m, "ad_index": i, "text": s} for m, i, _, _, s in rows]


def write_window_shard(path, windows):
    with tarfile.open(path, "w") as tar:
        for w in windows:
            key = f"{w['movie'].replace('.', '_')}__{w['ad_index'][0]:06d}"
            for ext, data in (("json", json.dumps(w).encode()), ("feats.npy", b"\x93NUMPY not read")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_malformed_and_non_utf8_prediction_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"movie": "film2", "ad_index": 0, "text": "x"}\n\n{"movie": "film2", "ad_index": 1,\n')
    with pytest.raises(EvalInputError, match=r"bad.jsonl:3: not valid JSON"):
        read_predictions(bad)
    raw = tmp_path / "latin1.jsonl"
    raw.write_bytes(
        b'{"movie": "film2", "ad_index": 0, "text": "ok"}\n{"movie": "film2", "ad_index": 1, "text": "caf\xe9"}\n'
    )
    with pytest.raises(EvalInputError, match=r"latin1.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 47\)"):
        read_predictions(raw)
    for line, msg in [
        ('{"movie": "m", "text": "x"}', "needs 'ad_index'"),
        ('{"movie": "m", "ad_index": -1, "text": "x"}', "non-negative integer"),
        ('{"movie": "m", "ad_index": 1, "text": 3}', "'text' must be a string"),
        ('["m", 1, "x"]', "expected a JSON object"),
    ]:
        (tmp_path / "p.jsonl").write_text(line + "\n")
        with pytest.raises(EvalInputError, match=rf"p.jsonl:1: .*{msg}"):
            read_predictions(tmp_path / "p.jsonl")


def test_matching_reports_every_problem_kind():
    refs = as_references([{"movie": m, "ad_index": i, "start": a, "end": b, "sentence": s} for m, i, a, b, s in GT])
    preds = [
        Prediction("film.one", "x", ad_index=0, where="p:1"),
        Prediction("film.one", "dup", ad_index=0, where="p:2"),
        Prediction("film.one", "   ", ad_index=1, where="p:3"),
        Prediction("film.one", "by time", start=4.52, end=5.97, where="p:4"),  # -> ad_index 2
        Prediction("film.one", "too far", start=7.2, end=9.0, where="p:5"),  # outside 0.05 s
        Prediction("Nope", "x", ad_index=0, where="p:6"),
        Prediction("film2", "x", ad_index=9, where="p:7"),
        Prediction("film2", "x", ad_index=1, where="p:8"),
    ]
    res = match(preds, refs, time_tolerance=0.05)
    s = res.summary()
    assert (s["matched"], s["missing"], s["duplicate"], s["unknown_movie"], s["unknown_ad"], s["empty"]) == (
        4,
        2,
        1,
        1,
        2,
        1,
    )
    assert [(p.movie, p.ad_index) for p in res.pairs] == [
        ("film.one", 0),
        ("film.one", 1),
        ("film.one", 2),
        ("film2", 1),
    ]
    assert res.pairs[2].prediction == "by time" and res.pairs[0].prediction == "x"
    assert [(r.movie, r.ad_index) for r in res.missing] == [("film.one", 3), ("film2", 0)]
    text = " | ".join(res.problems())
    assert "1 duplicate" in text and "p:2" in text and "1 unknown movie" in text and "'Nope'" in text
    assert "2 unknown AD" in text and "p:5" in text and "1 empty prediction text" in text and "p:3" in text


def test_references_conflict_and_dedupe():
    rows = [{"movie": "m", "ad_index": 0, "sentence": "a"}, {"movie": "m", "ad_index": 0, "sentence": "a"}]
    assert len(as_references(rows)) == 1  # the same AD from two overlapping windows
    with pytest.raises(EvalInputError, match="two different ADs"):
        as_references(rows + [{"movie": "m", "ad_index": 0, "sentence": "b"}])
    # without ad_index, ADs are numbered by a stable (start, end) sort per movie
    refs = as_references(
        [
            {"movie": "m", "start": 5.0, "end": 6.0, "sentence": "late"},
            {"movie": "m", "start": 1.0, "end": 2.0, "sentence": "early"},
        ]
    )
    assert [(r.ad_index, r.sentence) for r in refs] == [(0, "early"), (1, "late")]


def make_shards(tmp_path):
    """Two window shards (N=4) holding GT: film.one's 4 ADs, and film2's 2 ADs padded to 4."""
    (tmp_path / "shards").mkdir()
    w0 = {
        "movie": "film.one",
        "split": "eval",
        "window_index": 0,
        "ad_index": [0, 1, 2, 3],
        "sentence": [r[4] for r in GT[:4]],
        "start": [r[2] for r in GT[:4]],
        "end": [r[3] for r in GT[:4]],
        "context": [],
        "num_valid": 4,
    }
    w1 = {"movie": "film2", "split": "eval", "window_index": 0, "ad_index": [0, 1, -1, -1],
          "sentence": [GT[4][4], GT[5][4], "", ""], "start": [0.0, 1.5, 0, 0], "end": [1.0, 3.0, 0, 0],
          "context": [], "num_valid": 2}  # fmt: skip
    write_window_shard(tmp_path / "shards" / "eval-000000.tar", [w0])
    write_window_shard(tmp_path / "shards" / "eval-000001.tar", [w1])
    return tmp_path / "shards"


def test_window_shards_as_ground_truth(tmp_path):
    make_shards(tmp_path)
    refs = read_shard_references(str(tmp_path / "shards"))
    assert [(r.movie, r.ad_index, r.sentence) for r in refs] == sorted((m, i, s) for m, i, _, _, s in GT)
    assert refs[1].start == 2.5 and refs[1].end == 4.0
    assert len(read_shard_references(str(tmp_path / "shards" / "*-000001.tar"))) == 2
    with pytest.raises(EvalInputError, match="no .tar shards"):
        read_shard_references(str(tmp_path / "empty*"))


def test_normalizer_and_names(tmp_path):
    norm = Normalizer(names=("Harry", "Harry Potter"))
    assert norm("Harry Potter waves at Harryson.  Harry's\nowl") == "someone waves at Harryson. someone's owl"
    assert Normalizer(lowercase=True, strip_punct=True)("He SAYS: \u201cGo!\u201d") == "he says go"
    (tmp_path / "names.txt").write_text("Ana  # lead\n\nBen Stone\nAna\n")
    (tmp_path / "names.json").write_text(json.dumps({"m1": ["Ana"], "m2": ["Cy", "Ana"]}))
    assert load_names(str(tmp_path / "names.txt")) == ["Ana", "Ben Stone"]
    assert load_names(str(tmp_path / "names.json")) == ["Ana", "Cy"]
    assert load_names("Ana, Ben") == ["Ana", "Ben"]
    assert Normalizer.from_options(None) is None


def test_evaluate_fails_on_problems_unless_allowed():
    preds = identity_preds()[:-1] + [{"movie": "Nope", "ad_index": 0, "text": "x"}]
    with pytest.raises(EvalInputError, match=r"1 missing .*'film2' ad_index=1.*1 unknown movie.*--allow-missing"):
        evaluate(preds, [dict(zip(("movie", "ad_index", "start", "end", "sentence"), r)) for r in GT], metrics=())
    refs = [dict(zip(("movie", "ad_index", "start", "end", "sentence"), r)) for r in GT]
    res = evaluate(preds, refs, metrics=(), recall_k=1, recall_n=2, allow_missing=True, progress=False)
    assert res["meta"]["num_ads"] == 5 and res["meta"]["matching"]["unknown_movie"] == 1
    # film.one: 4 identical ADs, windows [0,2) [1,3) [2,4); film2 has only 1 matched AD left: no window
    assert res["per_movie"]["film.one"]["windows"] == 3 and res["per_movie"]["film2"]["windows"] == 0
    assert res["R@1/2"] == 100.0 and res["per_movie"]["film2"]["R@1/2"] is None


@needs_java
def test_cli_end_to_end_with_shards_names_and_report(tmp_path, capsys):
    gt = make_shards(tmp_path)
    preds = identity_preds()
    preds[0]["text"] = "Zed opens the red door."  # a different name: equal once names become "someone"
    preds[4] = {"movie": "film2", "start": 0.01, "end": 0.99, "text": GT[4][4]}  # keyed by time
    pred = write_jsonl(tmp_path / "preds.jsonl", preds)
    out = tmp_path / "report" / "run1"
    args = ["--pred", str(pred), "--gt", str(gt), "--no-progress"]
    main(args + ["--out", str(out), "--metrics", "bleu,rouge,cider,spice", "--recall-k", "1", "2", "--recall-n", "2",
                 "--replace-names", "Ana,Ben,Zed"])  # fmt: skip
    data = json.loads((tmp_path / "report" / "run1.json").read_text())
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L"):
        assert data[name] == pytest.approx(100.0, abs=1e-6)
    assert data["meta"]["normalization"]["replace_names"] == 3
    assert data["R@1/2"] == 100.0 and data["meta"]["recall"]["windows"] == 3 + 1
    assert set(data["per_movie"]) == {"film.one", "film2"} and data["per_movie"]["film2"]["ADs"] == 2
    md = (tmp_path / "report" / "run1.md").read_text()
    assert "| BLEU-4 | 100.00 |" in md and "| film.one | 4 | 3 |" in md and "lexical" in md
    if "SPICE" not in data:
        assert "SPICE skipped:" in md
    assert "| R@1/2 | 100.00 |" in capsys.readouterr().out
    # without the name replacement the first AD differs, so BLEU drops below 100
    main(args + ["--out", str(tmp_path / "plain"), "--metrics", "bleu", "--no-recall"])
    assert json.loads((tmp_path / "plain.json").read_text())["BLEU-4"] < 99.0


def test_cli_bad_input_is_one_line_error(tmp_path):
    gt = write_csv(tmp_path / "gt.csv")
    pred = write_jsonl(tmp_path / "preds.jsonl", identity_preds() + [{"movie": "Nope", "ad_index": 0, "text": "x"}])
    with pytest.raises(SystemExit, match=r"^error: predictions do not match.*1 unknown movie.*'Nope'"):
        main(["--pred", str(pred), "--gt", str(gt), "--metrics", "none", "--no-progress"])
    empty = write_jsonl(
        tmp_path / "empty.jsonl", identity_preds()[:-1] + [{"movie": "film2", "ad_index": 1, "text": ""}]
    )
    with pytest.raises(SystemExit, match=r"1 empty prediction text, first: .*empty.jsonl:6"):
        main(["--pred", str(empty), "--gt", str(gt), "--metrics", "none", "--no-progress"])
    (tmp_path / "broken.jsonl").write_text('{"movie": "film2"\n')
    with pytest.raises(SystemExit, match=r"^error: .*broken.jsonl:1: not valid JSON"):
        main(["--pred", str(tmp_path / "broken.jsonl"), "--gt", str(gt)])
    bad_gt = tmp_path / "bad.csv"
    bad_gt.write_bytes(b"movie,sentence,start,end\nm,ok,0,1\nm,caf\x80,1,2\n")
    with pytest.raises(SystemExit, match=r"^error: .*bad.csv:3: invalid UTF-8"):
        main(["--pred", str(pred), "--gt", str(bad_gt), "--bad-utf8", "error"])
    with pytest.raises(SystemExit):  # argparse: k > N
        main(["--pred", str(pred), "--gt", str(gt), "--recall-k", "5", "--recall-n", "4"])


def test_cli_java_missing_says_how_to_install(tmp_path, monkeypatch):
    gt = write_csv(tmp_path / "gt.csv")
    pred = write_jsonl(tmp_path / "preds.jsonl", identity_preds())
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install default-jre-headless"):
        main(["--pred", str(pred), "--gt", str(gt), "--metrics", "bleu", "--no-progress"])


def test_cli_logs_to_mlflow(tmp_path, monkeypatch):
    import mlflow

    gt = write_csv(tmp_path / "gt.csv")
    preds = identity_preds()
    preds[1]["text"] = GT[2][4]  # prediction 1 now equals GT 2: misses in the windows holding both
    pred = write_jsonl(tmp_path / "preds.jsonl", preds)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts land under the working directory
    main(["--pred", str(pred), "--gt", str(gt), "--metrics", "none", "--recall-k", "1", "--recall-n", "2",
          "--out", str(tmp_path / "rep"), "--mlflow-experiment", "eval-test", "--no-progress"])  # fmt: skip
    res = json.loads((tmp_path / "rep.json").read_text())
    # film.one windows of 2, stride 1: [0,1]: pred 1 "Ben smiles." shares "ben" with GT 1 and nothing with GT 0:
    # hit -> 1; [1,2]: pred 1 equals GT 2 -> miss, pred 2 hit -> 1/2; [2,3]: 1. film2 [0,1]: 1.
    assert res["R@1/2"] == pytest.approx(100 * (1 + 0.5 + 1 + 1) / 4)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["eval-test"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["eval/R_at_1_of_2"] == pytest.approx(res["R@1/2"])
    assert run.data.metrics["eval/movie/film.one/R_at_1_of_2"] == pytest.approx(100 * (1 + 0.5 + 1) / 3)
    assert run.data.params["backend"].startswith("lexical") and run.info.run_name == "preds"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"rep.json", "rep.md"}
