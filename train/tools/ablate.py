"""``distinctad-ablate``: the Table D.2 grid (A0, B1–B3, C0–C3) on the same data, seed(s) and step budget.

    distinctad-ablate [CONFIG.yaml] [--rows A0,C3] [--seeds 0,1,2] [--out runs/ablation] [--section.key VALUE ...]
    deepspeed --num_gpus 2 -m distinctad.train.tools.ablate ...        (every row trains on all ranks)

Each row is a full Stage-II job (train, generate, evaluate) with only the switches of that row changed; its MLflow
run is a child of one parent run whose description holds the resulting table. The table gives each metric as
mean ± std over the seeds and, for every row against the baseline (A0), the paired-bootstrap 95% interval of the
difference over ADs pooled over seeds, marking the significant ones; the Recall column names its similarity backend.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from distinctad.data.provenance import SYNTHETIC_LABEL, dataset_record, synthetic_features
from distinctad.eval.captions import keep_meteor
from distinctad.train.tools.compare import (
    DISTINCT_COLUMNS,
    column_label,
    difference_table,
    fmt,
    latest_report,
    mlflow_column,
)

logger = logging.getLogger(__name__)
COLUMNS = ["CIDEr", "R@5/16", "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L"]
"""Metric columns of the results tables, in order: this one and the quick start's (eval harness report keys)."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="distinctad-ablate",
        description=__doc__,
        usage="%(prog)s [CONFIG.yaml] [options] [--section.key VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", default="A0,B1,B2,B3,C0,C1,C2,C3", help="Table D.2 rows to run, comma-separated.")
    p.add_argument("--seeds", default="0", help="Seeds, comma-separated; the table shows mean ± std over them.")
    p.add_argument("--out", default="runs/ablation", help="Folder for the rows' run directories and the table.")
    p.add_argument(
        "--prefix",
        default="",
        help="Prefix of the rows' run names and folders ('clipad-' gives clipad-A0-seed0); default none.",
    )
    p.add_argument(
        "--baseline",
        default="A0",
        help="Row every other row is compared with (paired bootstrap 95%% interval over ADs pooled over seeds).",
    )
    p.add_argument(
        "--bootstrap", type=int, default=2000, help="Bootstrap resamples for the difference intervals (our default)."
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.epilog = (
        "CONFIG (optional, first): a Stage-II YAML (default launch/configs/stage2.yaml); any other "
        "--section.key VALUE is a config override applied to every row."
    )
    config = argv[0] if argv and not argv[0].startswith("-") else None
    args, overrides = p.parse_known_args(argv[1:] if config else argv)
    args.config = config
    return args, overrides


def table(
    results: dict[str, list[dict[str, float]]],
    rows: list[str],
    switches: dict[str, dict],
    *,
    backend: str | None = "lexical",
) -> str:
    """The grid as Markdown: one line per row, each metric as mean ± std over its seeds (``eval/`` keys)."""
    cols = COLUMNS + DISTINCT_COLUMNS
    head = "| row | α-path | β-path | λ_dist | seeds | " + " | ".join(column_label(c, backend) for c in cols) + " |"
    lines = [head, "|" + "---|" * (5 + len(cols))]
    for row in rows:
        s = switches[row]
        vals = [fmt([r[f"eval/{c}"] for r in results[row] if f"eval/{c}" in r]) for c in cols]
        lines.append(
            f"| {row} | {'✓' if s['alpha_path'] else ''} | {'✓' if s['beta_path'] else ''} | "
            f"{s['lambda_dist']:g} | {len(results[row])} | " + " | ".join(vals) + " |"
        )
    return "\n".join(lines) + "\n"


def title(seeds: int, steps: int, eval_shards: str, synthetic: bool) -> str:
    """The table's heading: what was run, and on what data (synthetic features said in words)."""
    data = f"SynthMAD, {SYNTHETIC_LABEL}" if synthetic else (eval_shards or "eval shards")
    return f"# Table D.2 ablation ({seeds} seed(s), {steps} steps each; {data})\n"


def main(argv: list[str] | None = None) -> None:
    """Console entry point (a console script's return value would become its exit status)."""
    run_ablation(argv)


def run_ablation(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the grid; returns ``{row: [eval metrics per seed]}``."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from distinctad.common import atomic_write_json, atomic_write_text, init_logger, resolve_path
    from distinctad.train.core import distributed as D
    from distinctad.train.core.config import ConfigError, load_config
    from distinctad.train.core.tracking import ParentRun
    from distinctad.train.jobs import get_job
    from distinctad.train.main import strip_launcher_args
    from distinctad.train.models.captioner_config import PRESETS
    from distinctad.train.stage2.config import Stage2Job

    overrides = strip_launcher_args(overrides)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in PRESETS]
    if unknown:
        raise SystemExit(f"error: unknown row(s) {unknown}; choose from {list(PRESETS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"error: --seeds must be comma-separated integers, got {args.seeds!r}") from None
    config = args.config or str(resolve_path(get_job("stage2").default_yaml))
    try:
        base = load_config(Stage2Job, config, overrides)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None

    _, rank, _ = D.init_distributed()
    init_logger(rank=rank)
    out = Path(args.out)
    parent = ParentRun(
        base.tracking.uri,
        base.tracking.experiment,
        f"ablation-{out.name}",
        enabled=base.tracking.enabled and D.is_master(),
        parent_run_id=base.tracking.parent_run_id,  # a pipeline's grid nests under the pipeline's run
    )
    parent.log_params(
        {"rows": ",".join(rows), "seeds": args.seeds, "config": config, "train.max_steps": base.train.max_steps}
    )
    for shards, context in ((base.data.train_shards, "training"), (base.data.eval_shards, "evaluation")):
        parent.log_dataset(dataset_record(shards, context) if shards else None)
    results: dict[str, list[dict[str, float]]] = {r: [] for r in rows}
    status = "FAILED"
    try:
        with keep_meteor():  # one METEOR process scores every run's evaluation (its JVM takes ~10 s to start)
            for seed in seeds:
                for row in rows:
                    name = f"{args.prefix}{row}-seed{seed}"
                    # the preset comes first: a switch the user overrides explicitly still wins over the row's
                    cfg = load_config(
                        Stage2Job,
                        config,
                        [
                            "--model.preset",
                            row,
                            *overrides,
                            "--run.name",
                            name,
                            "--run.out_dir",
                            str(out / name),
                            "--run.seed",
                            str(seed),
                        ],
                    )
                    cfg.tracking.parent_run_id = parent.run_id or cfg.tracking.parent_run_id
                    logger.info("=== ablation row %s, seed %d ===", row, seed)
                    summary = get_job("stage2").run(cfg)
                    results[row].append({k: v for k, v in summary.items() if k.startswith("eval/")})
        switches = {r: PRESETS[r] for r in rows}
        reports = {row: [latest_report(out / f"{args.prefix}{row}-seed{seed}") for seed in seeds] for row in rows}
        backend = next((r["meta"].get("backend") for rs in reports.values() for r in rs if r), base.eval.backend)
        synthetic = synthetic_features(base.data.train_shards or base.data.eval_shards) or not (
            base.data.train_shards and base.data.eval_shards
        )
        md = title(len(seeds), base.train.max_steps, base.data.eval_shards, synthetic) + "\n"
        md += table(results, rows, switches, backend=backend)
        if args.baseline in rows and len(rows) > 1:
            others = [r for r in rows if r != args.baseline]
            diff, _ = difference_table(
                others,
                {r: reports[r] for r in others},
                reports[args.baseline],
                COLUMNS + DISTINCT_COLUMNS,
                backend,
                base_name=args.baseline,
                resamples=args.bootstrap,
            )
            md += "\n" + diff
        if synthetic:
            md += (
                f"\nOn {SYNTHETIC_LABEL}: SynthMAD's feature-mode windows are exact sums of factor embeddings, so "
                "subtracting the shared context is trivially right there. For numbers to report, use frames -> "
                "Stage-I -> distinctad-extract features (README, Stage-I).\n"
            )
        if D.is_master():
            atomic_write_text(out / "ablation.md", md)
            atomic_write_json(out / "ablation.json", results)
            parent.log_artifact(out / "ablation.md")
            parent.log_artifact(out / "ablation.json")
            parent.set_description(md)
            for c in COLUMNS + DISTINCT_COLUMNS:
                means = {
                    row: statistics.mean(v)
                    for row in rows
                    if (v := [r[f"eval/{c}"] for r in results[row] if r.get(f"eval/{c}") is not None])
                }
                if means:
                    parent.log_configs(f"rows/{mlflow_column(c, backend)}", means)
            print(md)
        status = "FINISHED"
    finally:
        parent.close(status)
    D.shutdown()
    return results


if __name__ == "__main__":
    main()
