"""The one predictions-JSONL and samples-table writer (distinctad.eval.outputs) that the jobs and tools share."""

from __future__ import annotations

import json
from types import SimpleNamespace

from distinctad.eval.inputs import read_predictions
from distinctad.eval.outputs import write_predictions, write_samples_table

PREDS = [
    {"movie": "m2", "ad_index": 0, "text": "Bo runs."},
    {"movie": "m1", "ad_index": 3, "text": "Ana | waves\nback."},
    {"movie": "m1", "ad_index": 1, "text": "Ana sits."},
]
REFS = [
    SimpleNamespace(movie="m1", ad_index=1, sentence="Ana sits down."),
    SimpleNamespace(movie="m1", ad_index=3, sentence="Ana waves."),
]


def test_predictions_are_sorted_jsonl_the_harness_reads_back(tmp_path):
    path = write_predictions(tmp_path / "sub" / "p.jsonl", PREDS)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == sorted(PREDS, key=lambda p: (p["movie"], p["ad_index"]))
    back = read_predictions(path)
    assert [(p.movie, p.ad_index, p.text) for p in back] == [
        ("m1", 1, "Ana sits."),
        ("m1", 3, "Ana | waves\nback."),
        ("m2", 0, "Bo runs."),
    ]


def test_samples_table_rows_in_given_order_cells_escaped(tmp_path):
    path = write_samples_table(tmp_path / "s.md", PREDS, REFS, column="reconstruction")
    assert path.read_text().splitlines() == [
        "| movie | AD | ground truth | reconstruction |",
        "|---|---:|---|---|",
        "| m2 | 0 |  | Bo runs. |",  # no reference: empty cell
        "| m1 | 3 | Ana waves. | Ana \\| waves back. |",  # one line, pipe escaped
        "| m1 | 1 | Ana sits down. | Ana sits. |",
    ]
    assert (
        write_samples_table(tmp_path / "g.md", [], REFS)
        .read_text()
        .startswith("| movie | AD | ground truth | generated |\n")
    )
