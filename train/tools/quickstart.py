"""The quick start: SynthMAD → shards → Stage-I → features → Stage-II → generation → evaluation, one command.

    bash launch/quickstart.sh [--work work/quickstart] [--fresh] [...]

Every step is run as the command a user would type on real MAD data (it is printed first), so the log doubles as
a recipe. A step whose output is complete is skipped when the pipeline is run again. The runs are grouped in
MLflow under one parent run, which also holds the results table; the table compares vanilla CLIP features with
CLIP-AD features, and the A0 baseline with the full DistinctAD configuration C3.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distinctad.common import atomic_write_text
from distinctad.data.provenance import SYNTHETIC_LABEL, synthetic_features
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.tools.ablate import COLUMNS
from distinctad.train.tools.compare import (
    DISTINCT_COLUMNS,
    column_label,
    difference_table,
    fmt,
    latest_report,
    mlflow_column,
)

FEATURES = {"vanilla": "vanilla CLIP", "clipad": "CLIP-AD"}

REPO = Path(__file__).resolve().parents[2]
"""The installed checkout; its ``launch/`` is only the default of :func:`main`'s ``launch_dir``."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work", default="work/quickstart", help="Folder for data, shards, runs and the results table.")
    p.add_argument("--movies", type=int, default=4, help="SynthMAD movies (the last one is the eval split).")
    p.add_argument("--ads-per-movie", type=int, default=48, help="SynthMAD ADs per movie.")
    p.add_argument("--stage1-steps", type=int, default=120, help="Stage-I optimizer steps.")
    p.add_argument(
        "--stage2-steps",
        type=int,
        default=100,
        help="Stage-II optimizer steps per configuration and seed (3 seeds x 100 = the 300 of one seed before).",
    )
    p.add_argument("--configs", default="A0,C3", help="Table D.2 rows to train in Stage-II (comma-separated).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the data, of Stage-I and of the feature extraction.")
    p.add_argument(
        "--seeds",
        default="0,1,2",
        help="Stage-II seeds, comma-separated: every configuration trains once per seed, and the table gives mean ± "
        "std and whether C3 - A0 is significant (paired bootstrap over ADs pooled over seeds).",
    )
    p.add_argument("--num-beams", type=int, default=GenerationArgs().num_beams, help="Beam width of generation.")
    p.add_argument("--experiment", default="distinctad-quickstart", help="MLflow experiment.")
    p.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow URI; empty: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder.",
    )
    p.add_argument("--fresh", action="store_true", help="Redo every step (delete the work folder's runs first).")
    return p.parse_args(argv)


@dataclass
class StepTimer:
    """Wall time per step, for the closing table and benchmarks/pipeline.py."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, name: str, seconds: float, status: str) -> None:
        self.rows.append((name, seconds, status))


def run_step(name: str, cmd: list[str], *, done: bool, timer: StepTimer, env: dict[str, str]) -> None:
    """Print the command; run it unless its output is already complete."""
    shown = shlex.join(cmd)
    if done:
        print(f"\n[{name}] already done, skipping:  $ {shown}", flush=True)
        timer.add(name, 0.0, "reused")
        return
    print(f"\n[{name}]  $ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **env})
    timer.add(name, time.perf_counter() - t0, "ran")
    if proc.returncode != 0:
        raise SystemExit(
            f"error: step '{name}' failed (exit {proc.returncode}); fix it and re-run: finished steps are reused"
        )


def finished(run_dir: Path) -> bool:
    f = run_dir / "summary.json"
    return f.is_file() and json.loads(f.read_text()).get("finished", False)


def main(argv: list[str] | None = None, launch_dir: str | os.PathLike | None = None) -> None:
    """Run the quick start.

    Args:
        argv: the command line (default ``sys.argv[1:]``).
        launch_dir: the ``launch/`` folder whose job launchers and configs the steps run. ``launch/quickstart.sh``
            passes its own folder, so a clone runs its own files even when ``pip install -e`` points at another
            checkout; default: the installed checkout's.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.launch_dir = str(Path(launch_dir).resolve() if launch_dir else REPO / "launch")
    from distinctad.common import init_logger
    from distinctad.train.core.tracking import ParentRun, tracking_uri

    init_logger()
    work = Path(args.work)
    if args.fresh and work.exists():
        import shutil

        shutil.rmtree(work / "runs", ignore_errors=True)
        shutil.rmtree(work / "results", ignore_errors=True)
    uri = tracking_uri(args.tracking_uri)
    # a re-run reuses the parent of the first (stored beside the results): no second parent with the same numbers
    parent_file = work / "results" / "mlflow_parent.json"
    previous = json.loads(parent_file.read_text()) if parent_file.is_file() else {}
    parent = ParentRun(
        uri,
        args.experiment,
        f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}",
        resume_run_id=previous.get("run_id", "") if previous.get("uri") == uri else "",
    )
    if parent.run_id and not parent.resumed:
        atomic_write_text(parent_file, json.dumps({"uri": uri, "run_id": parent.run_id}) + "\n")
    env = {"MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    track = [
        "--tracking.uri",
        uri,
        "--tracking.experiment",
        args.experiment,
        *(["--tracking.parent_run_id", parent.run_id] if parent.run_id else []),
    ]
    parent.log_params(vars(args))
    timer = StepTimer()
    status = "FAILED"
    try:
        results = _pipeline(args, work, track, env, timer, parent)
        status = "FINISHED"
    finally:
        parent.close(status)
    _print_closing(results, timer, work, uri, parent)


