"""Ablation switches: each one changes the computation; α = 0 with β off is exactly A0."""

import dataclasses

import pytest
import torch

from distinctad.testing import TINY_CAPTIONER
from distinctad.train.core.config import ConfigError, from_dict, load_config
from distinctad.train.models.captioner import DistinctADCaptioner, prepare_batch
from distinctad.train.models.captioner_config import PRESETS, CaptionerConfig
from distinctad.train.models.distinctive_prompt import DistinctivePrompt
from distinctad.train.stage2.config import Stage2Job

TINY = TINY_CAPTIONER


def test_prompt_paths_by_hand():
    h, h_ctx = torch.randn(1, 3, 2, 4), torch.randn(1, 3, 2, 4)
    mask = torch.tensor([[True, True, False]])
    assert DistinctivePrompt()(h, None, mask) is h  # A0
    d = h - h_ctx
    out = DistinctivePrompt(alpha_path=True, alpha=0.5)(h, h_ctx, mask)
    torch.testing.assert_close(out, h + 0.5 * d)
    out = DistinctivePrompt(beta_path=True, beta=2.0)(h, h_ctx, mask)
    assert out.shape == (1, 3, 4, 4)
    torch.testing.assert_close(out[:, :, :2], h)
    torch.testing.assert_close(out[0, 0, 2:], 2.0 * d[0, 1])  # clip 0 sees clip 1 only (clip 2 is padding)
    torch.testing.assert_close(out[0, 1, 2:], 2.0 * d[0, 0])
    torch.testing.assert_close(out[0, 2, 2:], 2.0 * (d[0, 0] + d[0, 1]) / 2)
    alone = DistinctivePrompt(beta_path=True)(h, h_ctx, torch.tensor([[True, False, False]]))
    assert (alone[0, 0, 2:] == 0).all()  # no other valid clip: zeros
    assert isinstance(DistinctivePrompt(alpha_learnable=True).alpha, torch.nn.Parameter)
    assert not isinstance(DistinctivePrompt().alpha, torch.nn.Parameter)


def _model(tokenizer, state=None, **overrides):
    torch.manual_seed(0)
    model = DistinctADCaptioner(CaptionerConfig(**{**TINY, **overrides}), tokenizer)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith(("ema.", "xattn.", "prompt.")) for k in missing)
    return model.eval()


@pytest.fixture
def a0(tokenizer, make_batch):
    model = _model(tokenizer)
    prepared = prepare_batch(make_batch(), tokenizer, model.cfg)
    return model, prepared


def test_alpha_zero_reproduces_a0(tokenizer, a0):
    model, prepared = a0
    ref = model(**prepared)
    b1 = _model(tokenizer, model.state_dict(), alpha_path=True, alpha=0.0)
    assert b1.ema is not None  # the context path does run
    out = b1(**prepared)
    for key in ("loss", "lm_loss", "dist_loss"):
        assert torch.equal(out[key], ref[key])
    p_ref, _ = model.encode_visual(prepared["feats"], prepared["frame_mask"], prepared["clip_mask"])
    p_b1, _ = b1.encode_visual(prepared["feats"], prepared["frame_mask"], prepared["clip_mask"])
    assert torch.equal(p_ref, p_b1)
    kw = dict(num_beams=2, max_new_tokens=6)
    assert b1.generate(prepared, tokenizer, **kw) == model.generate(prepared, tokenizer, **kw)


def test_each_switch_changes_the_computation(tokenizer, a0):
    model, prepared = a0
    state = model.state_dict()
    ref = model(**prepared)
    b1 = _model(tokenizer, state, alpha_path=True, alpha=0.5)
    assert not torch.equal(b1(**prepared)["lm_loss"], ref["lm_loss"])
    b2 = _model(tokenizer, state, beta_path=True, beta=0.5)
    p, _ = b2.encode_visual(prepared["feats"], prepared["frame_mask"], prepared["clip_mask"])
    assert p.shape[1] == 2 * TINY["num_latents"]
    assert not torch.equal(b2(**prepared)["lm_loss"], ref["lm_loss"])
    c0 = _model(tokenizer, state, lambda_dist=0.3)
    out = c0(**prepared)
    assert torch.equal(out["lm_loss"], ref["lm_loss"]) and out["dist_loss"] > 0
    torch.testing.assert_close(out["loss"], ref["lm_loss"] + 0.3 * out["dist_loss"])
    assert torch.equal(ref["loss"], ref["lm_loss"])  # A0: L_dist reported but not in the loss


def test_ema_grad_and_learnable_scalars(tokenizer, a0):
    model, prepared = a0
    state = model.state_dict()
    grads = {}
    for flag in (False, True):
        m = _model(tokenizer, state, alpha_path=True, alpha=0.5, alpha_learnable=True, ema_grad=flag)
        m.ema.mu.copy_(_model(tokenizer, state, alpha_path=True).ema.mu)
        m(**prepared)["loss"].backward()
        grads[flag] = m.perceiver.input_proj.weight.grad.clone()
        assert m.prompt.alpha.grad is not None and m.prompt.alpha.grad != 0
    assert not torch.allclose(grads[False], grads[True])  # gradient through the EM iterations differs


def test_default_beta_starts_closed_and_learns(tokenizer, a0):
    """Our default β: a learnable scalar starting at 0, so B2/C3 begin with empty β tokens and open the path as far
    as the loss gradient asks (a fixed β = 1 lost to A0 on the quick start's features: README, Table D.2)."""
    model, prepared = a0
    cfg = CaptionerConfig()
    assert (cfg.beta, cfg.beta_learnable) == (0.0, True)
    b2 = _model(tokenizer, model.state_dict(), beta_path=True)
    assert isinstance(b2.prompt.beta, torch.nn.Parameter) and b2.prompt.beta.item() == 0.0
    h, h_ctx = torch.randn(1, 3, 2, 4), torch.randn(1, 3, 2, 4)
    out = b2.prompt(h, h_ctx, torch.ones(1, 3, dtype=torch.bool))
    assert torch.equal(out[:, :, :2], h) and (out[:, :, 2:] == 0).all()  # the β tokens are empty at the start
    b2(**prepared)["loss"].backward()
    assert b2.prompt.beta.grad is not None and b2.prompt.beta.grad != 0


def test_ablation_grid():
    assert set(PRESETS) == {"A0", "B1", "B2", "B3", "C0", "C1", "C2", "C3"}
    c3 = dataclasses.replace(CaptionerConfig(), **PRESETS["C3"])
    assert c3.alpha_path and c3.beta_path and c3.lambda_dist > 0
    with pytest.raises(ConfigError, match="unknown config key 'alpha_pth'"):
        from_dict(CaptionerConfig, {"alpha_pth": True})


@pytest.mark.parametrize("row", sorted(PRESETS))
def test_preset_sets_the_switches_of_its_row(row):
    """``--model.preset ROW`` gives exactly the row's switches; the other keys keep their defaults."""
    cfg = load_config(Stage2Job, None, ["--model.preset", row])
    for key, value in PRESETS[row].items():
        assert getattr(cfg.model, key) == value
    assert cfg.model.d_model == Stage2Job().model.d_model


def test_explicit_keys_win_over_the_preset(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("model:\n  preset: C3\n  lambda_dist: 0.5\n")
    cfg = load_config(Stage2Job, yaml, ["--model.alpha_path", "false"])
    assert (cfg.model.alpha_path, cfg.model.beta_path, cfg.model.lambda_dist) == (False, True, 0.5)
    with pytest.raises(ConfigError, match="unknown preset 'Z9'"):
        load_config(Stage2Job, None, ["--model.preset", "Z9"])
