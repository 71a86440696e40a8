"""A short Stage-I fit on a tiny synthetic set: the loss falls and video->text retrieval beats chance."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from distinctad.train.models.clip_ad import TINY_MODEL, build_clip_ad, pool_video
from distinctad.train.stage1.config import Stage1LossConfig
from distinctad.train.stage1.losses import Stage1Loss
from distinctad.train.stage1.retrieval import retrieval_metrics

CAPTIONS = ["Ana opens the red door.", "Bob drives a blue car.", "The old man reads a letter.",
            "A girl runs down the street.", "Tom sits on the bed.", "She lights a candle."]
ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("stage1_throughput", ROOT / "benchmarks" / "stage1_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clips(protos: torch.Tensor, g: torch.Generator, frames: int = 2) -> torch.Tensor:
    """One clip per class: its prototype image plus fresh noise in every frame."""
    K = len(protos)
    return protos[:, None] + 0.7 * torch.randn(K, frames, *protos.shape[1:], generator=g)  # (K, T, 3, H, W)


def test_short_fit_learns_retrieval():
    bench = _load_benchmark()
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(len(CAPTIONS), 3, 32, 32, generator=g)  # a "scene" per caption
    model = build_clip_ad(TINY_MODEL).train()
    loss_fn = Stage1Loss(Stage1LossConfig(lambda_mil=0.5))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    step = bench.make_step(model, loss_fn, opt)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        video = pool_video(model.encode_video(_clips(protos, torch.Generator().manual_seed(123))))
        r1 = retrieval_metrics(video, model.encode_text(CAPTIONS))["v2t_R@1"]
        model.train()
        return r1

    r1_before = evaluate()
    losses = [step(_clips(protos, g), CAPTIONS)["loss"].item() for _ in range(30)]
    r1_after = evaluate()
    chance = 100.0 / len(CAPTIONS)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert r1_after >= 3 * chance and r1_after > r1_before, (r1_before, r1_after)


def test_benchmark_main_reports_throughput(capsys):
    bench = _load_benchmark()
    result = bench.main(["--batch-size", "4", "--frames", "2", "--steps", "2", "--warmup", "1", "--lr", "1e-2"])
    printed = capsys.readouterr().out
    assert "clips/s" in printed and f"{result['clips_per_s']:.1f} clips/s" in printed
    assert result["clips_per_s"] > 0 and result["ms_per_step"] > 0
    # The same fixed batch 3 times with a large lr: the loss goes down.
    assert result["loss_last"] < result["loss_first"]
    with pytest.raises(SystemExit, match="error: need --batch-size"):
        bench.main(["--batch-size", "1"])