def _pipeline(args, work: Path, track: list[str], env: dict[str, str], timer: StepTimer, parent) -> dict:
    synth, shards, runs, res = work / "synth", work / "shards", work / "runs", work / "results"
    launch = Path(args.launch_dir)
    feats_ready = {}

    # 1. data
    run_step(
        "SynthMAD",
        [
            "distinctad-shards",
            "synth",
            "--out",
            str(synth),
            "--movies",
            str(args.movies),
            "--ads-per-movie",
            str(args.ads_per_movie),
            "--seed",
            str(args.seed),
            "--videos",
            "--features",
        ],
        done=(synth / "annotations.json").is_file(),
        timer=timer,
        env=env,
    )
    for split, key in (("train", "TRAIN"), ("eval", "EVAL")):
        out = shards / f"frames-{split}"
        run_step(
            f"frames shards ({split})",
            [
                "distinctad-shards",
                "build",
                "--annotations",
                str(synth / "annotations.json"),
                "--videos",
                str(synth / "videos"),
                "--kind",
                "frames",
                "--split",
                split,
                "--split-file",
                str(synth / "splits.json"),
                "--split-key",
                key,
                "--maxcount",
                "4",
                "--no-progress",
                "--out",
                str(out),
            ],
            done=(out / "manifest.json").is_file(),
            timer=timer,
            env=env,
        )

    # 2. Stage-I
    s1 = runs / "stage1"
    run_step(
        "Stage-I (CLIP-AD)",
        [
            "bash",
            str(launch / "stage1.sh"),
            str(launch / "configs/stage1.yaml"),
            "--run.name",
            "stage1",
            "--run.out_dir",
            str(s1),
            "--run.seed",
            str(args.seed),
            "--train.max_steps",
            str(args.stage1_steps),
            "--data.train_shards",
            str(shards / "frames-train"),
            "--data.eval_shards",
            str(shards / "frames-eval"),
            *track,
        ],
        done=finished(s1) and (s1 / "clip_ad").is_dir(),
        timer=timer,
        env=env,
    )
    for png in sorted((s1 / "fig_b2").glob("*.png"))[-1:]:
        parent.log_artifact(png, "fig_b2")

    # 3. features: vanilla CLIP (the Stage-I model as initialised) and CLIP-AD
    for name, source in (
        ("vanilla", ["--model", "distinctad-tiny", "--seed", str(args.seed)]),
        ("clipad", ["--pretrained", str(s1)]),
    ):
        for split in ("train", "eval"):
            out = shards / f"feats-{name}-{split}"
            run_step(
                f"extract {name} ({split})",
                [
                    "distinctad-extract",
                    "--frames",
                    str(shards / f"frames-{split}"),
                    "--out",
                    str(out),
                    "--maxcount",
                    "2",
                    "--no-progress",
                    *source,
                ],
                done=(out / "manifest.json").is_file(),
                timer=timer,
                env=env,
            )
        feats_ready[name] = (shards / f"feats-{name}-train", shards / f"feats-{name}-eval")

    # 4. Stage-II: each feature set's configurations x seeds in one distinctad-ablate process (train + in-process
    # generation and scoring: every child run carries its own eval metrics, report and samples)
    results: dict[str, list[dict]] = {}
    dim = json.loads((shards / "feats-vanilla-train" / "manifest.json").read_text()).get("feature_dim", 64)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    rows = [r.strip() for r in args.configs.split(",") if r.strip()]
    gen = GenerationArgs()
    for feat, (train_dir, eval_dir) in feats_ready.items():
        out = runs / f"stage2-{feat}"
        run_step(
            f"Stage-II {feat} ({','.join(rows)} x {len(seeds)} seeds)",
            [
                "distinctad-ablate",
                str(launch / "configs/stage2.yaml"),
                "--rows",
                ",".join(rows),
                "--seeds",
                ",".join(map(str, seeds)),
                "--prefix",
                f"{feat}-",
                "--out",
                str(out),
                "--train.max_steps",
                str(args.stage2_steps),
                "--data.train_shards",
                str(train_dir),
                "--data.eval_shards",
                str(eval_dir),
                "--model.feature_dim",
                str(dim),
                "--eval.generation.num_beams",
                str(args.num_beams),
                "--eval.generation.max_new_tokens",
                str(gen.max_new_tokens),
                *track,
            ],
            done=(out / "ablation.md").is_file()
            and all(finished(out / f"{feat}-{r}-seed{sd}") for r in rows for sd in seeds),
            timer=timer,
            env=env,
        )
        for row in rows:
            results[f"{feat}-{row}"] = [latest_report(out / f"{feat}-{row}-seed{sd}") or {} for sd in seeds]

    # 5. generation and 6. evaluation as separate commands, the recipe for scoring any checkpoint (CLIP-AD, the
    # last configuration, first seed): the same ADs and scores as that run's own evaluation
    feat, row = "clipad", rows[-1]
    name, run_dir, eval_dir = (
        f"{feat}-{row}",
        runs / f"stage2-{feat}" / f"{feat}-{row}-seed{seeds[0]}",
        feats_ready[feat][1],
    )
    preds = res / f"{name}_predictions.jsonl"
    run_step(
        f"generate {name}",
        ["distinctad-generate", "--ckpt", str(run_dir), "--shards", str(eval_dir), "--out", str(preds)]
        + ["--num-beams", str(args.num_beams)],
        done=preds.is_file(),
        timer=timer,
        env=env,
    )
    report = res / f"{name}_report"
    run_step(
        f"evaluate {name}",
        ["distinctad-eval", "--pred", str(preds), "--gt", str(eval_dir), "--out", str(report), "--no-progress"],
        done=Path(f"{report}.json").is_file(),
        timer=timer,
        env=env,
    )
    _samples_table(preds, eval_dir, res / f"{name}_samples.md")
    table = results_table(results, synthetic=synthetic_features(str(shards / "feats-clipad-train")))
    atomic_write_text(res / "results.md", table)
    if not parent.resumed or any(status == "ran" for _, _, status in timer.rows):
        parent.log_artifact(res / "results.md")
        parent.set_description(f"# DistinctAD quick start (SynthMAD)\n\n{table}")
        backend = next((r["meta"].get("backend") for rs in results.values() for r in rs), None)
        for c in COLUMNS + DISTINCT_COLUMNS:
            means = {
                name: statistics.mean(v)
                for name, rs in results.items()
                if (v := [r[c] for r in rs if isinstance(r.get(c), (int, float))])
            }
            if means:
                parent.log_configs(f"configs/{mlflow_column(c, backend)}", means)
    _describe_eval_movie(args, synth, runs, res / "described", timer, env)
    return results


