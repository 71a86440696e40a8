"""What a scoring run writes beside the report: the predictions JSONL and a table of samples.

The training jobs, ``distinctad-generate`` and the quick start all write these two files through here, so they
have one format: the JSONL :func:`distinctad.eval.inputs.read_predictions` reads back (one object a line, sorted by
movie and AD index), and a Markdown table of ADs beside their ground truth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from distinctad.common import atomic_write_text


def write_predictions(path: str | os.PathLike, predictions: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``{"movie", "ad_index", "text", ...}`` predictions as JSONL sorted by (movie, ad_index), atomically.

    Returns:
        ``path`` as a Path.
    """
    rows = sorted(predictions, key=lambda p: (p["movie"], p["ad_index"]))
    atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in rows))
    return Path(path)


def write_samples_table(
    path: str | os.PathLike,
    predictions: Iterable[Mapping[str, Any]],
    references: Iterable[Any],
    column: str = "generated",
) -> Path:
    """Write a Markdown table of ``predictions`` (in the order given) beside their ground truth, atomically.

    Args:
        path: the ``.md`` file to write.
        predictions: the rows to show, each with ``movie``, ``ad_index`` and ``text``.
        references: ground truth with ``movie``, ``ad_index`` and ``sentence`` attributes (eval references or
            annotation ADs); a prediction without one shows an empty cell.
        column: heading of the predictions' column.

    Returns:
        ``path`` as a Path.
    """
    gt = {(r.movie, r.ad_index): r.sentence for r in references}
    lines = [f"| movie | AD | ground truth | {column} |", "|---|---:|---|---|"]
    for p in predictions:
        cells = (p["movie"], p["ad_index"], gt.get((p["movie"], p["ad_index"]), ""), p["text"])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def _cell(value: Any) -> str:
    """A table cell: one line, ``|`` escaped (an AD may contain either)."""
    return " ".join(str(value).split()).replace("|", "\\|")
