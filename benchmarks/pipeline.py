"""Wall time of each step of the quick start, and where the training jobs spend it (data, forward/backward, eval).

    python benchmarks/pipeline.py [--work work/bench-pipeline] [quickstart options, e.g. --stage2-steps 300]

Runs ``launch/quickstart.sh --fresh`` in its own folder, then prints one row per step (wall seconds, share of the
total) and, for every training job, the split its ``summary.json`` records: waiting for data, forward + backward +
optimizer step, evaluation (generation and scoring), checkpointing, and the rest (start-up: imports, engine, data).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^  (.+?)\s+([0-9.]+) s  (ran|reused)$")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="work/bench-pipeline", help="Folder to run the quick start in.")
    args, rest = p.parse_known_args(argv)
    work = Path(args.work).resolve()  # the quick start runs inside it (cwd=work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "launch/quickstart.sh"),
            "--work",
            str(work / "qs"),
            "--fresh",
            "--tracking-uri",
            f"sqlite:///{work}/mlflow.db",
            *rest,
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"error: the quick start failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    steps = [(m[1], float(m[2])) for m in map(STEP.match, proc.stdout.splitlines()) if m and m[1] != "total"]
    total = sum(s for _, s in steps)
    print(f"quick start: {wall:.1f} s wall in all ({total:.1f} s in its steps)\n")
    print(f"{'step':<28} {'seconds':>8} {'share':>6}")
    for name, secs in steps:
        print(f"{name:<28} {secs:8.1f} {100 * secs / total:5.1f}%")
    print(f"\n{'training job':<22} {'wall':>6} {'data':>6} {'fwd/bwd/opt':>11} {'eval':>6} {'ckpt':>6} {'other':>6}")
    for summary in sorted((work / "qs/runs").glob("*/summary.json")):
        s = json.loads(summary.read_text())
        t = {k: s.get(f"time/{k}_s", 0.0) for k in ("wall", "data", "step", "eval", "ckpt")}
        other = max(0.0, t["wall"] - t["data"] - t["step"] - t["eval"] - t["ckpt"])
        print(
            f"{summary.parent.name:<22} {t['wall']:6.1f} {t['data']:6.1f} {t['step']:11.1f} {t['eval']:6.1f} "
            f"{t['ckpt']:6.1f} {other:6.1f}"
        )
    print("\n(job wall = inside fit(); the step's seconds above also include process start-up and imports)")


if __name__ == "__main__":
    main()
