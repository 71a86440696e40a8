"""LLM building: trained tokenizer and tiny models survive save / load; no downloads; freezing."""

import pytest
import torch
from transformers import AutoTokenizer

from distinctad.train.models.llm import build_llm, load_tokenizer, save_llm, train_bpe_tokenizer


def test_tokenizer_round_trip(tmp_path):
    texts = ["Ana opens the red door.", "Bo walks into the kitchen."] * 10
    tok = train_bpe_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert (again.bos_token, again.eos_token, again.pad_token) == ("<|bos|>", "<|endoftext|>", "<|pad|>")
    assert len({again.bos_token_id, again.eos_token_id, again.pad_token_id}) == 3
    s = "Ana walks into the red kitchen, smiling."
    assert again(s)["input_ids"] == tok(s)["input_ids"]
    assert again.decode(again(s)["input_ids"]) == s  # byte-level: lossless
    assert len(tok(" kitchen")["input_ids"]) == 1  # a frequent word is one leading-space token


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_tiny_model_round_trip(tmp_path, tokenizer, name):
    model = build_llm(name, tokenizer).eval()
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    out = save_llm(model, tokenizer, tmp_path / name)
    loaded = build_llm(out, load_tokenizer(out)).eval()
    ids = tokenizer("Cleo reads a letter.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert load_tokenizer(out)("Cleo")["input_ids"] == tokenizer("Cleo")["input_ids"]


def test_missing_path_is_one_line_error(tmp_path):
    for bad in (str(tmp_path / "no-such-model"), "./nowhere"):
        with pytest.raises(FileNotFoundError) as err:
            build_llm(bad)
        assert "\n" not in str(err.value) and bad in str(err.value)
    with pytest.raises(FileNotFoundError, match="no downloads"):
        build_llm("nobody-has-this/model-in-cache")
    with pytest.raises(ValueError, match="tokenizer"):
        build_llm("tiny-gpt2")


def test_freeze(tokenizer):
    model = build_llm("tiny-llama", tokenizer, freeze=True)
    assert not any(p.requires_grad for p in model.parameters())
