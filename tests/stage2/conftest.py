"""Shared fixtures of the Stage-II model tests: a BPE tokenizer trained on the fly, a tiny window batch."""

from __future__ import annotations

import pytest
import torch

from distinctad.train.models.llm import train_bpe_tokenizer

NAMES = ["Ana", "Bo", "Cleo", "Dev"]
ACTIONS = [
    "opens the red door",
    "walks into the kitchen",
    "smiles at the stranger",
    "picks up a knife",
    "drives the blue car",
    "reads a letter",
    "runs down the stairs",
    "looks out the window",
]
SENTENCES = [f"{n} {a}." for n in NAMES for a in ACTIONS]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer trained on synthetic ADs (saved to a tmp dir)."""
    return train_bpe_tokenizer(SENTENCES * 4, vocab_size=400, out_dir=tmp_path_factory.mktemp("tok"))


def window_batch(B: int = 2, N: int = 4, T: int = 3, D: int = 16, valid: tuple[int, ...] = (4, 2)) -> dict:
    """A collated window batch (the data pipeline's window-batch contract), with ``valid[b]`` real clips in window b."""
    g = torch.Generator().manual_seed(1)
    clip_mask = torch.zeros(B, N, dtype=torch.bool)
    sentences, context = [], []
    for b in range(B):
        clip_mask[b, : valid[b]] = True
        sentences.append([SENTENCES[(5 * b + 3 * n) % len(SENTENCES)] if n < valid[b] else "" for n in range(N)])
        context.append(SENTENCES[b : b + 2])
    frame_mask = clip_mask[:, :, None].expand(B, N, T).clone()
    frame_mask[0, 0, -1] = False  # one short clip
    feats = torch.randn(B, N, T, D, generator=g) * frame_mask[..., None]
    ad_index = torch.where(clip_mask, torch.arange(N).expand(B, N), torch.full((B, N), -1))
    return dict(
        feats=feats,
        frame_mask=frame_mask,
        clip_mask=clip_mask,
        sentences=sentences,
        context=context,
        movie=["m0", "m1"][:B],
        ad_index=ad_index,
        key=[f"m{b}__000000" for b in range(B)],
    )


@pytest.fixture
def make_batch():
    """The ``window_batch`` factory (a fixture, so test modules need not import conftest)."""
    return window_batch
