"""``keep_meteor``: one METEOR process serves every scoring call inside the block, none is kept outside it, and a
process that failed is never reused.

A fake ``java`` on PATH speaks METEOR's ``-stdio`` protocol and answers every score with its own process id, so
which process answered is visible in the score (the real jar's ~10 s start is what the reuse saves).
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from distinctad.eval import captions
from distinctad.eval.captions import keep_meteor, score_tokenized
from distinctad.eval.errors import EvalEnvironmentError

REFS = ["a man opens the door", "she smiles"]
HYPS = ["a man opens a door", "she smiles at him"]

# SCORE -> a statistics line; EVAL over n statistics -> n segment scores, then the corpus score: all = the pid.
# A line "SCORE ||| boom ||| ..." makes this process answer garbage (a failed process).
FAKE_METEOR = """
import os, sys
if args == ["-version"]:
    print('openjdk version "17" (fake)', file=sys.stderr)
    sys.exit(0)
for line in sys.stdin:
    if line.startswith("SCORE"):
        print("oops" if "boom" in line else "1.0 2.0 3.0", flush=True)
    elif line.startswith("EVAL"):
        n = line.count("|||")
        print("\\n".join([str(os.getpid())] * (n + 1)), flush=True)
"""


@pytest.fixture
def fake_meteor(tmp_path, monkeypatch):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "java"
    script.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n" + textwrap.dedent(FAKE_METEOR))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")


def _pid(refs=REFS, hyps=HYPS) -> int:
    groups = ["m0", "m1"][: len(refs)]
    overall, per_group, _, _ = score_tokenized(refs, hyps, metrics=("meteor",), groups=groups, java_timeout=20)
    assert [per_group[g]["METEOR"] for g in groups] == [overall["METEOR"]] * len(groups)  # the same process
    return round(overall["METEOR"] / 100)


def test_one_process_inside_the_block_and_none_kept_outside(fake_meteor):
    outside = [_pid(), _pid()]
    assert outside[0] != outside[1]  # a process per call, closed after it
    assert captions._kept_meteor is None
    with keep_meteor():
        inside = [_pid(), _pid(REFS[:1], HYPS[:1])]
        with keep_meteor():  # nested: the outer block's process
            inside.append(_pid())
        (java,) = captions._kept_meteor.values()
        assert java.proc.pid == inside[0] and java.proc.poll() is None
    assert inside == [inside[0]] * 3 and inside[0] not in outside
    assert captions._kept_meteor is None
    java.proc.wait(timeout=10)  # closed when the block ended
    assert java.proc.returncode is not None


def test_a_failed_process_is_not_reused(fake_meteor):
    with keep_meteor():
        first = _pid()
        with pytest.raises(EvalEnvironmentError, match=r"METEOR answered 'oops' where statistics were expected"):
            score_tokenized(["boom"], ["boom"], metrics=("meteor",), java_timeout=20)
        assert captions._kept_meteor == {}
        second = _pid()
    assert second != first
