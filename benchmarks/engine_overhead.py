"""Steps/s of the DeepSpeed engine vs a plain PyTorch loop, same model, batch and optimizer, in one run.

    python benchmarks/engine_overhead.py [--steps 300] [--hidden 512] [--batch 64]

Target: engine >= 0.8x plain on CPU. Prints one row per ZeRO stage and its ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import time

import torch

from distinctad.common import init_logger
from distinctad.train.core import distributed as D
from distinctad.train.core.engine import build_engine, param_groups
from distinctad.train.core.params import DeepSpeedArgs, TrainArgs
from distinctad.train.trivial.task import MLP


def plain(model, x, y, steps: int, train: TrainArgs) -> float:
    opt = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr)
    for i in range(steps + 10):  # 10 warm-up steps
        if i == 10:
            t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        opt.step()
    return steps / (time.perf_counter() - t0)


def engine_loop(model, x, y, steps: int, train: TrainArgs, stage: int) -> float:
    engine, _ = build_engine(model, train, DeepSpeedArgs(zero_stage=stage))
    for i in range(steps + 10):
        if i == 10:
            t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="Timed optimizer steps per variant.")
    p.add_argument("--hidden", type=int, default=512, help="MLP width (the model is in_dim->hidden->hidden->1).")
    p.add_argument("--in-dim", type=int, default=256, help="Input features.")
    p.add_argument("--batch", type=int, default=64, help="Batch size.")
    p.add_argument("--stages", default="0,1,2", help="ZeRO stages to time, comma-separated.")
    args = p.parse_args(argv)
    init_logger(level="WARNING")
    D.init_distributed()
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, args.in_dim), torch.randn(args.batch)
    train = TrainArgs(max_steps=args.steps + 10, micro_batch_size=args.batch, warmup_steps=0)
    base = MLP(args.in_dim, args.hidden)
    nparams = sum(p.numel() for p in base.parameters())
    rows = [("plain PyTorch", plain(_copy(base), x, y, args.steps, train))]
    for stage in (int(s) for s in args.stages.split(",")):
        rows.append((f"DeepSpeed ZeRO-{stage}", engine_loop(_copy(base), x, y, args.steps, train, stage)))
    print(
        f"\nengine overhead: MLP {nparams / 1e6:.2f}M params, batch {args.batch}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads, device cpu"
    )
    print(f"{'loop':<18} {'steps/s':>9} {'vs plain':>9}")
    for name, sps in rows:
        print(f"{name:<18} {sps:>9.1f} {sps / rows[0][1]:>8.2f}x")
    D.shutdown()


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    main()
