"""The quick start runs the launchers and configs next to it, not the installed checkout's (issue 14.12).

The fault: ``bash CLONE/launch/quickstart.sh`` printed and ran ``INSTALLED/launch/stage1.sh`` whenever
``pip install -e`` pointed at another checkout. Here a second clone's ``launch/`` has a stub Stage-I launcher, and
stub ``distinctad-extract`` and ``distinctad-ablate`` come first on PATH, so the test sees which files each step
runs without training anything.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from distinctad.testing import REPO, run_failing

STAGE1_STUB = """#!/usr/bin/env bash
echo "STUB-STAGE1 $0"
while [ $# -gt 0 ]; do if [ "$1" = "--run.out_dir" ]; then out="$2"; fi; shift; done
mkdir -p "$out/clip_ad" && echo '{"finished": true}' > "$out/summary.json"
"""
ABLATE_STUB = """#!/usr/bin/env bash
echo "STUB-ABLATE $1"
exit 3
"""
EXTRACT_STUB = """#!/usr/bin/env bash
while [ $# -gt 0 ]; do if [ "$1" = "--out" ]; then out="$2"; fi; shift; done
mkdir -p "$out" && echo '{"feature_dim": 64}' > "$out/manifest.json"
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.slow
def test_quickstart_runs_the_launchers_of_its_own_clone(tmp_path):
    clone = tmp_path / "other-clone"
    shutil.copytree(REPO / "launch", clone / "launch")
    _executable(clone / "launch/stage1.sh", STAGE1_STUB)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "distinctad-extract", EXTRACT_STUB)
    _executable(bin_dir / "distinctad-ablate", ABLATE_STUB)  # Stage-II: the grid runner, given this clone's config

    work = tmp_path / "qs"
    proc = run_failing(
        [
            "bash",
            str(clone / "launch/quickstart.sh"),
            *("--work", str(work), "--movies", "2", "--ads-per-movie", "8", "--configs", "A0"),
            *("--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"),
        ],
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        timeout=600,
    )
    out = proc.stdout
    launch = clone.resolve() / "launch"
    assert f"[Stage-I (CLIP-AD)]  $ bash {launch}/stage1.sh {launch}/configs/stage1.yaml" in out, out[-3000:]
    assert f"STUB-STAGE1 {launch}/stage1.sh" in out
    assert (
        f"$ distinctad-ablate {launch}/configs/stage2.yaml" in out
        and f"STUB-ABLATE {launch}/configs/stage2.yaml" in out
    )
    assert str(REPO / "launch") not in out  # nothing of the installed checkout's launch/ ran
    assert proc.returncode != 0 and "error: step 'Stage-II vanilla (A0 x 3 seeds)' failed (exit 3)" in proc.stderr
