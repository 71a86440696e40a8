"""CLIP-AD model: frozen text tower, trainable vision tower, per-token text outputs, local weight loading."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from distinctad.train.models.clip_ad import (
    TINY_MODEL,
    WeightsNotFoundError,
    _hub_cached_file,
    build_clip_ad,
    clip_transforms,
    create_clip,
    pool_video,
    save_clip,
    text_token_outputs,
)
from distinctad.train.stage1.config import Stage1LossConfig
from distinctad.train.stage1.losses import Stage1Loss

TEXTS = ["Ana opens the red door!", "Bob, smiling, drives away", "She nods."]


def _text_state(model):
    return {
        k: v.clone() for k, v in model.clip.state_dict().items() if not k.startswith("visual.") and k != "logit_scale"
    }


def test_text_tower_frozen_and_unchanged_vision_trained(tiny_model):
    model = tiny_model.train()
    before_text = _text_state(model)
    before_vis = {k: v.clone() for k, v in model.clip.visual.state_dict().items()}
    # Text tower stays in eval mode although the model is in train mode.
    assert all(not m.training for m in model.text_modules()) and model.clip.visual.training
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = Stage1Loss(Stage1LossConfig(lambda_mil=1.0))
    images = torch.randn(3, 2, 3, 32, 32)
    for _ in range(3):
        out = loss_fn(**model(images, TEXTS))
        opt.zero_grad()
        out["loss"].backward()
        text_params = [
            p for n, p in model.clip.named_parameters() if not n.startswith("visual.") and n != "logit_scale"
        ]
        assert text_params and all(p.grad is None and not p.requires_grad for p in text_params)
        opt.step()
    after_text = _text_state(model)
    assert before_text.keys() == after_text.keys()
    assert all(torch.equal(before_text[k], after_text[k]) for k in before_text)
    changed = [k for k, v in model.clip.visual.state_dict().items() if not torch.equal(v, before_vis[k])]
    assert "proj" in changed and "conv1.weight" in changed


def test_partial_vision_unfreezing():
    model = build_clip_ad(TINY_MODEL, trainable_vision_blocks=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "clip.visual.proj" in trainable and "clip.visual.ln_post.weight" in trainable
    assert "clip.visual.transformer.resblocks.1.attn.in_proj_weight" in trainable
    assert "clip.visual.transformer.resblocks.0.attn.in_proj_weight" not in trainable
    assert "clip.visual.conv1.weight" not in trainable
    assert not any(n.startswith("clip.transformer") or "token_embedding" in n for n in trainable)
    with pytest.raises(ValueError, match="trainable_vision_blocks"):
        build_clip_ad(TINY_MODEL, trainable_vision_blocks=3)


def test_grad_checkpointing_gives_the_same_gradients():
    images = torch.randn(2, 2, 3, 32, 32)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_clip_ad(TINY_MODEL, trainable_vision_blocks=1, grad_checkpointing=ckpt).train()
        Stage1Loss()(**model(images, TEXTS[:2]))["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n])


def test_text_token_outputs_and_words(tiny_model):
    model = tiny_model.eval()
    tokens = model.tokenize(TEXTS)
    per_token, pooled = text_token_outputs(model.clip, tokens)
    assert per_token.shape == (3, 32, 64)
    torch.testing.assert_close(pooled, model.clip.encode_text(tokens), rtol=1e-5, atol=1e-5)
    # The pooled vector is the EOT row of the per-token output.
    eot = (tokens == model.tokenizer.eot_token_id).int().argmax(-1)
    torch.testing.assert_close(pooled, per_token[torch.arange(3), eot])

    emb, mask = model.encode_words(TEXTS)
    # Hand-decoded words: BPE tokens between SOT and EOT minus punctuation.
    words = [
        [model.tokenizer.decoder[int(t)] for t, m in zip(tokens[b, 1 : 1 + mask.shape[1]], mask[b]) if m]
        for b in range(3)
    ]
    assert words[0] == ["ana</w>", "opens</w>", "the</w>", "red</w>", "door</w>"]
    assert words[1] == ["bob</w>", "smiling</w>", "drives</w>", "away</w>"]
    assert words[2] == ["she</w>", "no", "ds</w>"]  # a "word" is a BPE token: "nods" is two of them
    assert mask.shape[1] == int(eot.max()) - 1  # W = tokens between SOT and the latest EOT
    torch.testing.assert_close(emb[0, 0], F.normalize(per_token[0, 1], dim=-1))
    torch.testing.assert_close(emb.norm(dim=-1)[mask], torch.ones(int(mask.sum())))
    torch.testing.assert_close(model.encode_text(TEXTS), F.normalize(pooled, dim=-1))


def test_encode_video_shapes_and_norm(tiny_model):
    images = torch.randn(2, 3, 3, 32, 32)
    frames = tiny_model.encode_video(images)
    assert frames.shape == (2, 3, 64)
    torch.testing.assert_close(frames.norm(dim=-1), torch.ones(2, 3))
    # Frame (b, t) is the image embedding of images[b, t].
    torch.testing.assert_close(frames[1, 2], tiny_model.clip.encode_image(images[1, 2:3], normalize=True)[0])
    video = pool_video(frames)
    torch.testing.assert_close(video[0], F.normalize(frames[0].mean(0), dim=0))


@pytest.mark.parametrize("safetensors", [True, False])
def test_save_and_load_back(tmp_path, tiny_model, safetensors):
    with torch.no_grad():
        tiny_model.clip.logit_scale.fill_(2.5)  # a value random init never has
    weights = save_clip(tiny_model, tmp_path / "ckpt", TINY_MODEL, safetensors=safetensors)
    assert weights.name == ("open_clip_model.safetensors" if safetensors else "open_clip_pytorch_model.bin")
    images = torch.randn(2, 2, 3, 32, 32)
    tiny_model.eval()
    ref = tiny_model(images, TEXTS[:2])
    for source in (str(weights), str(tmp_path / "ckpt")):  # the weights file, and the folder (local-dir)
        loaded = build_clip_ad(TINY_MODEL, pretrained=source).eval()
        out = loaded(images, TEXTS[:2])
        for k in ("frame_emb", "text_emb", "word_emb", "logit_scale"):
            torch.testing.assert_close(out[k], ref[k])
        assert loaded.clip.logit_scale.item() == 2.5


def test_missing_weights_give_one_line_error(tmp_path):
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(WeightsNotFoundError) as err:
        build_clip_ad(TINY_MODEL, pretrained=str(missing))
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "place open_clip_pytorch_model.bin" in msg
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "open_clip_config.json").write_text("{}")  # a config alone is no checkpoint
    with pytest.raises(WeightsNotFoundError, match="no CLIP checkpoint in"):
        create_clip(TINY_MODEL, str(tmp_path / "empty"))
    # A known open_clip tag that is not in the (empty) cache: an error naming the source, never a download.
    with pytest.raises(WeightsNotFoundError) as err:
        create_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path / "hf"))
    msg = str(err.value)
    assert "\n" not in msg and "hf.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg and "no downloads" in msg


def test_tag_resolves_from_local_hub_cache(tmp_path):
    # Minimal Hugging Face hub cache layout: refs/main -> snapshots/<rev>/<file>.
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"x")
    found = _hub_cached_file("laion/CLIP-ViT-B-32-laion2B-s34B-b79K/", str(tmp_path))
    assert found is not None and os.path.samefile(found, snap / "open_clip_pytorch_model.bin")
    assert _hub_cached_file("laion/other-repo/", str(tmp_path)) is None


def test_transforms(tiny_model):
    train_tf, eval_tf = clip_transforms(tiny_model)
    img = Image.new("RGB", (64, 48), (255, 0, 0))
    x = eval_tf(img)
    assert x.shape == (3, 32, 32)
    # Pure red, normalised with CLIP's mean/std.
    torch.testing.assert_close(
        x[:, 16, 16],
        torch.tensor([(1 - 0.48145466) / 0.26862954, (0 - 0.4578275) / 0.26130258, (0 - 0.40821073) / 0.27577711]),
        atol=1e-3,
        rtol=0,
    )
    assert train_tf(img).shape == (3, 32, 32)
