"""Checkpoint discovery: one implementation (core/checkpoint.py) behind run.resume and distinctad-generate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distinctad.train.core.checkpoint import CheckpointError, find_checkpoint, find_resume


def _run(tmp_path: Path) -> Path:
    """A run directory with two checkpoints, ``latest`` naming the second (model-states files are empty stubs)."""
    run = tmp_path / "run"
    for tag in ("step_00000002", "step_00000004"):
        (run / "checkpoints" / tag).mkdir(parents=True)
        (run / "checkpoints" / tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    return run


def test_find_checkpoint_accepts_run_dir_checkpoints_folder_and_tag_folder(tmp_path):
    run = _run(tmp_path)
    ckpts = run / "checkpoints"
    assert find_checkpoint(run) == (ckpts, "step_00000004")
    assert find_checkpoint(str(ckpts)) == (ckpts, "step_00000004")
    assert find_checkpoint(ckpts / "step_00000002") == (ckpts, "step_00000002")


def test_find_checkpoint_error_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(CheckpointError) as e:
        find_checkpoint(tmp_path)
    assert str(e.value).startswith(f"no checkpoint in {tmp_path}: expected a run directory")
    assert "\n" not in str(e.value)


def test_find_resume_uses_find_checkpoint(tmp_path):
    run = _run(tmp_path)
    ckpts = run / "checkpoints"
    assert find_resume("none", ckpts) is None
    assert find_resume("auto", tmp_path / "fresh" / "checkpoints") is None
    assert find_resume("auto", ckpts) == (ckpts, "step_00000004")
    assert find_resume(str(run), tmp_path / "other") == (ckpts, "step_00000004")  # a run directory works too
    assert find_resume(str(ckpts / "step_00000002"), tmp_path / "other") == (ckpts, "step_00000002")
    with pytest.raises(CheckpointError, match=r"^run\.resume: no checkpoint in "):
        find_resume(str(tmp_path / "nowhere"), ckpts)


def test_generate_cli_reports_a_missing_checkpoint_in_one_line(tmp_path, launcher_env):
    from distinctad.train.tools.generate import main as generate

    shard = tmp_path / "shards" / "eval-000000.tar"  # the shards are checked first: give it one that exists
    shard.parent.mkdir()
    shard.write_bytes(b"")
    with pytest.raises(SystemExit, match=f"^error: no checkpoint in {re.escape(str(tmp_path))}: "):
        generate(["--ckpt", str(tmp_path), "--shards", str(shard), "--out", str(tmp_path / "p.jsonl")])
