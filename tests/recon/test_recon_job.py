"""The recon job as users run it (``launch/recon.sh``), on the real MAD-Eval text with tiny stand-in models.

The first run (`cls`) builds its own frozen parts: a random tiny CLIP text tower and a tiny GPT-2 with a BPE
tokenizer trained on the 9 training movies' ADs, pre-trained on them for a few steps; the second run (`words`)
loads those saved parts. Both evaluate on ADs of the 10th movie. The runs are short: they check the job's
mechanics and outputs, not reconstruction quality (test_recon_quality.py checks the direction of Table A.1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distinctad.data import ASSETS
from distinctad.testing import child_env
from distinctad.train.core.checkpoint import FROZEN
from distinctad.train.recon.table import main as table_main

REPO = Path(__file__).resolve().parents[2]
MADEVAL_CSV = ASSETS / "madeval_anno.csv"
EVAL_MOVIE = "3074_THE_ROOMMATE"
pytestmark = pytest.mark.slow
EVAL_ADS = 40
STEPS = 12


def _job(out: Path, mode: str, *extra: str) -> list[str]:
    return [
        "bash",
        str(REPO / "launch/recon.sh"),
        "--tracking.enabled",
        "false",
        "--run.out_dir",
        str(out),
        "--data.train_annotations",
        str(MADEVAL_CSV),
        "--data.eval_movies",
        f"[{EVAL_MOVIE}]",
        "--data.max_eval_ads",
        str(EVAL_ADS),
        "--model.projector_input",
        mode,
        "--model.clip_model",
        "distinctad-tiny",
        "--model.pretrain_block_size",
        "128",
        "--epochs",
        "0",
        "--train.max_steps",
        str(STEPS),
        "--train.micro_batch_size",
        "16",
        "--train.lr",
        "1e-2",
        "--train.warmup_steps",
        "2",
        "--train.ckpt_every",
        "0",
        "--train.log_every",
        "4",
        "--eval.metrics",
        "[bleu, cider]",
        "--eval.generation.max_new_tokens",
        "12",
        "--eval.generation.batch_size",
        "40",
        *extra,
    ]


def _run(cmd: list[str], cwd: Path) -> str:
    env = child_env({"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600
    )
    assert proc.returncode == 0, f"exited {proc.returncode}:\n{proc.stdout[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("recon_runs")
    cls_log = _run(
        _job(
            root / "cls",
            "cls",
            "--model.llm",
            "tiny-gpt2",
            "--model.tokenizer_vocab",
            "600",
            "--model.pretrain_steps",
            "20",
            "--model.pretrain_batch_size",
            "8",
            "--model.pretrain_repeat",
            "0.5",
        ),
        root,
    )
    words_log = _run(
        _job(
            root / "words",
            "words",
            "--model.llm",
            str(root / "cls" / "lm"),
            "--model.clip_pretrained",
            str(root / "cls" / "clip"),
            "--model.pretrain_steps",
            "0",
            "--train.save_frozen",
            "true",  # this run's checkpoint keeps the frozen parts, so they can be compared after training
        ),
        root,
    )
    return {"cls": (root / "cls", cls_log), "words": (root / "words", words_log)}


def test_first_run_builds_and_saves_the_frozen_parts(runs):
    run_dir, log = runs["cls"]
    assert "LM pre-trained for 20 steps on the training ADs" in log
    assert "pre-trained" not in runs["words"][1] and not (runs["words"][0] / "lm").exists()
    assert (run_dir / "clip" / "open_clip_config.json").is_file() and (run_dir / "lm" / "config.json").is_file()
    resolved = (run_dir / "config.yaml").read_text()  # the resolved config points at the saved parts
    assert f"llm: {run_dir / 'lm'}" in resolved and f"clip_pretrained: {run_dir / 'clip'}" in resolved
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == STEPS and summary["epoch"] == 0
    assert {"eval/BLEU-1", "eval/CIDEr", "eval/loss"} <= set(summary)
    # 12 steps of a tiny LM often give one-word ADs: then BLEU-4 is undefined, reported as null with a notice
    report = json.loads((run_dir / "eval" / f"step_{STEPS:08d}_report.json").read_text())
    if "eval/BLEU-4" not in summary:
        assert report["BLEU-4"] is None
        assert any("BLEU-4 undefined" in n for n in report["meta"]["notices"])


@pytest.mark.parametrize("mode", ["cls", "words"])
def test_run_writes_table_predictions_and_projector(runs, mode):
    run_dir, log = runs[mode]
    assert "trainable parameters (the projector)" in log
    n_trainable = (64 + 1) * 64  # distinctad-tiny text embedding 64 -> tiny-gpt2 width 64
    assert f"{n_trainable} trainable parameters" in log
    prefix = run_dir / "eval" / f"step_{STEPS:08d}"
    preds = [json.loads(line) for line in Path(f"{prefix}_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == EVAL_ADS and {p["movie"] for p in preds} == {EVAL_MOVIE}
    assert len({p["ad_index"] for p in preds}) == EVAL_ADS and all(p["text"].strip() for p in preds)
    table = Path(f"{prefix}_table_a1.md").read_text()
    row = json.loads(Path(f"{prefix}_table_a1.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert row["projector_input"] == mode and row["trainable_params"] == n_trainable
    assert row["metrics"]["CIDEr"] == pytest.approx(summary["eval/CIDEr"])
    name = "[CLS]" if mode == "cls" else "all word tokens"
    assert f"| {name} | paper" in table and f"| {name} | this run" in table
    assert f"{row['metrics']['BLEU-1']:.1f}" in table.split("this run")[1]
    assert (run_dir / "projector" / "projector.safetensors").is_file()


def _checkpoint(run_dir: Path) -> dict:
    path = run_dir / "checkpoints" / f"step_{STEPS:08d}" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def test_default_checkpoint_holds_only_the_projector(runs):
    """train.save_frozen=false (the default): the frozen CLIP text tower and LM are left out of the checkpoint."""
    saved = _checkpoint(runs["cls"][0])
    assert set(saved["module"]) == {"projector.weight", "projector.bias"}
    record = saved[FROZEN]
    assert record["excluded"] and any(k.startswith("llm.") for k in record["shapes"])
    assert any(k.startswith("clip.clip.") for k in record["shapes"])


def test_clip_and_lm_are_bit_identical_after_training(runs):
    """The run with train.save_frozen=true: its checkpoint's frozen parts equal the saved parts it started from."""
    import safetensors.torch

    run_dir, _ = runs["words"]
    state = _checkpoint(run_dir)["module"]
    trained = {k: v for k, v in state.items() if k.startswith("projector.")}
    assert set(trained) == {"projector.weight", "projector.bias"}
    parts = runs["cls"][0]
    clip = safetensors.torch.load_file(str(parts / "clip" / "open_clip_model.safetensors"))
    text = {k: v for k, v in clip.items() if not k.startswith("visual.")}
    lm = safetensors.torch.load_file(str(parts / "lm" / "model.safetensors"))
    for k, v in text.items():  # (the engine stores 0-d parameters such as logit_scale as shape (1,))
        assert torch.equal(state[f"clip.clip.{k}"].reshape(v.shape), v), k
    for k, v in lm.items():
        assert torch.equal(state[f"llm.{k}"], v), k
    assert not any(k.startswith("clip.clip.visual.") and "weight" in k for k in state)  # the vision tower is gone


def test_table_of_both_runs(runs, tmp_path, capsys):
    table_main(["--runs", str(runs["cls"][0]), str(runs["words"][0]), "--out", str(tmp_path / "t.md")])
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "t.md").read_text()
    assert printed.count("| this run") == 2 and printed.count("| paper") == 2
    with pytest.raises(SystemExit, match="no eval/step_"):
        table_main(["--runs", str(tmp_path)])