def _describe_eval_movie(args, synth: Path, runs: Path, out: Path, timer: StepTimer, env: dict[str, str]) -> None:
    """7. From a film file to its AD track: describe the first eval movie with the Stage-I export and the last
    CLIP-AD Stage-II configuration just trained (first seed) (narrated when espeak-ng is installed)."""
    import shutil

    movie = json.loads((synth / "splits.json").read_text())["EVAL"][0]
    rows = [r.strip() for r in args.configs.split(",") if r.strip()]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    narrate = ["--narrate"] if shutil.which("espeak-ng") else []
    run_step(
        f"describe {movie}",
        [
            "distinctad-describe",
            str(synth / "videos" / f"{movie}.mp4"),
            "--stage2",
            str(runs / "stage2-clipad" / f"clipad-{rows[-1]}-seed{seeds[0]}"),
            "--clip-ad",
            str(runs / "stage1"),
            "--out",
            str(out),
            "--num-beams",
            str(args.num_beams),
            "--no-progress",
            *narrate,
        ],
        done=(out / "index.html").is_file(),
        timer=timer,
        env=env,
    )


def results_table(results: dict[str, list[dict] | dict], *, synthetic: bool = False, resamples: int = 2000) -> str:
    """Mean ± std over seeds per (features, configuration), then C3 − A0 per feature set with its paired-bootstrap
    95% interval (``*``: significant). ``results``: ``"<features>-<row>"`` -> the eval reports, one per seed."""
    runs = {k: (v if isinstance(v, list) else [v]) for k, v in results.items()}
    backend = next((r.get("meta", {}).get("backend") for rs in runs.values() for r in rs), None)
    cols = COLUMNS + DISTINCT_COLUMNS
    labels = [column_label(c, backend) for c in cols]
    lines = ["| features | config | seeds | " + " | ".join(labels) + " |", "|---|---|---:|" + "---:|" * len(cols)]
    for name, rs in runs.items():
        feat, row = name.split("-", 1)
        vals = [fmt([r[c] for r in rs if isinstance(r.get(c), (int, float))]) for c in cols]
        lines.append(f"| {FEATURES.get(feat, feat)} | {row} | {len(rs)} | " + " | ".join(vals) + " |")
    out = "\n".join(lines) + "\n"
    for feat in dict.fromkeys(n.split("-", 1)[0] for n in runs):
        a0, c3 = runs.get(f"{feat}-A0"), runs.get(f"{feat}-C3")
        if a0 and c3 and len(a0) == len(c3):
            diff, _ = difference_table(["C3"], {"C3": c3}, a0, cols, backend, resamples=resamples)
            out += f"\n{FEATURES.get(feat, feat)} features. " + diff
    if synthetic:
        out += f"\nOn {SYNTHETIC_LABEL} (SynthMAD feature mode): not numbers to report.\n"
    return out


