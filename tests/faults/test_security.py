"""Security: checkpoints load weights-only (a malicious pickle is refused and never runs), nothing unpickles,
MLflow binds to 127.0.0.1.

Shards are covered by ``tests/data/test_wds_pipeline.py::test_pickle_member_is_never_unpickled`` (a ``.pyd`` /
``.pickle`` member whose ``__reduce__`` writes a file is ignored, counted, and the file never appears).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from distinctad.testing import REPO, run_cmd, run_failing, trivial_cmd
from distinctad.train.core.checkpoint import (
    CheckpointError,
    SafeTorchCheckpointEngine,
    deepspeed_safe_globals,
    latest_tag,
)

ARGS = ["--train.max_steps", "4", "--train.ckpt_every", "2"]


class Payload:
    """Unpickling this calls ``open(path, "w")``: the file appearing is the proof that pickled code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("security")
    run_cmd(trivial_cmd(tmp / "run", *ARGS), cwd=tmp)
    return tmp / "run"


@pytest.mark.slow
def test_real_checkpoints_hold_only_weights_and_allowed_deepspeed_types(run_dir):
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in deepspeed_safe_globals()}
    files = sorted((run_dir / "checkpoints/step_00000004").glob("*.pt"))
    assert [f.name for f in files] == ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    engine = SafeTorchCheckpointEngine()
    for f in files:
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(f))) <= allowed, f
        assert engine.load(str(f), map_location="cpu")
    # the model states (weights + our client state with every rank's RNG) need no allowlist at all
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    assert state["step"] == 4 and len(state["rng"]) == 1 and state["rng"][0]["numpy"][0] == "MT19937"


@pytest.mark.slow
def test_malicious_checkpoint_is_refused_and_its_code_never_runs(run_dir, tmp_path):
    proof = tmp_path / "proof.txt"
    torch.save({"module": Payload(str(proof))}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert proof.exists()  # the payload is live: a plain torch.load runs it

    target = tmp_path / "pwned.txt"
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    evil = run / "checkpoints/step_00000004/mp_rank_00_model_states.pt"
    torch.save({"module": Payload(str(target)), "step": 4}, evil)
    with pytest.raises(CheckpointError, match=r"refusing to load .*Unsupported global: GLOBAL io.open"):
        SafeTorchCheckpointEngine().load(str(evil))
    assert not target.exists()

    # the job resumes through DeepSpeed's load_checkpoint: refused there too, with one line and no traceback
    proc = run_failing(trivial_cmd(run, *ARGS, "--train.max_steps", "6"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert re.fullmatch(
        rf"error: refusing to load {evil}: not a plain weights file \(Unsupported global: GLOBAL "
        r"io.open\); checkpoints load with torch.load\(weights_only=True\) and never run "
        r"pickled code",
        proc.stderr.strip().splitlines()[-1],
    ), proc.stderr[-2000:]
    assert not target.exists()


def test_latest_must_name_a_step_tag(tmp_path):
    (tmp_path / "latest").write_text("step_00000012\n")
    assert latest_tag(tmp_path) == "step_00000012"
    (tmp_path / "latest").write_text("../../../etc")
    with pytest.raises(CheckpointError, match="expected a checkpoint tag like step_00000100"):
        latest_tag(tmp_path)


SOURCES = ["train", "data", "eval", "benchmarks", "launch"]


def _files() -> list[Path]:
    files = [
        p
        for d in SOURCES
        for p in (REPO / d).rglob("*")
        if p.is_file() and p.suffix in (".py", ".sh", ".md", ".yaml", ".yml", ".json", ".toml", ".txt")
    ]
    return files + [p for p in (REPO / "README.md", REPO / "pyproject.toml") if p.is_file()]


def test_mlflow_ui_and_server_bind_to_localhost():
    import click
    from mlflow.cli import cli  # click: the default of --host is what a bare `mlflow ui` / `mlflow server` binds to

    for name in ("server", "ui"):
        cmd = cli.get_command(click.Context(cli), name)
        (host,) = [p for p in cmd.params if p.name == "host"]
        assert host.default == "127.0.0.1", (name, host.default)
    uses = []
    for f in _files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if re.search(r"mlflow\s+(ui|server)\b", line):
                uses.append(f"{f.relative_to(REPO)}:{n}")
                m = re.search(r"(?:--host|\s-h)[ =]+(\S+)", line)
                assert m is None or m.group(1).strip("'\"") in ("127.0.0.1", "localhost"), f"{f}:{n}: {line}"
            assert "0.0.0.0" not in line, f"{f}:{n}: binds to every interface: {line}"
    assert uses, "expected the MLflow UI command somewhere in the docs or the pipeline"


def test_no_code_path_unpickles():
    """Static guard: every torch.load passes weights_only=True, numpy never allows pickle, no pickle.load (code
    only: ``torch.load(...)`` in double backticks is documentation)."""
    for f in _files():
        if f.suffix != ".py":
            continue
        text = f.read_text()
        for m in re.finditer(r"(?<!`)torch\.load\(([^()]*(?:\([^()]*\)[^()]*)*)\)", text):
            assert "weights_only=True" in m.group(1), f"{f}: torch.load without weights_only=True: {m.group(0)}"
        assert "allow_pickle=True" not in text, f
        assert not re.search(r"\bpickle\.loads?\(", text), f
