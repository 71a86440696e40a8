"""The frozen LM of test_recon_quality.py, pre-trained once and kept in ``tests/recon/assets/pretrained_lm``.

A tiny GPT-2 (``tiny-gpt2``: 2 layers, 64 wide) with a 2000-entry byte-level BPE tokenizer, both made from the ADs
of the 9 MAD-Eval training movies (``data/assets/madeval_anno.csv`` less ``EVAL_MOVIE``), pre-trained for
``PRETRAIN["steps"]`` steps with copy rows by :func:`~distinctad.train.recon.lm.pretrain_lm`: the stand-in for
pre-trained GPT-2. Pre-training takes about five minutes of one core, so the test loads this saved result instead
of redoing it every run, as the recon job loads a saved LM (``model.llm``); the test's projector recipe and
assertions are unchanged. ``recipe.json`` beside the weights records the recipe, the run's losses and those of a
``CHECK_STEPS``-step pre-training with the same seed; :func:`check_asset` re-trains the tokenizer and re-runs that
short pre-training, so a change to the code that makes the LM fails the test until the asset is rebuilt.

Rebuild it (after changing the recipe, the tokenizer trainer, ``tiny-gpt2`` or ``pretrain_lm``)::

    python -m tests.recon.lm_asset
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from distinctad.data import ASSETS
from distinctad.data.annotations import read_annotations
from distinctad.train.models.llm import build_llm, load_tokenizer, save_llm, train_bpe_tokenizer
from distinctad.train.recon.lm import pretrain_lm

ASSET = Path(__file__).resolve().parent / "assets" / "pretrained_lm"
MADEVAL_CSV = ASSETS / "madeval_anno.csv"
EVAL_MOVIE = "3074_THE_ROOMMATE"
SEED = 0
VOCAB = 2000
PRETRAIN = dict(steps=1500, batch_size=32, block_size=64, lr=3e-3, repeat=1.0)
CHECK_STEPS = 20  # the short pre-training that check_asset re-runs (same recipe otherwise, so ~4 s)


def madeval_split() -> tuple[list[str], list]:
    """(training AD sentences of the 9 other movies, the ``EVAL_MOVIE``'s AD records), empty ADs dropped."""
    ads = [a for a in read_annotations(str(MADEVAL_CSV), bad_utf8="repair").ads if a.sentence.strip()]
    return [a.sentence.strip() for a in ads if a.movie != EVAL_MOVIE], [a for a in ads if a.movie == EVAL_MOVIE]


def _pretrain(train: list[str], tokenizer, steps: int) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(SEED)
    lm = build_llm("tiny-gpt2", tokenizer)
    losses = pretrain_lm(train, tokenizer, lm, **{**PRETRAIN, "steps": steps}, seed=SEED, progress=False)
    return lm, losses


def build_asset(out: Path = ASSET) -> dict:
    """Train the tokenizer, pre-train the LM (one thread, the full recipe) and save both with ``recipe.json``."""
    torch.set_num_threads(1)
    train, _ = madeval_split()
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = train_bpe_tokenizer(train, VOCAB, tok_dir)
        lm, losses = _pretrain(train, tokenizer, PRETRAIN["steps"])
        save_llm(lm, tokenizer, out)
        _, check = _pretrain(train, tokenizer, CHECK_STEPS)
    recipe = {
        "seed": SEED,
        "vocab": VOCAB,
        "eval_movie": EVAL_MOVIE,
        "pretrain": PRETRAIN,
        "first_20_mean_loss": sum(losses[:20]) / 20,
        "last_50_mean_loss": sum(losses[-50:]) / 50,
        "check_steps": CHECK_STEPS,
        "check_losses": check,
        "torch": torch.__version__,
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return recipe


def load_asset(tok_dir: Path) -> tuple[object, torch.nn.Module]:
    """:func:`check_asset`, then ``(tokenizer, frozen-to-be LM)`` from the asset."""
    check_asset(tok_dir)
    return load_tokenizer(ASSET), build_llm(ASSET)


def check_asset(tok_dir: Path) -> None:
    """Fail with how to rebuild it unless the asset matches this code: same recipe, same tokenizer vocabulary as
    one trained now, and the losses of a ``CHECK_STEPS``-step pre-training as recorded (to 1e-4, for other CPUs)."""
    rebuild = "rebuild it with `python -m tests.recon.lm_asset`"
    recipe = json.loads((ASSET / "recipe.json").read_text())
    assert (recipe["seed"], recipe["vocab"], recipe["eval_movie"], recipe["pretrain"]) == (
        SEED,
        VOCAB,
        EVAL_MOVIE,
        PRETRAIN,
    ), f"{ASSET} was made with another recipe: {rebuild}"
    train, _ = madeval_split()
    tokenizer = train_bpe_tokenizer(train, VOCAB, tok_dir)
    assert tokenizer.get_vocab() == load_tokenizer(ASSET).get_vocab(), f"the tokenizer differs: {rebuild}"
    _, losses = _pretrain(train, tokenizer, CHECK_STEPS)
    assert losses == pytest.approx(recipe["check_losses"], rel=1e-4), f"pre-training differs now: {rebuild}"


if __name__ == "__main__":
    print(json.dumps(build_asset(), indent=1))
