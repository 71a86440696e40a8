"""Stage-I training step through the DeepSpeed engine under ZeRO-1 and ZeRO-2: clips/s and peak memory per GPU.

The step is the job's own (``Stage1Loss`` on ``engine(images, texts)``, ``engine.backward``, ``engine.step``), on a
fixed random batch so the data pipeline is not measured (``benchmarks/loader_throughput.py`` does that).

CPU, tiny model (one process, or two ranks):
    python benchmarks/stage1_zero.py
    deepspeed --num_gpus 2 benchmarks/stage1_zero.py
GPU, ViT-B/32 in bf16 (memory differences between the stages need more than one GPU):
    deepspeed --num_gpus 8 benchmarks/stage1_zero.py --model ViT-B-32 --bf16 --batch-size 128
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage1_throughput import random_batch  # noqa: E402

from distinctad.common import init_logger  # noqa: E402
from distinctad.train.core import distributed as D  # noqa: E402
from distinctad.train.core.engine import build_engine  # noqa: E402
from distinctad.train.core.loop import engine_dtype  # noqa: E402
from distinctad.train.core.params import DeepSpeedArgs, TrainArgs  # noqa: E402
from distinctad.train.models.clip_ad import TINY_MODEL, build_clip_ad  # noqa: E402
from distinctad.train.stage1.config import Stage1LossConfig  # noqa: E402
from distinctad.train.stage1.losses import Stage1Loss  # noqa: E402

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=TINY_MODEL, help="open_clip architecture (distinctad-tiny, ViT-B-32, ViT-B-16).")
    p.add_argument(
        "--pretrained",
        default=None,
        help="Local CLIP weights; random weights when omitted (enough for throughput and memory).",
    )
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2], help="ZeRO stages to compare.")
    p.add_argument("--bf16", action="store_true", help="bf16 engine (GPU only); default fp32.")
    p.add_argument("--batch-size", type=int, default=8, help="Clips per rank per step (micro batch).")
    p.add_argument("--frames", type=int, default=8, help="Frames per clip (T).")
    p.add_argument("--steps", type=int, default=10, help="Timed steps per stage.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    p.add_argument("--lambda-mil", type=float, default=1.0, help="Weight of the frame-word MIL loss (0 = off).")
    p.add_argument("--grad-checkpointing", action="store_true", help="Activation checkpointing in the vision tower.")
    p.add_argument("--out", default="", help="Also write the results as JSON here (rank 0).")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.frames < 1 or args.steps < 1 or args.warmup < 0:
        raise SystemExit("error: need --batch-size >= 1, --frames >= 1, --steps >= 1, --warmup >= 0")
    if any(s not in (0, 1, 2, 3) for s in args.stages):
        raise SystemExit(f"error: --stages must be ZeRO stages 0-3, got {args.stages}")
    if args.bf16 and not torch.cuda.is_available():
        raise SystemExit("error: --bf16 needs a GPU (DeepSpeed bf16 on CPU is not supported here)")
    return args


def bench_stage(args: argparse.Namespace, stage: int) -> dict[str, float]:
    """Build the engine at ``stage``, run warm-up + timed steps; returns this rank's figures."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = build_clip_ad(args.model, args.pretrained, grad_checkpointing=args.grad_checkpointing)
    train = TrainArgs(max_steps=args.steps + args.warmup, micro_batch_size=args.batch_size, lr=1e-5, warmup_steps=0)
    engine, _ = build_engine(model, train, DeepSpeedArgs(zero_stage=stage, precision="bf16" if args.bf16 else "fp32"))
    loss_fn = Stage1Loss(Stage1LossConfig(lambda_mil=args.lambda_mil), rank=D.get_rank(), world_size=D.get_world_size())
    images, texts = random_batch(model, args.batch_size, args.frames, str(engine.device), seed=D.get_rank())
    images = images.to(engine_dtype(engine))
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step() -> float:
        out = loss_fn(**engine(images, texts))
        engine.backward(out["loss"])
        engine.step()
        return out["loss"].item()

    losses = [step() for _ in range(args.warmup)]
    sync()
    D.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    sync()
    dt = D.all_reduce_mean(time.perf_counter() - t0)
    result = {
        "zero": stage,
        "clips_per_s": args.batch_size * D.get_world_size() * args.steps / dt,
        "ms_per_step": 1000 * dt / args.steps,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    return result  # the engine goes out of scope here; main collects it before the next stage


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every stage; rank 0 prints a table and returns [{"zero", "clips_per_s", "ms_per_step", "peak_gib_per_gpu",
    "loss_first", "loss_last"}]."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    D.init_distributed()
    init_logger(logging.WARNING, rank=D.get_rank())
    rows = []
    for stage in args.stages:
        r = bench_stage(args, stage)
        gc.collect()
        peaks = D.all_gather_object(r.pop("peak_gib"))
        rows.append({**r, "peak_gib_per_gpu": peaks})
    if D.is_master():
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(
            f"stage1 step via DeepSpeed  model={args.model} device={device} x{D.get_world_size()} "
            f"{'bf16' if args.bf16 else 'fp32'} B={args.batch_size}/rank T={args.frames}"
        )
        print(f"{'ZeRO':>4}  {'clips/s':>9}  {'ms/step':>8}  {'loss first→last':>17}  peak GiB per GPU")
        for r in rows:
            peaks = ", ".join("n/a (cpu)" if p is None else f"{p:.2f}" for p in r["peak_gib_per_gpu"])
            print(
                f"{r['zero']:>4}  {r['clips_per_s']:>9.1f}  {r['ms_per_step']:>8.1f}  "
                f"{r['loss_first']:>7.3f} → {r['loss_last']:<7.3f}  {peaks}"
            )
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    D.shutdown()
    return rows


if __name__ == "__main__":
    main()
