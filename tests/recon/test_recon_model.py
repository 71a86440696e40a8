"""The reconstruction model: what the projector sees, the loss, freezing, projector save/load, data split, table."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from distinctad.data import ASSETS
from distinctad.train.core.config import ConfigError, field_docs, from_dict
from distinctad.train.models.clip_ad import TINY_MODEL, build_clip_ad, create_clip, save_clip, text_token_outputs
from distinctad.train.models.llm import build_llm, save_llm, train_bpe_tokenizer
from distinctad.train.recon.config import ReconDataArgs, ReconEvalArgs, ReconJob, ReconModelArgs
from distinctad.train.recon.data import load_data
from distinctad.train.recon.lm import pretrain_lm
from distinctad.train.recon.model import (
    ReconModel,
    TrainableParametersError,
    build_recon_model,
    check_only_projector_trainable,
    collate,
    load_projector,
    save_projector,
)
from distinctad.train.recon.table import table_a1_markdown

MADEVAL_CSV = ASSETS / "madeval_anno.csv"
EVAL_MOVIE = "3074_THE_ROOMMATE"
SENTENCES = [
    "Ana opens the red door.",
    "Bo walks into the kitchen.",
    "Cleo smiles at a stranger on the bus.",
    "Dev picks up a knife.",
    "The blue car drives away.",
    "She reads the letter again.",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_bpe_tokenizer(SENTENCES * 8, vocab_size=300, out_dir=tmp_path_factory.mktemp("tok"))


def make_model(tokenizer, mode: str = "words", seed: int = 0) -> ReconModel:
    torch.manual_seed(seed)
    clip = build_clip_ad(TINY_MODEL, skip_punctuation=False)  # the recon default: all word tokens
    return ReconModel(clip, build_llm("tiny-gpt2", tokenizer), tokenizer, mode)


def test_words_features_are_the_word_token_outputs_and_cls_the_pooled_vector(tokenizer):
    words, cls = make_model(tokenizer, "words"), make_model(tokenizer, "cls")
    cls.clip.load_state_dict(words.clip.state_dict())
    tokens = words.tokenize_clip(SENTENCES[:3])  # (3, ctx)
    per_token, pooled = text_token_outputs(words.clip.clip, tokens)
    feats, mask = words.clip_features(tokens)
    eot = (tokens == words.clip.tokenizer.eot_token_id).int().argmax(1)
    # Every token strictly between SOT (position 0) and EOT is a word, punctuation included; nothing else.
    assert mask.sum(1).tolist() == (eot - 1).tolist()
    for b in range(3):
        assert mask[b, 1 : eot[b]].all() and not mask[b, 0] and not mask[b, eot[b] :].any()
        torch.testing.assert_close(feats[b][mask[b]], per_token[b, 1 : eot[b]], rtol=0, atol=0)
    cls_feats, cls_mask = cls.clip_features(tokens)
    assert cls_feats.shape == (3, 1, pooled.shape[-1]) and cls_mask.all()
    torch.testing.assert_close(cls_feats[:, 0], cls.clip.clip.encode_text(tokens), rtol=0, atol=1e-6)
    prefix, _ = words.prefix(tokens)  # one linear map of each word's output
    w, b_ = words.projector.weight, words.projector.bias
    torch.testing.assert_close(prefix, feats @ w.T + b_)


def test_loss_equals_per_row_loss_without_padding(tokenizer):
    """The padded, packed batch gives the token-weighted mean of each AD's loss computed alone, unpadded."""
    model = make_model(tokenizer).eval()
    batch = collate(SENTENCES[:3], model, tokenizer)
    loss = model(**batch)["loss"]
    embed = model.llm.get_input_embeddings()
    total, count = 0.0, 0
    for b, text in enumerate(SENTENCES[:3]):
        prefix, mask = model.prefix(model.tokenize_clip([text]))
        ids = [model.bos_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [model.eos_id]
        inputs = torch.cat([prefix[0][mask[0]], embed(torch.tensor(ids))])[None]  # (1, P + S, H)
        logits = model.llm(inputs_embeds=inputs).logits[0]
        P = int(mask.sum())
        # Position P (<BOS>) predicts the first AD token, ..., the last AD token predicts <EOS>.
        target = torch.tensor(ids[1:])
        total += F.cross_entropy(logits[P:-1], target, reduction="sum")
        count += len(target)
    torch.testing.assert_close(loss, total / count, rtol=1e-5, atol=1e-5)


def test_only_the_projector_trains_and_clip_and_lm_stay_bit_identical(tokenizer):
    model = make_model(tokenizer)
    n = check_only_projector_trainable(model)
    assert n == 64 * 64 + 64  # tiny CLIP embed 64 -> tiny GPT-2 width 64, with bias
    clip_before, llm_before = copy.deepcopy(model.clip.state_dict()), copy.deepcopy(model.llm.state_dict())
    proj_before = model.projector.weight.detach().clone()
    model.train()
    assert not model.clip.training and not model.llm.training and model.projector.training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2, weight_decay=0.1)
    batch = collate(SENTENCES, model, tokenizer)
    losses = []
    for _ in range(15):
        loss = model(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Through a random frozen LM the projector alone moves the loss only a little (the job test shows real learning).
    assert losses[-1] < losses[0] - 0.03, losses
    assert not torch.equal(model.projector.weight, proj_before)
    for before, after in ((clip_before, model.clip.state_dict()), (llm_before, model.llm.state_dict())):
        assert before.keys() == after.keys()
        for k in before:
            assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for n_, p in model.named_parameters() if not n_.startswith("projector."))


