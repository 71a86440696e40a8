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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distinctad.common import atomic_write_text
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.tools.ablate import COLUMNS

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
    p.add_argument("--stage2-steps", type=int, default=300, help="Stage-II optimizer steps per configuration.")
    p.add_argument("--configs", default="A0,C3", help="Table D.2 rows to train in Stage-II (comma-separated).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the data and of every run.")
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
    parent = ParentRun(uri, args.experiment, f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
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
    _print_closing(results, timer, work, uri)


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

    # 4. Stage-II, 5. generation, 6. evaluation, per (features, configuration)
    results: dict[str, dict] = {}
    dim = json.loads((shards / "feats-vanilla-train" / "manifest.json").read_text()).get("feature_dim", 64)
    for feat, (train_dir, eval_dir) in feats_ready.items():
        for row in [r.strip() for r in args.configs.split(",") if r.strip()]:
            name = f"{feat}-{row}"
            run_dir = runs / f"stage2-{name}"
            run_step(
                f"Stage-II {name}",
                [
                    "bash",
                    str(launch / "stage2.sh"),
                    str(launch / "configs/stage2.yaml"),
                    "--run.name",
                    f"stage2-{name}",
                    "--run.out_dir",
                    str(run_dir),
                    "--run.seed",
                    str(args.seed),
                    "--train.max_steps",
                    str(args.stage2_steps),
                    "--data.train_shards",
                    str(train_dir),
                    "--data.eval_shards",
                    str(eval_dir),
                    "--model.feature_dim",
                    str(dim),
                    "--model.preset",
                    row,
                    "--eval.enabled",
                    "false",
                    *track,
                ],
                done=finished(run_dir),
                timer=timer,
                env=env,
            )
            preds = res / f"{name}_predictions.jsonl"
            run_step(
                f"generate {name}",
                [
                    "distinctad-generate",
                    "--ckpt",
                    str(run_dir),
                    "--shards",
                    str(eval_dir),
                    "--out",
                    str(preds),
                    "--num-beams",
                    str(args.num_beams),
                ],
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
            results[name] = json.loads(Path(f"{report}.json").read_text())
            parent.log_artifact(f"{report}.md", "eval")
            parent.log_artifact(_samples_table(preds, eval_dir, res / f"{name}_samples.md"), "samples")
            parent.log_metrics({f"{name}/{c}": results[name][c] for c in COLUMNS if c in results[name]})
    table = results_table(results)
    atomic_write_text(res / "results.md", table)
    parent.log_artifact(res / "results.md")
    _describe_eval_movie(args, synth, runs, res / "described", timer, env)
    return results


def _describe_eval_movie(args, synth: Path, runs: Path, out: Path, timer: StepTimer, env: dict[str, str]) -> None:
    """7. From a film file to its AD track: describe the first eval movie with the Stage-I export and the last
    CLIP-AD Stage-II run just trained (narrated when espeak-ng is installed)."""
    import shutil

    movie = json.loads((synth / "splits.json").read_text())["EVAL"][0]
    rows = [r.strip() for r in args.configs.split(",") if r.strip()]
    narrate = ["--narrate"] if shutil.which("espeak-ng") else []
    run_step(
        f"describe {movie}",
        [
            "distinctad-describe",
            str(synth / "videos" / f"{movie}.mp4"),
            "--stage2",
            str(runs / f"stage2-clipad-{rows[-1]}"),
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


def results_table(results: dict[str, dict]) -> str:
    lines = ["| features | config | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for name, r in results.items():
        feat, row = name.split("-", 1)
        label = {"vanilla": "vanilla CLIP", "clipad": "CLIP-AD"}.get(feat, feat)
        vals = [f"{r[c]:.2f}" if isinstance(r.get(c), (int, float)) else "–" for c in COLUMNS]
        lines.append(f"| {label} | {row} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _samples_table(preds: Path, gt_shards: Path, out: Path, n: int = 24) -> Path:
    """The first ``n`` generated ADs beside the ground truth, as a Markdown table artifact."""
    from distinctad.eval.inputs import read_shard_references
    from distinctad.eval.outputs import write_samples_table

    first = [json.loads(line) for line in preds.read_text().splitlines()[:n]]
    return write_samples_table(out, first, read_shard_references(str(gt_shards)))


def _print_closing(results: dict, timer: StepTimer, work: Path, uri: str) -> None:
    print("\n== results (SynthMAD eval split; R@5/16 with the lexical backend) ==\n")
    print(results_table(results))
    print("== time per step ==")
    total = 0.0
    for name, secs, status in timer.rows:
        total += secs
        print(f"  {name:<28} {secs:7.1f} s  {status}")
    print(f"  {'total':<28} {total:7.1f} s")
    print(f"\nTable: {work / 'results' / 'results.md'}")
    described = work / "results" / "described"
    for track in sorted(described.glob("*.ad.vtt")):
        mkv = track.with_name(track.name.replace(".vtt", ".mkv"))
        print(f"AD track: {track}" + (f"   narrated film: {mkv}" if mkv.is_file() else ""))
        print(f"Preview:  {described / 'index.html'}   (open it in a browser)")
    print(
        f"Look at the runs:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        "   (then open http://127.0.0.1:5000)"
    )


if __name__ == "__main__":
    main()
