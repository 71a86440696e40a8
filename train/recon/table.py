"""Table A.1 in Markdown: the supplementary's two rows beside the rows of recon runs.

``python -m distinctad.train.recon.table --runs RUN_DIR [RUN_DIR ...] [--out FILE]`` puts the latest row of each
finished run (``eval/step_*_table_a1.json``) into one table. Torch-free, so the command is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distinctad.common import atomic_write_text
from distinctad.train.models.clip_names import TINY_MODEL
from distinctad.train.recon.config import ReconModelArgs

PAPER_TABLE_A1: dict[str, dict[str, float]] = {
    "cls": {
        "BLEU-1": 29.3,
        "BLEU-2": 16.4,
        "BLEU-3": 9.2,
        "BLEU-4": 5.1,
        "METEOR": 13.2,
        "ROUGE-L": 29.4,
        "CIDEr": 92.2,
        "SPICE": 19.4,
    },
    "words": {
        "BLEU-1": 80.8,
        "BLEU-2": 74.4,
        "BLEU-3": 68.4,
        "BLEU-4": 63.0,
        "METEOR": 47.4,
        "ROUGE-L": 82.4,
        "CIDEr": 612.5,
        "SPICE": 66.4,
    },
}
"""Table A.1 of the supplementary (DESIGN.md §7): MAD-Eval scores ×100 of a frozen CLIP text tower + 1 linear
projector + frozen GPT-2, trained 10 epochs on MAD-v2-Named."""
PAPER_SOURCE = "paper (CLIP text + GPT-2, MAD-v2-Named → MAD-Eval)"
"""The Source cell of the paper's rows (the supplementary does not name the CLIP architecture)."""
ROW_NAMES = {"cls": "[CLS]", "words": "all word tokens"}
"""Table A.1's row label of each ``model.projector_input``."""
TABLE_COLUMNS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"]
"""Columns of Table A.1 (eval-harness metric names)."""


def _fmt(x: float | None) -> str:
    """One score cell: one decimal, "–" when missing or NaN."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def table_a1_markdown(
    rows: Sequence[dict[str, Any]],
    title: str = "Table A.1: AD reconstruction from frozen CLIP text embeddings",
    notes: Sequence[str] = (),
) -> str:
    """Table A.1 in Markdown: the paper's two rows, then ``rows``.

    Args:
        rows: dicts with ``projector_input`` ("cls" | "words"), ``metrics`` (harness keys, ×100) and optionally
            ``source`` (a short description of the run).
        notes: lines added under the table.
    """
    cols = TABLE_COLUMNS
    lines = [
        f"# {title}",
        "",
        "| Projector input | Source | " + " | ".join(cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for key in ("cls", "words"):
        paper = PAPER_TABLE_A1[key]
        lines.append(f"| {ROW_NAMES[key]} | {PAPER_SOURCE} | " + " | ".join(_fmt(paper.get(c)) for c in cols) + " |")
    for row in rows:
        metrics = row["metrics"]
        lines.append(
            f"| {ROW_NAMES[row['projector_input']]} | {row.get('source', 'this run')} | "
            + " | ".join(_fmt(metrics.get(c)) for c in cols)
            + " |"
        )
    lines += ["", "Scores ×100 (– = not computed)."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def describe_models(m: ReconModelArgs) -> str:
    """A short name of the frozen parts for the table, e.g. "ViT-B-32 + gpt2" (call before
    :func:`~distinctad.train.recon.task.resolve_models` turns the names into paths)."""
    clip = "tiny random CLIP" if m.clip_model == TINY_MODEL and not m.clip_pretrained else m.clip_model
    llm = "tiny GPT-2" if m.llm == "tiny-gpt2" else Path(m.llm).name or m.llm
    if m.pretrain_steps:
        llm += f" pre-trained {m.pretrain_steps} steps on the training ADs"
        llm += f" (+{m.pretrain_repeat:.0%} copy rows)" if m.pretrain_repeat else ""
    return f"{clip} + {llm}"


def collect_rows(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The latest Table A.1 row (``eval/step_*_table_a1.json``) of each run directory."""
    rows = []
    for run_dir in run_dirs:
        found = sorted(Path(run_dir).glob("eval/step_*_table_a1.json"))
        if not found:
            raise FileNotFoundError(f"no eval/step_*_table_a1.json in {run_dir} (has the recon run evaluated?)")
        rows.append(json.loads(found[-1].read_text()))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The table command's flags (``--runs``, ``--out``)."""
    p = argparse.ArgumentParser(
        prog="python -m distinctad.train.recon.table",
        description="Put the Table A.1 rows of finished recon runs into one Markdown table "
        "beside the paper's numbers (train with launch/recon.sh).",
    )
    p.add_argument(
        "--runs", nargs="+", required=True, help="Run directories of recon jobs (e.g. a cls and a words run)."
    )
    p.add_argument("--out", default="", help="Write the table to this Markdown file (it is printed either way).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print (and with ``--out`` write) the Table A.1 of the runs in ``argv``; a missing row is a one-line error."""
    args = parse_args(argv)
    try:
        rows = collect_rows(args.runs)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {e}") from None
    text = table_a1_markdown(rows)
    if args.out:
        atomic_write_text(args.out, text)
    print(text, end="")


if __name__ == "__main__":
    main(sys.argv[1:])