def _samples_table(preds: Path, gt_shards: Path, out: Path, n: int = 24) -> Path:
    """The first ``n`` generated ADs beside the ground truth, as a Markdown table artifact."""
    from distinctad.eval.inputs import read_shard_references
    from distinctad.eval.outputs import write_samples_table

    first = [json.loads(line) for line in preds.read_text().splitlines()[:n]]
    return write_samples_table(out, first, read_shard_references(str(gt_shards)))


def _print_closing(results: dict, timer: StepTimer, work: Path, uri: str, parent=None) -> None:
    seeds = max((len(v) for v in results.values()), default=0)
    print(f"\n== results (SynthMAD eval split; mean ± std over {seeds} Stage-II seed(s)) ==\n")
    print((work / "results" / "results.md").read_text())
    print("== time per step ==")
    total = 0.0
    for name, secs, status in timer.rows:
        total += secs
        print(f"  {name:<36} {secs:7.1f} s  {status}")
    print(f"  {'total':<36} {total:7.1f} s")
    print(f"\nTable: {work / 'results' / 'results.md'}")
    described = work / "results" / "described"
    for track in sorted(described.glob("*.ad.vtt")):
        mkv = track.with_name(track.name.replace(".vtt", ".mkv"))
        print(f"AD track: {track}" + (f"   narrated film: {mkv}" if mkv.is_file() else ""))
        print(f"Preview:  {described / 'index.html'}   (open it in a browser)")
    link = parent.link() if parent is not None else ""
    print(
        f"Look at the runs:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        f"   (then open http://127.0.0.1:5000{link or '/#/experiments?workflowType=machine_learning'})"
    )


if __name__ == "__main__":
    main()
