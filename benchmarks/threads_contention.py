"""A Stage-II training step on a quiet machine vs with one competing busy core, per thread setting (issue 16).

    python benchmarks/threads_contention.py [--steps 30]

Each setting runs ``benchmarks/stage2_throughput.py`` (tiny C3 config, CPU) in a fresh process: first quiet, then
while a spinning process holds one core (pinned to the last usable core). Printed per setting: ms/step quiet,
ms/step busy, and the ratio busy/quiet (the target for DistinctAD's own setting, ``set_threads``: <= 1.5x).
Settings: 'distinctad' (what every job and CLI gets: usable cores / local ranks from ``distinctad.common.set_threads``
and sleeping OpenMP waits, ``OMP_WAIT_POLICY=PASSIVE`` from ``distinctad/__init__.py``), 'torch default' (one
spinning thread per core, PyTorch's own) and 'OMP_NUM_THREADS=1'. ``uptime`` is printed before and
after: other work on the machine makes 'quiet' less quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import sys
mode = sys.argv[1]
if mode == "distinctad":  # as every entry point does: distinctad (OMP_WAIT_POLICY) before torch, then set_threads
    from distinctad.common import set_threads
    set_threads()
import json, runpy, torch
bench = runpy.run_path(sys.argv[2], run_name="bench")
out = bench["main"](["--steps", sys.argv[3], "--warmup", "3"])
print("RESULT " + json.dumps({"ms": out["ms_per_step"], "loss": out["loss"], "threads": torch.get_num_threads()}))
"""

SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_once(mode: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if mode == "OMP_NUM_THREADS=1":
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(HERE / "stage2_throughput.py"), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="Timed Stage-II steps per measurement.")
    args = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    print(f"{len(cores)} usable cores | before: {uptime()}")
    results = {}
    for mode in ("distinctad", "torch default", "OMP_NUM_THREADS=1"):
        quiet = run_once(mode, args.steps)
        spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(cores[-1])])
        try:
            time.sleep(0.5)
            busy = run_once(mode, args.steps)
        finally:
            spinner.kill()
            spinner.wait()
        ratio = busy["ms"] / quiet["ms"]
        results[mode] = {"quiet_ms": quiet["ms"], "busy_ms": busy["ms"], "ratio": ratio, "threads": quiet["threads"]}
        print(
            f"{mode:>18}: {quiet['threads']} threads | quiet {quiet['ms']:7.1f} ms/step | one busy core "
            f"{busy['ms']:7.1f} ms/step | busy/quiet {ratio:.2f}x | loss {quiet['loss']:.6f} / {busy['loss']:.6f}"
        )
    base = results["torch default"]["busy_ms"]
    print(f"busy-core step, torch default / distinctad: {base / results['distinctad']['busy_ms']:.2f}x")
    print(f"after: {uptime()}")
    return results


if __name__ == "__main__":
    main()
