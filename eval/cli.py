"""``distinctad-eval``: score a predictions JSONL against ground truth and write a report.

Example:
    distinctad-eval --pred runs/c3/predictions.jsonl --gt data/assets/madeval_anno.csv --out runs/c3/report
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys

from distinctad.common import init_logger, set_threads
from distinctad.data import annotations
from distinctad.data.paths import PathProblem, check_dir, check_file, check_output_file, check_shards
from distinctad.data.provenance import SYNTHETIC_NOTE, synthetic_features
from distinctad.eval.captions import CAPTION_METRICS, MAX_TOKENS
from distinctad.eval.distinctiveness import NEIGHBOUR_BACKENDS
from distinctad.eval.errors import EvalEnvironmentError, EvalInputError
from distinctad.eval.harness import evaluate, log_to_mlflow, to_markdown, write_report
from distinctad.eval.inputs import (
    AD_INDEX_DEFINITION,
    DEFAULT_TIME_TOLERANCE,
    GT_DUPLICATE_POLICIES,
    MATCH_BY,
    read_predictions,
    read_references,
)
from distinctad.eval.java import DEFAULT_TIMEOUT_S
from distinctad.eval.normalize import Normalizer
from distinctad.eval.similarity import BACKENDS

logger = logging.getLogger(__name__)


def _metrics(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip() and m.strip().lower() != "none"]
    bad = [m for m in names if m not in CAPTION_METRICS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {bad}; choose from {','.join(CAPTION_METRICS)} or none")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The ``distinctad-eval`` argument parser (annotation options shared with ``distinctad-shards build``)."""
    p = argparse.ArgumentParser(
        prog="distinctad-eval",
        description="Score predicted ADs (JSONL) against ground truth: BLEU, METEOR, ROUGE-L, CIDEr, SPICE and "
        "Recall@k/N, overall and per movie.",
    )
    p.add_argument(
        "--pred",
        required=True,
        help=f"Predictions JSONL: one {{movie, ad_index | start+end, text}} a line. {AD_INDEX_DEFINITION}.",
    )
    p.add_argument(
        "--gt",
        required=True,
        help="Ground truth: an annotation CSV / MAD JSON, or window shards (a directory, a glob or one .tar).",
    )
    p.add_argument("--out", default=None, help="Report prefix: writes PREFIX.json and PREFIX.md (default: print only).")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="Score what matches instead of failing on missing, duplicate, unknown or empty predictions.",
    )
    p.add_argument(
        "--metrics",
        type=_metrics,
        default=list(CAPTION_METRICS),
        help="Comma-separated caption metrics among bleu,meteor,rouge,cider,spice, or none (default: all; SPICE "
        "is skipped with a notice when its Stanford models are absent).",
    )
    p.add_argument("--recall-k", type=int, nargs="+", default=[5], help="k for Recall@k/N; several allowed.")
    p.add_argument("--recall-n", type=int, default=16, help="N, the number of consecutive ADs per window.")
    p.add_argument("--recall-stride", type=int, default=None, help="Window stride (default: N/2, as AutoAD-II).")
    p.add_argument("--no-recall", action="store_true", help="Skip Recall@k/N.")
    p.add_argument("--backend", choices=BACKENDS, default="lexical", help="Similarity backend for Recall@k/N.")
    p.add_argument(
        "--backend-model",
        default=None,
        help="Local model directory for the embedding backend (an HF encoder) or bertscore (roberta-large).",
    )
    p.add_argument("--device", default=None, help="Torch device for model backends (default: cpu / bert-score's).")
    p.add_argument(
        "--distinct-k",
        type=int,
        default=3,
        help="Previous ADs that neighbour repetition (Rep@k) and consecutive duplicates (Dup@k) look at (default 3).",
    )
    p.add_argument(
        "--distinct-n",
        type=int,
        default=None,
        help="ADs per window for distinct-n and distinctive-word recall (default: --recall-n).",
    )
    p.add_argument(
        "--neighbour-backend",
        choices=NEIGHBOUR_BACKENDS,
        default="lexical",
        help="Similarity of neighbour repetition: lexical (default) or recall (the --backend of Recall@k/N).",
    )
    p.add_argument("--no-distinct", action="store_true", help="Skip the distinctiveness metrics.")
    p.add_argument(
        "--time-tolerance",
        type=float,
        default=DEFAULT_TIME_TOLERANCE,
        help="Seconds within which a prediction's start/end must match a GT AD (for predictions without ad_index).",
    )
    p.add_argument(
        "--match-by",
        choices=MATCH_BY,
        default="ad_index",
        help="Key for predictions that give both ad_index and start/end (default: ad_index). Either way, a "
        "prediction whose two keys point to different GT ADs is counted and reported.",
    )
    p.add_argument(
        "--gt-duplicates",
        choices=GT_DUPLICATE_POLICIES,
        default="match",
        help="Exact duplicate GT rows (same movie, start, end, text): 'match' keeps each and matches them one-to-one "
        "in order (default: the GT as published); 'drop' scores each duplicated AD once and ignores predictions for "
        "the extra rows. Reported either way.",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=MAX_TOKENS,
        help=f"Cut sentences longer than this many PTB tokens before the caption metrics, with a notice in the report "
        f"(default {MAX_TOKENS}; METEOR's Java runs out of memory on tens of thousands); 0: never.",
    )
    p.add_argument(
        "--java-timeout",
        type=float,
        default=None,
        help=f"Seconds each Java call (PTB tokenizer, METEOR request, SPICE) may take before it is stopped with an "
        f"error (default: {DEFAULT_TIMEOUT_S:g} s plus a per-sentence allowance).",
    )
    p.add_argument(
        "--gt-format",
        choices=[*annotations.FORMATS, "shards"],
        default=None,
        help="Ground-truth format (default: from the path).",
    )
    p.add_argument("--gt-columns", nargs="+", metavar="FIELD=COLUMN", default=None, help=annotations.COLUMNS_HELP)
    p.add_argument(
        "--bad-utf8",
        choices=annotations.BAD_UTF8_POLICIES,
        default=annotations.DEFAULT_BAD_UTF8,
        help=annotations.BAD_UTF8_HELP,
    )
    p.add_argument(
        "--timestamp-field",
        choices=annotations.TIMESTAMP_FIELDS,
        default="timestamps",
        help="MAD JSON field holding [start, end].",
    )
    p.add_argument(
        "--replace-names",
        default=None,
        help="Replace these character names by 'someone' in predictions and GT: a file (one a line, or JSON) or "
        "a comma-separated list.",
    )
    p.add_argument("--lowercase", action="store_true", help="Lower-case predictions and GT before scoring.")
    p.add_argument("--strip-punct", action="store_true", help="Remove punctuation from predictions and GT.")
    p.add_argument("--mlflow-experiment", default=None, help="Log metrics and the report to this MLflow experiment.")
    p.add_argument("--mlflow-run-name", default=None, help="MLflow run name (default: the predictions file name).")
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="Logging level.")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the arguments; a bad value exits with argparse's one-line usage error."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.recall_n < 1 or any(k < 1 or k > args.recall_n for k in args.recall_k):
        p.error(f"--recall-k must lie in [1, --recall-n={args.recall_n}], got {args.recall_k}")
    if args.recall_stride is not None and args.recall_stride < 1:
        p.error("--recall-stride must be >= 1")
    if args.time_tolerance < 0:
        p.error("--time-tolerance must be >= 0")
    if args.max_tokens < 0:
        p.error("--max-tokens must be >= 0")
    if args.java_timeout is not None and args.java_timeout <= 0:
        p.error("--java-timeout must be > 0")
    try:
        args.gt_columns = annotations.parse_columns(args.gt_columns, "--gt-columns")
    except ValueError as e:
        p.error(str(e))
    return args


