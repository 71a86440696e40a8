"""benchmarks/gpu_check.sh: its --dry-run (tiny shapes on CPU) runs every part end to end; bad arguments are one line.

The GPU run itself needs a GPU machine (see the script's header); this test is what CI can check of it.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import pytest

from distinctad.testing import LAUNCHER_VARS, REPO

SCRIPT = REPO / "benchmarks/gpu_check.sh"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_and_bad_arguments():
    out = _run("--help")
    assert out.returncode == 0 and "--dry-run" in out.stdout and "On one H200" in out.stdout
    bad = _run("--fast")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: unknown argument '--fast' (usage: bash benchmarks/gpu_check.sh [--dry-run])"
    )


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the real check")
def test_without_a_gpu_the_real_check_says_so():
    out = _run()
    assert out.returncode == 2 and "error: no NVIDIA GPU visible" in out.stderr


@pytest.mark.slow
def test_dry_run_runs_every_part_on_cpu():
    out = _run("--dry-run")
    text = out.stdout
    assert out.returncode == 0, text[-3000:] + out.stderr[-2000:]
    assert "gpu_check: 0 part(s) failed" in text and text.count(": ok in ") == 4
    assert "load average" in text  # uptime beside the figures
    stage1 = re.search(r"^\s+2\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) → ([\d.]+)", text, re.M)  # ZeRO-2 row
    assert stage1 and float(stage1.group(1)) > 0 and math.isfinite(float(stage1.group(4)))
    stage2 = re.search(r"([\d.]+) windows/s \| (\d+) tokens/s", text)
    assert stage2 and float(stage2.group(1)) > 0 and int(stage2.group(2)) > 0
    lora = re.search(r"ZeRO-3 LoRA step.*\n\s+([\d.]+) s/step \| \d+ tokens/s \| loss ([\d.]+) -> ([\d.]+)", text)
    assert lora and float(lora.group(1)) > 0 and math.isfinite(float(lora.group(3)))
    jpeg = re.search(
        r"mean \|diff\| ([\d.]+), max ([\d.]+).*\n.*1 CPU thread: ([\d,]+) frames/s\n.*: ([\d,]+) frames/s", text
    )
    assert jpeg and float(jpeg.group(2)) < 0.1 and int(jpeg.group(3).replace(",", "")) > 0  # the two paths agree
    assert "2-step NCCL run: needs 2+ GPUs" in text
