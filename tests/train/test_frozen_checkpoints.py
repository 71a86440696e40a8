"""Checkpoints hold what trains: frozen parameters (LoRA's base, a frozen LLM) are left out, loaded back on top of
the base the config rebuilds, and a resume from such a checkpoint is bit-exact (train.save_frozen=false)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from distinctad.common import REPO_ROOT
from distinctad.testing import run_cmd
from distinctad.train.main import run_job

pytestmark = pytest.mark.slow

CASES = {
    # the tiny LLaMA under LoRA: peft freezes the base; ZeRO-3 as the 8B recipe (launch/configs/stage2_llama3_lora.yaml)
    "lora-zero3": ["--model.llm", "tiny-llama", "--model.lora", "true", "--deepspeed.zero_stage", "3"],
    # Stage-II with a frozen LLM: only our modules train
    "frozen-llm-zero2": ["--model.freeze_llm", "true", "--deepspeed.zero_stage", "2"],
}


def _job(synth: Path, out: Path, case: str, *extra: str) -> list[str]:
    return [
        "stage2",
        str(REPO_ROOT / "launch/configs/stage2.yaml"),
        *CASES[case],
        "--model.feature_dim",
        "64",
        "--data.synth_dir",
        str(synth),
        "--data.synth_movies",
        "2",
        "--data.synth_ads_per_movie",
        "16",
        "--tracking.enabled",
        "false",
        "--run.out_dir",
        str(out),
        "--train.max_steps",
        "4",
        "--train.ckpt_every",
        "2",
        "--train.keep_checkpoints",
        "5",
        "--train.log_every",
        "1",
        "--train.warmup_steps",
        "1",
        "--train.lr",
        "5e-3",
        "--eval.generation.num_beams",
        "1",
        "--eval.generation.max_new_tokens",
        "6",
        "--eval.metrics",
        "[bleu]",
        "--eval.max_windows",
        "2",
        *extra,
    ]


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every DeepSpeed file of a checkpoint, keyed file/path."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    for f in sorted(folder.glob("*.pt")):
        walk(f.name, torch.load(f, map_location="cpu", weights_only=False))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpoint_leaves_the_frozen_base_out_resumes_bit_exact_and_generates_the_same(
    case, tmp_path, launcher_env, one_thread
):
    synth = tmp_path / "synth"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_job(_job(synth, straight, case))
    first = run_job(_job(synth, resumed, case, "--train.stop_after", "2"))
    assert first["step"] == 2 and not first["finished"]
    run_job(_job(synth, resumed, case))

    # what the checkpoint holds: no frozen tensor, and about trainable weights + fp32 master + two AdamW moments
    step = straight / "checkpoints/step_00000004"
    states = next(step.glob("*model_states.pt"))
    state = torch.load(states, map_location="cpu", weights_only=False)
    record = state["frozen_base"]
    frozen = record["shapes"]
    frozen_numel = sum(math.prod(s) for s in frozen.values())
    trainable_numel = sum(math.prod(s) for group in state["param_shapes"] for s in group.values())
    assert record["excluded"] and frozen and frozen_numel > trainable_numel / 4
    assert not set(frozen) & set(state["module"]), "frozen weights were saved"
    trainable = {name for group in state["param_shapes"] for name in group}
    tied = [k for k in state["module"] if k.endswith("lm_head.weight") and k not in trainable]
    assert not tied, f"a frozen weight saved under a tied name: {tied}"  # GPT-2's lm_head is wte
    assert "frozen_param_fragments" not in state or not state["frozen_param_fragments"]
    size = sum(f.stat().st_size for f in step.iterdir() if f.is_file())
    overhead = 192 * 1024  # pickled client state, RNG states, fingerprints, buffers (EMA centres), file headers
    assert size <= 4 * 4 * trainable_numel + overhead, (size, trainable_numel)
    assert 4 * frozen_numel > overhead  # so the bound above fails if the frozen base were in the files

    # resume = uninterrupted, bit for bit: every tensor of the last checkpoint, the losses, the generated ADs
    a, b = _tensors(step), _tensors(resumed / "checkpoints/step_00000004")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert _losses(resumed) == _losses(straight)
    preds = (straight / "eval/step_00000004_predictions.jsonl").read_text()
    assert preds and (resumed / "eval/step_00000004_predictions.jsonl").read_text() == preds

    # a fresh process rebuilds the base from the checkpoint's config and generates the same ADs
    out = tmp_path / "gen.jsonl"
    gen = [sys.executable, "-m", "distinctad.train.tools.generate", "--ckpt", str(resumed)]
    gen += ["--shards", str(synth / "shards/window-eval"), "--out", str(out), "--num-beams", "1"]
    gen += ["--max-new-tokens", "6", "--max-windows", "2"]
    run_cmd(gen, cwd=tmp_path)  # without the launcher variables the in-process runs left in os.environ
    assert out.read_text() == preds


def test_another_base_is_refused_in_one_line(tmp_path, launcher_env, one_thread):
    """A checkpoint without its frozen weights cannot be put on top of another base (here: another seed's random
    tiny LLaMA): one line naming a frozen tensor, never a silent mix."""
    synth, run = tmp_path / "synth", tmp_path / "run"
    run_job(_job(synth, run, "lora-zero3", "--train.max_steps", "2", "--eval.enabled", "false"))
    with pytest.raises(SystemExit, match=r"error: cannot load .* frozen weights this config rebuilds differ .*llm\."):
        run_job(_job(synth, run, "lora-zero3", "--train.max_steps", "3", "--run.seed", "1", "--eval.enabled", "false"))
