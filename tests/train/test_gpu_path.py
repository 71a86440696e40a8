"""The GPU path's config keys, checked on CPU: what each one resolves to here, and the fallbacks with their notice.

``train.adamw_kernel``, ``train.compile`` / ``train.compile_backend``, ``train.host_memory`` (+ non-blocking copies),
``model.attn_implementation``; ``deepspeed.precision`` bf16 and ``model.gradient_checkpointing`` have their own tests.
benchmarks/gpu_check.sh runs the same keys on a GPU.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from distinctad.common import REPO_ROOT
from distinctad.train.core import engine as E
from distinctad.train.core.config import ConfigError, load_config
from distinctad.train.models import llm as L
from distinctad.train.stage2.config import Stage2Job


def test_fused_adamw_and_pin_memory_resolve_per_device(monkeypatch, caplog):
    assert not E.use_fused_adamw("auto") and E.use_fused_adamw("fused") and not E.use_fused_adamw("foreach")
    assert not E.use_pin_memory("auto") and not E.use_pin_memory("pageable")
    with caplog.at_level(logging.WARNING):
        assert not E.use_pin_memory("pinned")  # no CUDA here: pageable memory, one notice
    assert sum("train.host_memory=pinned needs a CUDA device" in r.message for r in caplog.records) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert E.use_fused_adamw("auto") and E.use_pin_memory("auto") and E.use_pin_memory("pinned")


def test_flash_attention_falls_back_to_sdpa_with_a_notice(caplog):
    with caplog.at_level(logging.WARNING):
        assert L.attention_kernel("flash_attention_2") == "sdpa"
    assert any("flash_attention_2: no CUDA device; using sdpa" in r.message for r in caplog.records)
    assert L.attention_kernel("eager") == "eager" and L.attention_kernel("sdpa") == "sdpa"


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_attention_kernels_compute_the_same_logits(tmp_path, name, one_thread):
    tok = L.train_bpe_tokenizer(["Ana opens the red door.", "Ben reads a letter."] * 8, 300, tmp_path / "tok")
    ids = torch.tensor([tok("Ana opens the door and reads a letter.")["input_ids"]])
    logits = {}
    for kernel in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = L.build_llm(name, tok, attn_implementation=kernel).eval()
        assert model.config._attn_implementation == kernel
        with torch.no_grad():
            logits[kernel] = model(input_ids=ids).logits
    assert logits["eager"].shape == (1, ids.shape[1], len(tok))
    torch.testing.assert_close(logits["sdpa"], logits["eager"], rtol=1e-5, atol=1e-5)


def test_bad_values_are_one_line_errors():
    yaml = REPO_ROOT / "launch/configs/stage2.yaml"
    with pytest.raises(ConfigError, match="attn_implementation must be sdpa, flash_attention_2 or eager"):
        load_config(Stage2Job, yaml, ["--model.attn_implementation", "flash"])
    with pytest.raises(ConfigError, match="adamw_kernel"):
        load_config(Stage2Job, yaml, ["--train.adamw_kernel", "true"])
    cfg = load_config(Stage2Job, yaml, [])
    assert (cfg.train.adamw_kernel, cfg.train.compile, cfg.train.host_memory) == ("auto", False, "auto")
    assert cfg.model.attn_implementation == "sdpa" and cfg.model.gradient_checkpointing is False


@pytest.mark.slow
def test_fused_adamw_and_compile_reach_the_engine(tmp_path, launcher_env, one_thread, capfd):
    """The trivial job with the fused AdamW kernel (it runs on CPU too) and torch.compile through DeepSpeed's
    engine.compile (the 'eager' backend: the same plumbing as inductor, without code generation)."""
    from distinctad.train.main import run_job

    args = ["trivial", str(REPO_ROOT / "launch/configs/trivial.yaml"), "--tracking.enabled", "false"]
    args += ["--run.out_dir", str(tmp_path / "run"), "--train.max_steps", "3", "--train.log_every", "1"]
    run_job([*args, "--train.adamw_kernel", "fused", "--train.compile", "true", "--train.compile_backend", "eager"])
    assert "fused AdamW, torch.compile (eager)" in capfd.readouterr().err  # the job's log line (init_logger)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    fused = [r["train/loss"] for r in rows if "train/loss" in r]
    run_job([*args, "--run.out_dir", str(tmp_path / "plain")])
    rows = [json.loads(x) for x in (tmp_path / "plain/metrics.jsonl").read_text().splitlines()]
    plain = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(fused) == 3 and fused == pytest.approx(plain, rel=1e-5)  # same maths, other kernels
