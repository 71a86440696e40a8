"""Bad paths are one line naming the setting and the path, before any work or tracking (issue 14.10).

The fault: ``bash launch/stage2.sh --data.train_shards EMPTY_DIR`` printed a 39-line traceback (after rebuilding the
SynthMAD eval shards), a missing folder a traceback from gzip, and an empty ``--data.eval_shards`` left a FAILED
MLflow run. Every job (stage1, stage2, recon; trivial takes no path) and every CLI (distinctad-shards,
distinctad-eval, distinctad-generate, distinctad-extract) is tried here with each kind of bad path: missing, an
empty folder, a file where a folder is expected (or the reverse), and a glob that matches nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distinctad.testing import REPO, run_failing

KINDS = ("missing", "empty_dir", "file", "glob")


def bad_path(tmp: Path, kind: str) -> str:
    """A path of one bad kind under ``tmp``."""
    if kind == "missing":
        return str(tmp / "no" / "such")
    if kind == "empty_dir":
        (tmp / "empty").mkdir(exist_ok=True)
        return str(tmp / "empty")
    if kind == "file":
        (tmp / "notes.json").write_text("{}")
        return str(tmp / "notes.json")
    (tmp / "dir").mkdir(exist_ok=True)
    return str(tmp / "dir" / "train-*.tar")


def good_shards(tmp: Path) -> str:
    """A folder holding one (empty) .tar: it passes the up-front checks, which look at paths, not contents."""
    d = tmp / "shards"
    d.mkdir(exist_ok=True)
    (d / "train-000000.tar").write_bytes(b"")
    return str(d)


def one_line(message: str, key: str, path: str) -> None:
    assert "\n" not in message, message
    assert message.startswith(f"{key}: {path}") or message.startswith(f"error: {key}: {path}"), message


# ---------------------------------------------------------------- jobs: the check runs first in build_task


def _job_error(job: str, tmp: Path, overrides: list[str]) -> str:
    from distinctad.train.core.config import ConfigError, load_config
    from distinctad.train.jobs import JOBS

    spec = JOBS[job]
    base = ["--run.out_dir", str(tmp / "run"), "--tracking.enabled", "false", "--data.synth_dir", str(tmp / "synth")]
    cfg = load_config(spec.config, REPO / spec.default_yaml, [*base, *overrides])
    with pytest.raises(ConfigError) as e:
        spec.task_builder()(cfg)
    # nothing was built or written before the check: no SynthMAD, no run directory
    assert not (tmp / "synth").exists() and not (tmp / "run").exists()
    return str(e.value)


SHARD_KEYS = [
    ("stage1", "data.train_shards", []),
    ("stage1", "data.eval_shards", ["train"]),
    ("stage2", "data.train_shards", []),
    ("stage2", "data.eval_shards", []),
    ("stage2", "data.eval_shards", ["train"]),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("job,key,also", SHARD_KEYS)
def test_job_shard_settings(job, key, also, kind, tmp_path):
    bad = bad_path(tmp_path, kind)
    extra = ["--data.train_shards", good_shards(tmp_path)] if "train" in also else []
    message = _job_error(job, tmp_path, [*extra, f"--{key}", bad])
    one_line(message, key, bad)
    expected = {
        "missing": "no such shard folder or file",
        "empty_dir": "folder holds no .tar shards",
        "file": "is a file, expected a folder of .tar shards",
        "glob": "pattern matches no shard",
    }[kind]
    assert expected in message


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "glob"])
@pytest.mark.parametrize("key", ["data.train_annotations", "data.eval_annotations"])
def test_recon_annotation_settings(key, kind, tmp_path):
    bad = bad_path(tmp_path, kind)
    extra = ["--data.train_annotations", "data/assets/madeval_anno.csv"] if key == "data.eval_annotations" else []
    message = _job_error("recon", tmp_path, [*extra, f"--{key}", bad])
    one_line(message, key, bad)
    assert ("is a folder, expected an annotation file" if kind == "empty_dir" else "no such annotation file") in message


@pytest.mark.parametrize(
    "job,key,kind,expected",
    [
        ("stage1", "model.cache_dir", "file", "is a file, expected a cache folder"),
        ("stage1", "model.cache_dir", "missing", "no such cache folder"),
        ("stage1", "model.pretrained", "missing", "no such weights file or folder"),
        ("stage2", "model.tokenizer", "missing", "is neither a local directory nor in the Hugging Face cache"),
        ("stage2", "model.llm", "missing", "is neither a local directory nor in the Hugging Face cache"),
        ("recon", "model.clip_cache_dir", "file", "is a file, expected a cache folder"),
        ("recon", "model.clip_pretrained", "missing", "no such weights file or folder"),
        ("recon", "model.llm", "missing", "is neither a local directory nor in the Hugging Face cache"),
        ("stage2", "run.out_dir", "file", "is a file, expected an output folder"),
        ("recon", "deepspeed.config", "missing", "no such file"),
        ("stage1", "deepspeed.config", "empty_dir", "is a folder"),
    ],
)
def test_job_model_and_run_settings(job, key, kind, expected, tmp_path):
    bad = bad_path(tmp_path, kind)
    extra = ["--data.train_shards", good_shards(tmp_path)] if job != "recon" else []
    message = _job_error(job, tmp_path, [*extra, f"--{key}", bad])
    assert "\n" not in message and message.startswith(key) and bad in message and expected in message, message


# ---------------------------------------------------------------- jobs through their launchers: no traceback, no run


def _launch_fails(job: str, tmp: Path, *overrides: str) -> str:
    db = tmp / "mlflow.db"
    proc = run_failing(
        [
            "bash",
            str(REPO / f"launch/{job}.sh"),
            "--tracking.uri",
            f"sqlite:///{db}",
            "--run.out_dir",
            str(tmp / "run"),
            "--data.synth_dir",
            str(tmp / "synth"),
            *overrides,
        ],
        cwd=tmp,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not db.exists() and not (tmp / "run").exists() and not (tmp / "synth").exists()  # no tracking, no work
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "job,key,kind",
    [
        ("stage2", "data.train_shards", "empty_dir"),  # the command
        ("stage2", "data.eval_shards", "empty_dir"),  # once a FAILED MLflow run
        ("stage1", "data.train_shards", "missing"),  # once a gzip traceback
        ("recon", "data.train_annotations", "empty_dir"),
    ],
)
def test_launchers_fail_in_one_line_before_tracking(job, key, kind, tmp_path):
    bad = bad_path(tmp_path, kind)
    one_line(_launch_fails(job, tmp_path, f"--{key}", bad), key, bad)


# ---------------------------------------------------------------- CLIs


def _cli_error(main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert isinstance(e.value.code, str), e.value.code
    return e.value.code


@pytest.mark.parametrize("kind", KINDS)
def test_shards_cli(kind, tmp_path):
    from distinctad.data.cli import main

    bad = bad_path(tmp_path, kind)
    ann = tmp_path / "ann.json"
    ann.write_text("{}")
    out = str(tmp_path / "out")
    build = ["build", "--no-progress", "--out"]
    if kind != "file":
        one_line(_cli_error(main, [*build, out, "--annotations", bad]), "--annotations", bad)
        one_line(_cli_error(main, [*build, out, "--annotations", str(ann), "--features", bad]), "--features", bad)
        one_line(_cli_error(main, [*build, out, "--annotations", str(ann), "--split-file", bad, "--split-key", "A"]),
                 "--split-file", bad)  # fmt: skip
        one_line(_cli_error(main, [*build, out, "--annotations", str(ann), "--exclude", bad]), "--exclude", bad)
        one_line(_cli_error(main, ["inspect", bad]), "PATH", bad)
    if kind != "empty_dir":
        videos = ["--kind", "frames", "--videos", bad]
        one_line(_cli_error(main, [*build, out, "--annotations", str(ann), *videos]), "--videos", bad)
    if kind in ("missing", "file"):
        one_line(_cli_error(main, ["verify", bad]), "DIR", bad)
    if kind == "file":
        one_line(_cli_error(main, [*build, bad, "--annotations", str(ann)]), "--out", bad)
        one_line(_cli_error(main, ["synth", "--out", bad, "--features"]), "--out", bad)
        one_line(_cli_error(main, ["inspect", bad]), "PATH", bad)
    assert not Path(out).exists()


@pytest.mark.parametrize("kind", KINDS)
def test_eval_cli(kind, tmp_path):
    from distinctad.eval.cli import main

    bad = bad_path(tmp_path, kind)
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"movie": "m", "ad_index": 0, "text": "a"}) + "\n")
    gt = tmp_path / "gt.csv"
    gt.write_text("movie,start,end,sentence\nm,0,1,a\n")
    if kind != "file":
        one_line(_cli_error(main, ["--pred", bad, "--gt", str(gt)]), "--pred", bad)
        one_line(_cli_error(main, ["--pred", str(preds), "--gt", bad]), "--gt", bad)
        one_line(_cli_error(main, ["--pred", str(preds), "--gt", bad, "--gt-format", "shards"]), "--gt", bad)
    else:
        message = _cli_error(main, ["--pred", str(preds), "--gt", str(gt), "--out", f"{bad}/report"])
        assert message.startswith(f"error: --out: {bad}/report.json: cannot create it: {bad} is a file"), message
        one_line(_cli_error(main, ["--pred", str(preds), "--gt", bad, "--gt-format", "shards"]), "--gt", bad)
    if kind in ("missing", "file"):
        backend = ["--backend", "embedding", "--backend-model", bad]
        one_line(_cli_error(main, ["--pred", str(preds), "--gt", str(gt), *backend]), "--backend-model", bad)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_cli(kind, tmp_path):
    from distinctad.train.tools.generate import main

    bad = bad_path(tmp_path, kind)
    ckpt, shards, out = tmp_path / "run", good_shards(tmp_path), str(tmp_path / "p.jsonl")
    ckpt.mkdir()
    if kind in ("missing", "file"):
        one_line(_cli_error(main, ["--ckpt", bad, "--shards", shards, "--out", out]), "--ckpt", bad)
    one_line(_cli_error(main, ["--ckpt", str(ckpt), "--shards", bad, "--out", out]), "--shards", bad)
    if kind == "empty_dir":
        one_line(_cli_error(main, ["--ckpt", str(ckpt), "--shards", shards, "--out", bad]), "--out", bad)


@pytest.mark.parametrize("kind", KINDS)
def test_extract_cli(kind, tmp_path):
    from distinctad.train.tools.extract import main

    bad = bad_path(tmp_path, kind)
    frames, out = good_shards(tmp_path), str(tmp_path / "o")
    one_line(_cli_error(main, ["--frames", bad, "--out", out]), "--frames", bad)
    if kind == "file":
        one_line(_cli_error(main, ["--frames", frames, "--out", bad]), "--out", bad)
    if kind in ("missing", "file"):
        one_line(_cli_error(main, ["--frames", frames, "--out", out, "--cache-dir", bad]), "--cache-dir", bad)
    if kind == "missing":
        one_line(_cli_error(main, ["--frames", frames, "--out", out, "--pretrained", bad]), "--pretrained", bad)
    assert not Path(out).exists()
