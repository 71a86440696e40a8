"""Generation's text context: gt (unchanged path), predicted (the model's own previous ADs), none."""

import pytest
import torch

import distinctad.train.models.captioner as captioner_mod
from distinctad.testing import TINY_CAPTIONER
from distinctad.train.models.captioner import CaptionerConfig, DistinctADCaptioner, prepare_batch
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.stage2.context import generate_in_context, with_context

TINY = TINY_CAPTIONER
GEN = GenerationArgs(num_beams=1, max_new_tokens=6)


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    return DistinctADCaptioner(CaptionerConfig(**TINY), tokenizer).eval()


def _same_movie(make_batch):
    batch = make_batch(valid=(4, 3))
    batch["movie"] = ["m0", "m0"]  # two consecutive windows of one movie
    return batch


def test_gt_mode_is_the_plain_path(model, tokenizer, make_batch):
    batch = make_batch()
    plain = model.generate(prepare_batch(batch, tokenizer, model.cfg), tokenizer, GEN)
    assert generate_in_context(model, tokenizer, batch, GEN, "gt", {}) == plain


def test_predicted_context_is_the_previous_windows_own_ads(model, tokenizer, make_batch, monkeypatch):
    batch = _same_movie(make_batch)
    seen = []
    real = captioner_mod.prepare_batch

    def spy(b, tok, cfg):
        seen.append(([list(c) for c in b["context"]], [list(s) for s in b["sentences"]]))
        return real(b, tok, cfg)

    monkeypatch.setattr(captioner_mod, "prepare_batch", spy)
    histories: dict[str, list[str]] = {"m0": ["an earlier AD"]}
    out = generate_in_context(model, tokenizer, batch, GEN, "predicted", histories)
    assert [len(w) for w in out] == [4, 3]
    assert len(seen) == 2  # window by window
    # window 0 sees the history before it; window 1 sees exactly the last K=2 ADs generated for window 0
    assert seen[0][0] == [["an earlier AD"]]
    assert seen[1][0] == [out[0][-2:]]
    assert histories["m0"] == ["an earlier AD", *out[0], *out[1]]
    # no ground-truth sentence reaches the model
    assert all(s == "" for _, sentences in seen for row in sentences for s in row)


def test_predicted_and_none_prompts_hold_no_ground_truth_tokens(tokenizer, make_batch):
    cfg = CaptionerConfig(**TINY)
    batch = _same_movie(make_batch)
    bos = tokenizer.bos_token_id
    none = prepare_batch(with_context(batch, "none", {}, 2), tokenizer, cfg)
    assert all(none["gen_ids"][v][none["gen_mask"][v]].tolist() == [bos] for v in range(7))  # <bos> alone
    pred = prepare_batch(with_context(batch, "predicted", {"m0": ["x", "Ana opens the red door."]}, 2), tokenizer, cfg)
    for v in range(7):  # every clip: the two predicted ADs, then <bos>; never the window's own (blanked) sentences
        ids = pred["gen_ids"][v][pred["gen_mask"][v]].tolist()
        assert ids[-1] == bos and tokenizer.decode(ids[:-1]) == "x Ana opens the red door."
    with pytest.raises(ValueError, match="context must be one of"):
        with_context(batch, "oracle", {}, 2)
