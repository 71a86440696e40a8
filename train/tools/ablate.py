"""``distinctad-ablate``: the Table D.2 grid (A0, B1–B3, C0–C3) on the same data, seed(s) and step budget.

    distinctad-ablate [CONFIG.yaml] [--rows A0,C3] [--seeds 0,1,2] [--out runs/ablation] [--section.key VALUE ...]
    deepspeed --num_gpus 2 -m distinctad.train.tools.ablate ...        (every row trains on all ranks)

Each row is a full Stage-II job (train, generate, evaluate) with only the switches of that row changed; its MLflow
run is a child of one parent run that also holds the resulting table (Markdown) and the mean metrics per row.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

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
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.epilog = (
        "CONFIG (optional, first): a Stage-II YAML (default launch/configs/stage2.yaml); any other "
        "--section.key VALUE is a config override applied to every row."
    )
    config = argv[0] if argv and not argv[0].startswith("-") else None
    args, overrides = p.parse_known_args(argv[1:] if config else argv)
    args.config = config
    return args, overrides


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict[str, list[dict[str, float]]], rows: list[str], switches: dict[str, dict]) -> str:
    head = "| row | α-path | β-path | λ_dist | seeds | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (5 + len(COLUMNS))]
    for row in rows:
        s = switches[row]
        vals = [fmt([r[f"eval/{c}"] for r in results[row] if f"eval/{c}" in r]) for c in COLUMNS]
        lines.append(
            f"| {row} | {'✓' if s['alpha_path'] else ''} | {'✓' if s['beta_path'] else ''} | "
            f"{s['lambda_dist']:g} | {len(results[row])} | " + " | ".join(vals) + " |"
        )
    return "\n".join(lines) + "\n"


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
    )
    parent.log_params(
        {"rows": ",".join(rows), "seeds": args.seeds, "config": config, "train.max_steps": base.train.max_steps}
    )
    results: dict[str, list[dict[str, float]]] = {r: [] for r in rows}
    status = "FAILED"
    try:
        for seed in seeds:
            for row in rows:
                name = f"{row}-seed{seed}"
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
        md = f"# Table D.2 ablation ({len(seeds)} seed(s), {base.train.max_steps} steps each)\n\n" + table(
            results, rows, switches
        )
        if D.is_master():
            atomic_write_text(out / "ablation.md", md)
            atomic_write_json(out / "ablation.json", results)
            parent.log_artifact(out / "ablation.md")
            parent.log_artifact(out / "ablation.json")
            for i, row in enumerate(rows):
                for c in COLUMNS:
                    vals = [r[f"eval/{c}"] for r in results[row] if f"eval/{c}" in r]
                    if vals:
                        parent.log_metrics({f"{row}/{c}": statistics.mean(vals)}, step=i)
            print(md)
        status = "FINISHED"
    finally:
        parent.close(status)
    D.shutdown()
    return results


if __name__ == "__main__":
    main()
