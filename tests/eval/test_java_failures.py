"""Every failure of a Java scorer ends in bounded time with one line carrying Java's own message (issue 14, item 5).

Failures are simulated with a fake ``java`` on PATH (fast, deterministic): one that prints an error and exits, one
that dies mid-answer, one that sleeps forever, one that is killed, one that stops reading, one that prints garbage.
The real JVM is used where it is cheap: METEOR out of heap, and a 40,000-word AD that is cut to --max-tokens.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import sys
import textwrap
import time

import pytest

from distinctad.eval import captions, evaluate
from distinctad.eval.captions import ptb_tokenize, score_tokenized
from distinctad.eval.cli import main
from distinctad.eval.errors import EvalEnvironmentError
from distinctad.eval.java import check_java, exit_status, java_message

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")
OOM = 'Exception in thread "main" java.lang.OutOfMemoryError: Java heap space'
REFS = ["a man opens the door", "she smiles", "the car drives away"]
HYPS = ["a man opens a door", "she smiles at him", "a car drives off"]


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging) when the block runs past ``seconds``."""

    def fire(*_):
        raise TimeoutError(f"ran past {seconds} s: something waited forever")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def fake_java(tmp_path, monkeypatch, body: str) -> None:
    """Put a fake ``java`` (a Python script; ``args`` = its arguments) first on PATH. ``-version`` succeeds."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "java"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time, json, signal\n"
        "args = sys.argv[1:]\n"
        "if args == ['-version']:\n"
        "    print('openjdk version \"17\" (fake)', file=sys.stderr); sys.exit(0)\n" + textwrap.dedent(body)
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text
    return text


def test_java_message_picks_the_exception_line():
    trace = OOM + "\n\tat java.base/java.util.Arrays.copyOf(Arrays.java:3705)\n\tat Meteor.main(Unknown Source)\n"
    assert java_message(trace) == OOM
    assert java_message(b"Picked up _JAVA_OPTIONS: -Xmx1m\n" + trace.encode()) == OOM
    assert java_message("Error: Unable to access jarfile meteor-1.5.jar\n") == (
        "Error: Unable to access jarfile meteor-1.5.jar"
    )
    assert java_message("some warning\nlast words\n") == "last words"
    assert java_message("") == "" and java_message("\n  \n") == ""
    assert exit_status(1) == "exit status 1" and exit_status(-9) == "killed by signal 9 (SIGKILL)"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # answers one SCORE line, then dies of OutOfMemoryError: Java's own line must reach the user
        (
            f"""
            sys.stdin.readline(); print('1.0 ' * 23, flush=True); sys.stdin.readline()
            print({OOM!r}, file=sys.stderr); print('\\tat edu.cmu.meteor.aligner.Aligner.align', file=sys.stderr)
            sys.exit(1)
            """,
            rf"METEOR's Java process ended its output early: {OOM} \(exit status 1\); the JVM ran out of memory",
        ),
        # exits at once with a message, without reading: a broken pipe or an early end, never a hang
        (
            "print('Error: Unable to access jarfile meteor-1.5.jar', file=sys.stderr); sys.exit(1)",
            r"METEOR's Java process (ended its output early|stopped reading its input \(broken pipe\)): "
            r"Error: Unable to access jarfile meteor-1.5.jar \(exit status 1\)",
        ),
        # killed by a signal (the OOM killer's kind), nothing on stderr
        (
            "sys.stdin.readline(); os.kill(os.getpid(), signal.SIGKILL)",
            r"METEOR's Java process ended its output early: nothing on stderr \(killed by signal 9 \(SIGKILL\)\)",
        ),
        # alive but silent: the watchdog stops it
        (
            "time.sleep(600)",
            r"METEOR's Java process did not answer within 2 s \(--java-timeout\) and was stopped",
        ),
        # prints something that is not METEOR statistics, or not a score
        (
            "sys.stdin.readline(); print('oops', flush=True); time.sleep(600)",
            r"^METEOR answered 'oops' where statistics were expected$",
        ),
        (
            "for _ in range(3):\n    sys.stdin.readline(); print('1.0 ' * 23, flush=True)\n"
            "sys.stdin.readline(); print('NaN?', flush=True); time.sleep(600)",
            r"^METEOR answered 'NaN\?' where a score was expected$",
        ),
    ],
    ids=["oom-mid-stream", "exits-at-once", "killed", "hangs", "garbage-stats", "garbage-score"],
)
def test_meteor_failures_end_in_one_line_with_javas_message(tmp_path, monkeypatch, body, expected):
    fake_java(tmp_path, monkeypatch, body)
    t0 = time.monotonic()
    with time_limit(30), pytest.raises(EvalEnvironmentError, match=expected) as err:
        score_tokenized(REFS, HYPS, metrics=("meteor",), java_timeout=2)
    one_line(err.value)
    assert time.monotonic() - t0 < 20


def test_meteor_stops_reading_a_huge_line(tmp_path, monkeypatch):
    # a Java that never reads stdin: a 1 MB line fills the pipe; the write must time out, not block forever
    fake_java(tmp_path, monkeypatch, "time.sleep(600)")
    with time_limit(30), pytest.raises(EvalEnvironmentError, match=r"did not read its input within 2 s"):
        score_tokenized(["a b"], ["word " * 200_000], metrics=("meteor",), java_timeout=2, max_tokens=0)


def test_ptb_tokenizer_failures(tmp_path, monkeypatch):
    cases = [
        (
            "print('Exception in thread \"main\" java.lang.OutOfMemoryError: GC overhead limit exceeded',"
            " file=sys.stderr); sys.exit(1)",
            r"^the PTB tokenizer's Java process failed: Exception in thread \"main\" java.lang.OutOfMemoryError: GC "
            r"overhead limit exceeded \(exit status 1\); the JVM ran out of memory",
        ),
        ("time.sleep(600)", r"^the PTB tokenizer's Java process gave no result within 2 s \(--java-timeout\)"),
        ("os.kill(os.getpid(), signal.SIGTERM)", r"failed: nothing on stderr \(killed by signal 15 \(SIGTERM\)\)"),
        # one line too few: a misaligned output is an error, never a silent shift of every later AD
        ("print('a b')", r"returned 1 lines for 2 sentences"),
    ]
    for i, (body, expected) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        fake_java(tmp_path / str(i), monkeypatch, body)
        with time_limit(30), pytest.raises(EvalEnvironmentError, match=expected) as err:
            ptb_tokenize(["A b.", "C d!"], java_timeout=2)
        one_line(err.value)


def test_java_version_failure_carries_the_message(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").write_text(
        "#!/bin/sh\necho 'Error occurred during initialization of VM' >&2\n"
        "echo 'Could not reserve enough space for object heap' >&2\nexit 1\n"
    )
    (bin_dir / "java").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    with pytest.raises(EvalEnvironmentError, match=r"-version` failed: Error occurred during initialization of VM"):
        check_java()


def spice_fake(out_scores: str) -> str:
    """A fake SPICE: reads its input JSON, writes ``out_scores`` (a Python expression over ``items``) to -out."""
    return f"""
        if '-Xmx8G' not in args:
            sys.exit(3)
        items = json.load(open(args[3]))
        out = args[args.index('-out') + 1]
        json.dump({out_scores}, open(out, 'w'))
        """


def test_spice_failures_are_notices_with_javas_message(tmp_path, monkeypatch):
    monkeypatch.setattr(captions, "spice_unavailable_reason", lambda: None)
    fake_java(tmp_path, monkeypatch, "print('java.io.IOException: No space left on device', file=sys.stderr); exit(2)")
    overall, _, _, notices = score_tokenized(REFS, HYPS, metrics=("spice",), java_timeout=2)
    assert "SPICE" not in overall
    assert notices == [
        "SPICE skipped: SPICE's Java process failed: java.io.IOException: No space left on device (exit status 2)"
    ]
    (tmp_path / "b").mkdir()
    fake_java(tmp_path / "b", monkeypatch, "time.sleep(600)")
    with time_limit(30):
        _, _, _, notices = score_tokenized(REFS, HYPS, metrics=("spice",), java_timeout=1)
    assert notices[0].startswith("SPICE skipped: SPICE's Java process gave no result within 1 s (--java-timeout)")


def test_spice_nan_items_are_left_out_with_a_notice(tmp_path, monkeypatch):
    monkeypatch.setattr(captions, "spice_unavailable_reason", lambda: None)
    # AD 1 has no scene-graph tuple: SPICE writes f = NaN (pycocoevalcap would average it into a NaN overall)
    scores = (
        "[{'image_id': it['image_id'], 'scores': {'All': {'f': [0.5, 'NaN', 0.25][it['image_id']]}}} for it in items]"
    )
    fake_java(tmp_path, monkeypatch, spice_fake(scores))
    overall, per_group, _, notices = score_tokenized(
        REFS, HYPS, metrics=("spice",), groups=["m", "n", "n"], labels=["A", "B", "C"]
    )
    assert overall["SPICE"] == pytest.approx(100 * 0.375)
    assert per_group["m"]["SPICE"] == pytest.approx(50.0) and per_group["n"]["SPICE"] == pytest.approx(25.0)
    assert notices == [
        "SPICE undefined for 1 of 3 ADs (no scene-graph tuple to compare), left out of the SPICE means, first: B"
    ]


def test_cli_meteor_oom_is_one_error_line(tmp_path, monkeypatch):
    gt, pred = tmp_path / "gt.csv", tmp_path / "p.jsonl"
    gt.write_text("movie,sentence,start,end\n" + "".join(f"m,{s},{i},{i + 0.5}\n" for i, s in enumerate(REFS)))
    pred.write_text("".join(json.dumps({"movie": "m", "ad_index": i, "text": h}) + "\n" for i, h in enumerate(HYPS)))
    # the tokenizer (first Java call) works, METEOR dies as in the issue
    fake_java(
        tmp_path,
        monkeypatch,
        f"""
        if 'edu.stanford.nlp.process.PTBTokenizer' in args:
            sys.stdout.write(open(args[-1]).read().lower()); sys.exit(0)
        sys.stdin.readline(); print({OOM!r}, file=sys.stderr); sys.exit(1)
        """,
    )
    with time_limit(60), pytest.raises(SystemExit) as err:
        main(["--pred", str(pred), "--gt", str(gt), "--metrics", "meteor", "--no-recall", "--no-progress"])
    msg = str(err.value.code)
    assert msg.startswith("error: METEOR's Java process ended its output early: " + OOM) and "\n" not in msg


@needs_java
def test_real_meteor_out_of_heap_fails_fast(monkeypatch):
    # the real METEOR 1.5 jar with a 200 MB heap dies while loading its paraphrase table: the real JVM's message
    monkeypatch.setenv("_JAVA_OPTIONS", "-Xmx200m")
    with time_limit(120), pytest.raises(EvalEnvironmentError, match=r"java.lang.OutOfMemoryError") as err:
        score_tokenized(REFS, HYPS, metrics=("meteor",))
    assert one_line(err.value).startswith("METEOR's Java process ended its output early: ")


@needs_java
def test_a_40000_word_ad_is_cut_with_a_notice_and_scored():
    random.seed(0)
    words = "the a man woman walks runs door car opens closes looks at her him smiles red dark road".split()
    preds = [{"movie": "m", "ad_index": i, "text": t} for i, t in enumerate(HYPS)]
    preds[1]["text"] = " ".join(random.choice(words) for _ in range(40_000))
    refs = [{"movie": "m", "ad_index": i, "sentence": s} for i, s in enumerate(REFS)]
    with time_limit(240):
        res = evaluate(preds, refs, metrics=("bleu", "meteor"), recall_k=None, progress=False)
    assert 0 <= res["METEOR"] < 100 and res["meta"]["max_tokens"] == 1000
    assert (
        "1 prediction(s) longer than 1000 tokens cut to their first 1000 tokens before scoring (longest: 40000 "
        "tokens), first: 'm' ad_index=1; --max-tokens 0 scores them whole" in res["meta"]["notices"]
    )
    # BLEU-1's brevity penalty is 1 and its precision is over the cut text: 4 + 1000 + 4 hypothesis tokens
    assert res["BLEU-1"] < 100 * (4 + 1000 + 4) ** -0.5


@needs_java
def test_meteor_driver_equals_pycocoevalcap():
    # same jar, arguments and protocol: the same corpus and per-group scores as pycocoevalcap's Meteor
    from pycocoevalcap.meteor.meteor import Meteor

    refs = REFS + ["rain falls on the window", "he reads a letter"]
    hyps = HYPS + ["", "he reads the letter"]
    ours, per_group, _, _ = score_tokenized(refs, hyps, metrics=("meteor",), groups=["x", "x", "y", "y", "y"])
    scorer = Meteor()
    try:
        gts, res = {i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}
        theirs = scorer.compute_score(gts, res)[0]
        theirs_y = scorer.compute_score({i: gts[i] for i in (2, 3, 4)}, {i: res[i] for i in (2, 3, 4)})[0]
    finally:
        scorer.meteor_p.kill()
    assert ours["METEOR"] == pytest.approx(100 * theirs, abs=1e-9)
    assert per_group["y"]["METEOR"] == pytest.approx(100 * theirs_y, abs=1e-9)
    assert 0 < ours["METEOR"] < 100
