"""The repository stands alone: no tracked file points outside it.

A fresh clone must run its defaults, tests, benchmarks and README examples with nothing beside it. The real MAD
data they need ships in ``data/assets`` (``distinctad.data.ASSETS``), so no file may name the sibling data folder
of our workspace or an absolute path of one machine (a home, root, work or temp folder).
"""

from __future__ import annotations

import re
import subprocess

from distinctad.testing import REPO

SIBLING = re.compile(r"\.\./shared\b|/\s*[\"']shared[\"']")
"""The sibling data folder, as a string (dot-dot-slash) or as a pathlib join."""

# An absolute path of two or more segments. The look-behind leaves out relative paths (``runs/x/y``, ``~/x``),
# URLs and URIs (``https://host/x/y``, ``sqlite:///mlflow.db``), placeholders (``runs/<name>/x``, ``${DIR}/x``)
# and expressions (``a[i]/b``, ``f(x)/y``).
ABSOLUTE = re.compile(r"(?<![\w.~/:\-${}\])*>])/[A-Za-z_][\w.+-]*(?:/[\w.+-]*)+")
# A machine's own top-level folders, also when named alone (``default="/tmp"``).
MACHINE_ROOT = re.compile(r"(?<![\w.~/:\-${}\])*>])/(?:work|root|home|tmp|Users|mnt|scratch)\b")

ALLOWED_PREFIXES = (
    # System paths, as in shebangs (#!/usr/bin/env bash) and in docs and code about system tools.
    "/usr/bin/",
    "/bin/sh",  # the shebang of fake programs that tests write (tests/eval/test_java_failures.py)
    "/dev/null",
    "/dev/shm",  # DeepSpeed's shared-memory buffers (train/core/distributed.py and its test)
    "/proc/",  # the kernel's interface (describe reads /proc/cpuinfo for bf16 support), on every Linux machine
    # Placeholders for the data and weights a user supplies, in README/YAML examples and error hints; none of
    # them is a default.
    "/path/to/",
    "/data/mad/",
    "/models/",
)

SKIPPED = {"tests/test_standalone.py"}  # names the very patterns it looks for


def tracked_text_files() -> dict[str, str]:
    """``{path: text}`` of every tracked file that is UTF-8 text."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    out = {}
    for name in filter(None, names.decode().split("\0")):
        path = REPO / name
        if name in SKIPPED or not path.is_file():  # a tracked file deleted in the working tree
            continue
        try:
            out[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary
            continue
    return out


def outside_references(text: str) -> list[tuple[int, str]]:
    """(line, match) of every reference to a path outside the repository."""
    found = []
    for i, line in enumerate(text.splitlines(), 1):
        found += [(i, m.group(0)) for m in SIBLING.finditer(line)]
        absolute = list(ABSOLUTE.finditer(line))
        roots = [m for m in MACHINE_ROOT.finditer(line) if not any(a.start() == m.start() for a in absolute)]
        found += [(i, m.group(0)) for m in absolute + roots if not m.group(0).startswith(ALLOWED_PREFIXES)]
    return sorted(set(found))


def test_the_patterns():
    # Spelled in pieces so that this file itself names no such path.
    sib, w, h = "../" + "shared", "/" + "work", "/" + "home"
    bad = [
        f'default="{w}/shared/data/madeval_anno.csv"',
        f"--gt {sib}/data/madeval_anno.csv",
        'Path(__file__).parents[3] / "shared" / "data"',
        "--work /tmp/distinctad-bench",
        'default="/tmp"',
        f"ckpt = '{h}/alice/runs/x'",
        "cache at /root/.cache/huggingface",
    ]
    good = [
        "#!/usr/bin/env bash",
        "--gt data/assets/madeval_anno.csv",
        "sqlite:///mlflow.db and https://github.com/mlfoundations/open_clip/blob/main/src/x.py",
        "runs/<name>/checkpoints/latest and ${WORK}/shards/x and ~/data/x",
        "leaves a buffer in /dev/shm/deepspeed_shm; 2>/dev/null",
        "--features /data/mad/CLIP_L14_frames_features_5fps.h5 --model.llm /models/Meta-Llama-3-8B",
        "R@5/16, and/or, 1/2, x / y, scale[0]/s",
    ]
    assert [t for t in bad if not outside_references(t)] == []
    assert [t for t in good if outside_references(t)] == []


def test_no_tracked_file_points_outside_the_repository():
    offenders = [
        f"{name}:{line}: {match}"
        for name, text in tracked_text_files().items()
        for line, match in outside_references(text)
    ]
    assert offenders == [], "paths outside the repository (use distinctad.data.ASSETS):\n" + "\n".join(offenders)