def check_paths(args: argparse.Namespace) -> None:
    """Every path given, before anything is read (one line naming the flag and the path)."""
    check_file("--pred", args.pred, "predictions file")
    gt = args.gt
    if os.path.isdir(gt) and args.gt_format in (None, "shards"):
        if not glob.glob(os.path.join(gt, "*.tar")) + glob.glob(os.path.join(gt, "*.tar.gz")):
            raise PathProblem("--gt", gt, "folder holds no .tar shards")
    elif args.gt_format == "shards" or any(c in gt for c in "*?[") or gt.endswith((".tar", ".tar.gz")):
        check_shards("--gt", gt)
    else:
        check_file("--gt", gt, "annotation file")
    if args.out:
        check_output_file("--out", f"{args.out}.json")
    if args.backend != "lexical" and args.backend_model:
        check_dir("--backend-model", args.backend_model, "model folder")


def main(argv: list[str] | None = None) -> None:
    """Run the evaluation: print the Markdown report, write PREFIX.json/.md, log to MLflow when asked.

    Returns nothing, so that the console-script wrapper's ``sys.exit(main())`` exits with status 0.
    """
    args = parse_args(argv)
    init_logger(args.log_level.upper())
    set_threads()  # the embedding similarity backends run torch
    progress = False if args.no_progress else None
    try:
        check_paths(args)
        normalizer = Normalizer.from_options(args.replace_names, args.lowercase, args.strip_punct)
        preds = read_predictions(args.pred)
        refs = read_references(
            args.gt,
            fmt=args.gt_format,
            columns=args.gt_columns,
            bad_utf8=args.bad_utf8,
            timestamp_field=args.timestamp_field,
            columns_option="--gt-columns",
        )
        logger.info("%d predictions, %d ground-truth ADs", len(preds), len(refs))
        result = evaluate(
            preds,
            refs,
            metrics=args.metrics,
            recall_k=None if args.no_recall else args.recall_k,
            recall_n=args.recall_n,
            recall_stride=args.recall_stride,
            backend=args.backend,
            backend_model=args.backend_model,
            device=args.device,
            allow_missing=args.allow_missing,
            normalize=normalizer,
            time_tolerance=args.time_tolerance,
            gt_duplicates=args.gt_duplicates,
            match_by=args.match_by,
            max_tokens=args.max_tokens,
            java_timeout=args.java_timeout,
            progress=progress,
            distinct=not args.no_distinct,
            distinct_k=args.distinct_k,
            distinct_n=args.distinct_n,
            neighbour_backend=args.neighbour_backend,
        )
    except (EvalInputError, EvalEnvironmentError, PathProblem, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    result["meta"]["inputs"] = {"pred": os.path.abspath(args.pred), "gt": os.path.abspath(args.gt)}
    if synthetic_features(args.gt):  # ground truth given as SynthMAD feature-mode window shards
        result["meta"].setdefault("notices", []).append(SYNTHETIC_NOTE)
    paths: tuple[str, ...] = ()
    if args.out:
        paths = write_report(result, args.out)
        logger.info("wrote %s", " and ".join(paths))
    sys.stdout.write(to_markdown(result))
    if args.mlflow_experiment:
        params = {k: v for k, v in vars(args).items() if k not in ("mlflow_experiment", "log_level", "no_progress")}
        run_name = args.mlflow_run_name or os.path.splitext(os.path.basename(args.pred))[0]
        run_id = log_to_mlflow(result, args.mlflow_experiment, run_name=run_name, params=params, artifacts=paths)
        logger.info("logged to MLflow experiment %r, run %s", args.mlflow_experiment, run_id)


if __name__ == "__main__":
    main()
