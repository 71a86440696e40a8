"""The captioner end to end with tiny random LLMs and a tokenizer trained on the fly."""

import pytest
import torch

from distinctad.testing import TINY_CAPTIONER
from distinctad.train.models.captioner import CaptionerConfig, DistinctADCaptioner, build_captioner, prepare_batch
from distinctad.train.models.captioner_config import GenerationArgs

TINY = TINY_CAPTIONER


def test_prepare_batch_layout(tokenizer, make_batch):
    cfg = CaptionerConfig(**TINY)
    batch = make_batch()
    p = prepare_batch(batch, tokenizer, cfg)
    V = 6  # 4 + 2 valid clips
    assert p["text_ids"].shape[0] == V and p["gen_ids"].shape[0] == V and p["dist_targets"].shape[0] == V
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    # Window 0, clip 2: context = the last 2 ADs before it = window clips 0 and 1.
    s = batch["sentences"][0]
    v = 2
    gen = p["gen_ids"][v][p["gen_mask"][v]].tolist()
    assert gen[-1] == bos and tokenizer.decode(gen[:-1]) == f"{s[0]} {s[1]}"
    assert p["gen_mask"][:, -1].all()  # left padding: every row ends with <bos>
    # Window 1, clip 0: context = the window's own text context.
    v = 4
    gen = p["gen_ids"][v][p["gen_mask"][v]].tolist()
    assert tokenizer.decode(gen[:-1]) == " ".join(batch["context"][1])
    # Labels are exactly AD + <eos>; context and <bos> are not predicted.
    for v, sentence in enumerate([*s, *batch["sentences"][1][:2]]):
        lab = p["text_labels"][v][p["text_labels"][v] != -100].tolist()
        assert lab[-1] == eos and tokenizer.decode(lab[:-1]) == sentence
        ids = p["text_ids"][v][p["text_mask"][v]].tolist()
        assert ids[len(ids) - len(lab) - 1] == bos and ids[-len(lab) :] == lab
    assert p["text_mask"][:, 0].all()  # right padding for training


def test_text_only_batch_is_refused(tokenizer, make_batch):
    batch = make_batch()
    batch["feats"] = None
    with pytest.raises(ValueError, match="no frame features"):
        prepare_batch(batch, tokenizer, CaptionerConfig(**TINY))


def test_loss_falls_and_generation(tokenizer, make_batch):
    cfg = CaptionerConfig(**TINY, alpha_path=True, beta_path=True, alpha_learnable=True, lambda_dist=0.1)
    model = DistinctADCaptioner(cfg, tokenizer).train()
    prepared = prepare_batch(make_batch(), tokenizer, cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(**prepared)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.3 * losses[0]
    assert out["dist_loss"] > 0 and 0 <= out["ema_entropy"] <= 1 and out["num_clips"] == 6
    mu = model.ema.mu.clone()
    texts = model.generate(prepared, tokenizer, max_new_tokens=16)
    assert model.training  # generate restores the mode
    assert torch.equal(model.ema.mu, mu)  # and runs in eval mode: μ does not move
    assert [len(t) for t in texts] == [4, 2]
    assert all(isinstance(t, str) and t.strip() for w in texts for t in w)


def test_generation_matches_teacher_forcing(tokenizer, make_batch):
    """Greedy first token from generate (left-padded inputs_embeds) = argmax of an unpadded forward at <bos>."""
    cfg = CaptionerConfig(**TINY)
    model = DistinctADCaptioner(cfg, tokenizer).eval()
    prepared = prepare_batch(make_batch(), tokenizer, cfg)
    assert not prepared["gen_mask"].all()  # rows really are padded differently
    prompt, _ = model.encode_visual(prepared["feats"], prepared["frame_mask"], prepared["clip_mask"])
    expected = []
    with torch.no_grad():
        for v in range(6):
            ids = prepared["gen_ids"][v][prepared["gen_mask"][v]]
            x = torch.cat([prompt[v], model.llm.get_input_embeddings()(ids)])[None]
            logits = model.llm(inputs_embeds=x).logits[0, -1]
            logits[sorted({model.bos_id, model.pad_id} - {model.eos_id})] = -torch.inf  # never generated
            expected.append(logits.argmax().item())
    got = model.generate_ids(prepared, num_beams=1, repetition_penalty=1.0, max_new_tokens=1, min_new_tokens=0)
    assert got[:, 0].tolist() == expected


def test_decoding_settings_come_from_generation_args(tokenizer, make_batch, monkeypatch):
    """No gen: GenerationArgs() defaults; gen: its values; explicit keyword arguments win over both."""
    cfg = CaptionerConfig(**TINY)
    model = DistinctADCaptioner(cfg, tokenizer)
    prepared = prepare_batch(make_batch(), tokenizer, cfg)
    seen = []

    def fake_generate(inputs_embeds, attention_mask, **kwargs):
        seen.append(kwargs)
        return torch.full((inputs_embeds.shape[0], 1), model.eos_id)

    monkeypatch.setattr(model.llm, "generate", fake_generate)
    decoding = ("num_beams", "repetition_penalty", "no_repeat_ngram_size", "max_new_tokens")
    model.generate(prepared, tokenizer)
    assert {k: seen[-1][k] for k in decoding} == GenerationArgs().decoding()
    gen = GenerationArgs(num_beams=3, repetition_penalty=1.5, no_repeat_ngram_size=2, max_new_tokens=9)
    model.generate(prepared, tokenizer, gen)
    assert {k: seen[-1][k] for k in decoding} == dict(
        num_beams=3, repetition_penalty=1.5, no_repeat_ngram_size=2, max_new_tokens=9
    )
    model.generate_ids(prepared, gen, max_new_tokens=4, min_new_tokens=0)
    assert (seen[-1]["num_beams"], seen[-1]["max_new_tokens"], seen[-1]["min_new_tokens"]) == (3, 4, 0)


def test_tiny_llama_lora_trains_only_adapters(tokenizer, make_batch):
    cfg = CaptionerConfig(**{**TINY, "llm": "tiny-llama"}, lora=True, lora_r=4, alpha_path=True)
    model, _ = build_captioner(cfg, tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("perceiver.", "ema.", "xattn.", "prompt.", "proj.")) or "lora_" in n for n in trainable
    )
    assert any("lora_" in n for n in trainable)
    base = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" in n}
    prepared = prepare_batch(make_batch(), tokenizer, cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(**prepared)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.llm.named_parameters():
        if "lora_" in n:
            continue
        assert torch.equal(p, base[n]), n
    assert any(not torch.equal(p, lora[n]) for n, p in model.llm.named_parameters() if "lora_" in n)
    texts = model.generate(prepared, tokenizer, max_new_tokens=4, num_beams=2)
    assert [len(t) for t in texts] == [4, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_llm(tokenizer, make_batch):
    cfg = CaptionerConfig(
        **{**TINY, "llm": "tiny-llama"}, llm_dtype="bfloat16", alpha_path=True, beta_path=True, lambda_dist=0.1
    )
    model = DistinctADCaptioner(cfg, tokenizer).cuda()
    prepared = {k: v.cuda() for k, v in prepare_batch(make_batch(), tokenizer, cfg).items()}
    out = model(**prepared)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.proj.weight.grad is not None
    assert [len(t) for t in model.generate(prepared, tokenizer, max_new_tokens=4)] == [4, 2]
