"""Throughput of one Stage-I training step (forward + backward + Adam), in clips per second.

CPU, tiny model (default):
    python benchmarks/stage1_throughput.py --batch-size 8 --frames 8
GPU, ViT-B/32 in bf16 autocast:
    python benchmarks/stage1_throughput.py --model ViT-B-32 --device cuda --bf16 --batch-size 64 --frames 8

``make_step`` is importable so the DeepSpeed ZeRO-1/2 comparison can reuse the same step shape.
"""

from __future__ import annotations

import argparse
import logging
import random
import time

import torch

from distinctad.common import init_logger
from distinctad.train.models.clip_ad import CLIPAD, TINY_MODEL, build_clip_ad
from distinctad.train.stage1.config import Stage1LossConfig
from distinctad.train.stage1.losses import Stage1Loss, make_step

logger = logging.getLogger(__name__)

_NAMES = ["Ana", "Bob", "The old man", "A girl", "Tom", "She", "He"]
_ACTIONS = [
    "opens the red door",
    "looks out of the window",
    "drives away in a blue car",
    "smiles at Bob",
    "picks up a letter",
    "runs down the dark street",
    "sits on the bed",
]


def random_batch(model: CLIPAD, batch_size: int, frames: int, device: str, seed: int = 0):
    """Random frames at the model's input size and grammar-made ADs."""
    size = model.clip.visual.image_size
    size = size if isinstance(size, int) else size[0]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, frames, 3, size, size, generator=g).to(device)
    rng = random.Random(seed)
    texts = [f"{rng.choice(_NAMES)} {rng.choice(_ACTIONS)}." for _ in range(batch_size)]
    return images, texts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", type=str, default=TINY_MODEL, help="open_clip architecture (distinctad-tiny, ViT-B-32, ViT-B-16)."
    )
    p.add_argument(
        "--pretrained",
        type=str,
        default=None,
        help="Local CLIP weights (file, folder or cached tag); "
        "random weights when omitted (enough for a throughput figure).",
    )
    p.add_argument("--device", type=str, default="cpu", help="Torch device, e.g. cpu or cuda.")
    p.add_argument("--bf16", action="store_true", help="Run the forward pass under bfloat16 autocast.")
    p.add_argument("--batch-size", type=int, default=8, help="Clips per step (B).")
    p.add_argument("--frames", type=int, default=8, help="Frames per clip (T).")
    p.add_argument("--steps", type=int, default=10, help="Timed steps.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps first (allocator, kernels).")
    p.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights and the random batch.")
    p.add_argument("--lambda-mil", type=float, default=1.0, help="Weight of the frame-word MIL loss (0 = off).")
    p.add_argument("--trainable-blocks", type=int, default=None, help="Train only the last k vision blocks.")
    p.add_argument("--grad-checkpointing", action="store_true", help="Activation checkpointing in the vision tower.")
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.frames < 1 or args.steps < 1 or args.warmup < 0:
        raise SystemExit("error: need --batch-size >= 2 (contrastive), --frames >= 1, --steps >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for but no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; prints and returns {"clips_per_s", "ms_per_step", "loss_first", "loss_last"}."""
    args = parse_args(argv)
    init_logger()
    torch.manual_seed(args.seed)  # random weights and dropout: the same run twice gives the same losses
    try:
        model = build_clip_ad(
            args.model,
            args.pretrained,
            trainable_vision_blocks=args.trainable_blocks,
            grad_checkpointing=args.grad_checkpointing,
            device=args.device,
        )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    model.train()
    loss_fn = Stage1Loss(Stage1LossConfig(lambda_mil=args.lambda_mil))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    step = make_step(model, loss_fn, optimizer, torch.bfloat16 if args.bf16 else None)
    images, texts = random_batch(model, args.batch_size, args.frames, args.device, args.seed)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    losses = [float(step(images, texts)["loss"]) for _ in range(args.warmup)]
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = step(images, texts)
    last = float(out["loss"])  # .item() synchronises before the clock stops
    sync()
    dt = time.perf_counter() - t0
    result = {
        "clips_per_s": args.batch_size * args.steps / dt,
        "ms_per_step": 1000 * dt / args.steps,
        "loss_first": losses[0] if losses else last,
        "loss_last": last,
    }
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"stage1 step  model={args.model} device={args.device} bf16={args.bf16} B={args.batch_size} "
        f"T={args.frames} trainable={n_train / 1e6:.2f}M: {result['clips_per_s']:.1f} clips/s "
        f"({result['ms_per_step']:.1f} ms/step); loss first {result['loss_first']:.4f} "
        f"last {result['loss_last']:.4f}"
    )
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return result


if __name__ == "__main__":
    main()
