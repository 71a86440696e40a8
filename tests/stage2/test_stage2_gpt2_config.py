"""The paper's default setting is one config away: launch/configs/stage2_vitb32_gpt2.yaml with the real GPT-2
124M architecture (transformers' GPT2Config() defaults, random weights saved and loaded back), two training steps."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from distinctad.testing import REPO
from distinctad.train.core.config import load_config
from distinctad.train.models.captioner import DistinctADCaptioner, prepare_batch
from distinctad.train.models.llm import load_tokenizer
from distinctad.train.stage2.config import Stage2Job

pytestmark = pytest.mark.slow


def test_vitb32_gpt2_config_builds_gpt2_124m_and_trains_two_steps(tmp_path, tokenizer, make_batch):
    gpt2 = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(gpt2)  # GPT-2 124M: 12 layers, 768 wide, 50,257 tokens
    tokenizer.save_pretrained(gpt2)  # the real GPT-2 BPE needs the hub; the on-the-fly one fits inside its vocab
    cfg = load_config(Stage2Job, REPO / "launch/configs/stage2_vitb32_gpt2.yaml", ["--model.llm", str(gpt2)])
    m = cfg.model
    assert (m.feature_dim, m.d_model, m.alpha_path, m.beta_path, m.lambda_dist > 0, m.lora) == (
        512,
        512,
        True,
        True,
        True,
        False,
    )
    model = DistinctADCaptioner(m, load_tokenizer(gpt2)).train()
    llm = model.llm.config
    assert (llm.model_type, llm.n_layer, llm.n_embd, llm.n_head, llm.vocab_size) == ("gpt2", 12, 768, 12, 50257)
    n_llm = sum(p.numel() for p in model.llm.parameters())
    assert 124_000_000 < n_llm < 124_500_000  # 124,439,808 with the tied LM head counted once
    batch = make_batch(B=1, N=2, T=2, D=512, valid=(2,))
    prepared = prepare_batch(batch, load_tokenizer(gpt2), m)
    params = [p for p in model.parameters() if p.requires_grad]
    before = model.llm.transformer.h[0].attn.c_attn.weight.detach().clone()
    opt = torch.optim.AdamW(params, lr=1e-4)
    losses = []
    for _ in range(2):
        out = model(**prepared)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out["loss"].detach()))
    assert torch.isfinite(torch.tensor(losses)).all() and float(out["dist_loss"]) > 0  # L_dist has targets here
    assert not torch.equal(before, model.llm.transformer.h[0].attn.c_attn.weight)  # GPT-2 itself trains (no LoRA)