def test_anything_but_the_projector_trainable_is_refused(tokenizer):
    model = make_model(tokenizer)
    model.llm.transformer.h[0].attn.c_attn.weight.requires_grad_(True)
    with pytest.raises(TrainableParametersError, match=r"llm\.transformer\.h\.0\.attn\.c_attn\.weight"):
        check_only_projector_trainable(model)
    model = make_model(tokenizer)
    model.projector.bias.requires_grad_(False)
    with pytest.raises(TrainableParametersError, match="projector"):
        check_only_projector_trainable(model)


@pytest.mark.parametrize("mode", ["cls", "words"])
def test_saved_projector_reloads_and_generates_the_same_text(tokenizer, tmp_path, mode):
    # The frozen parts as a run would have them: a random tiny CLIP and a tiny GPT-2, saved and loaded back.
    torch.manual_seed(3)
    save_clip(create_clip(TINY_MODEL), tmp_path / "clip", TINY_MODEL)
    save_llm(build_llm("tiny-gpt2", tokenizer), tokenizer, tmp_path / "lm")
    args = from_dict(
        ReconModelArgs,
        {"projector_input": mode, "clip_pretrained": str(tmp_path / "clip"), "llm": str(tmp_path / "lm")},
    )
    model = build_recon_model(args, tokenizer)
    opt = torch.optim.AdamW(model.projector.parameters(), lr=3e-2)
    batch = collate(SENTENCES, model, tokenizer)
    for _ in range(5):
        loss = model(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen = dict(num_beams=2, max_new_tokens=12)
    texts = model.reconstruct(SENTENCES, tokenizer, **gen)
    save_projector(model, tmp_path / "proj", args)

    torch.manual_seed(99)  # a fresh projector initialisation, overwritten by the load
    fresh = build_recon_model(args, tokenizer)
    assert not torch.equal(fresh.projector.weight, model.projector.weight)
    load_projector(tmp_path / "proj", fresh)
    assert torch.equal(fresh.projector.weight, model.projector.weight)
    assert fresh.reconstruct(SENTENCES, tokenizer, **gen) == texts
    rebuilt, tok = load_projector(tmp_path / "proj")  # everything from recon.json
    assert rebuilt.projector_input == mode
    assert rebuilt.reconstruct(SENTENCES, tok, **gen) == texts
    other = "words" if mode == "cls" else "cls"
    with pytest.raises(ValueError, match=f"trained on '{mode}'"):
        load_projector(tmp_path / "proj", make_model(tokenizer, other))


def test_pretrain_lm_learns_the_ads(tokenizer):
    torch.manual_seed(0)
    lm = build_llm("tiny-gpt2", tokenizer)
    losses = pretrain_lm(
        SENTENCES * 4, tokenizer, lm, steps=40, batch_size=4, block_size=16, lr=1e-2, repeat=0.5, progress=False
    )
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    with pytest.raises(ValueError, match="at least 512 tokens"):
        pretrain_lm(SENTENCES[:1], tokenizer, lm, steps=1, block_size=512, progress=False)


def test_one_csv_is_split_by_movie(tmp_path):
    cfg = from_dict(
        ReconJob, {"data": {"train_annotations": str(MADEVAL_CSV), "eval_movies": [EVAL_MOVIE], "max_eval_ads": 100}}
    )
    data = load_data(cfg)
    train_movies = {a.movie for a in data.train}
    assert len(train_movies) == 9 and EVAL_MOVIE not in train_movies
    assert len(data.train) == 6520 - 573  # every AD of the other 9 movies (none is empty)
    assert len(data.eval) == 100 and {a.movie for a in data.eval} == {EVAL_MOVIE}
    # Evenly spaced over the movie: first AD, then every 5.73th.
    assert [a.ad_index for a in data.eval[:4]] == [0, 5, 11, 17] and data.eval[-1].ad_index == 567
    with pytest.raises(ConfigError, match="'Nope' is not in"):
        load_data(from_dict(ReconJob, {"data": {"train_annotations": str(MADEVAL_CSV), "eval_movies": ["Nope"]}}))
    with pytest.raises(ConfigError, match="no training ADs left"):
        load_data(from_dict(ReconJob, {"data": {"train_annotations": str(MADEVAL_CSV)}}))
    with pytest.raises(ConfigError, match="annotation file not found"):
        load_data(from_dict(ReconJob, {"data": {"train_annotations": str(tmp_path / "x.csv")}}))


def test_table_has_the_paper_rows_and_the_run_row():
    row = {
        "projector_input": "words",
        "source": "this run (tiny)",
        "metrics": {
            "BLEU-1": 50.0,
            "BLEU-2": 40.0,
            "BLEU-3": 30.0,
            "BLEU-4": 20.25,
            "METEOR": 25.0,
            "ROUGE-L": 45.0,
            "CIDEr": 120.0,
        },
    }
    lines = table_a1_markdown([row]).splitlines()
    paper = "| paper (CLIP text + GPT-2, MAD-v2-Named → MAD-Eval) |"
    assert f"| [CLS] {paper} 29.3 | 16.4 | 9.2 | 5.1 | 13.2 | 29.4 | 92.2 | 19.4 |" in lines
    assert f"| all word tokens {paper} 80.8 | 74.4 | 68.4 | 63.0 | 47.4 | 82.4 | 612.5 | 66.4 |" in lines
    assert "| all word tokens | this run (tiny) | 50.0 | 40.0 | 30.0 | 20.2 | 25.0 | 45.0 | 120.0 | – |" in lines


def test_config_is_import_light_and_every_key_documented():
    """``distinctad-train recon --help`` and the table command import no torch; every key has help."""
    code = (
        "import sys, distinctad.train.recon.config, distinctad.train.recon.table; "
        "print(sorted(m for m in ('torch', 'deepspeed', 'transformers', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for cls in (ReconJob, ReconDataArgs, ReconModelArgs, ReconEvalArgs):
        docs = field_docs(cls)
        assert all(docs.values()) and set(docs) >= {f for f in cls.__dataclass_fields__}, cls
