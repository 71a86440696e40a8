"""One ZeRO-3 LoRA training step of a LLaMA-3-8B-shaped model (random weights): seconds per step and peak memory.

    python benchmarks/zero3_lora_step.py --layers 8            # GPU: LLaMA-3-8B widths, 8 of its 32 layers, bf16
    python benchmarks/zero3_lora_step.py --dry-run             # CPU: the same code on a 2-layer, 64-wide model

The step is the Stage-II 8B recipe's (launch/configs/stage2_llama3_lora.yaml): the base frozen, LoRA r=16 on
q/k/v/o, activation checkpointing, SDPA attention, ZeRO-3 (launch/ds_zero3.json) through ``build_engine``. Widths
are LLaMA-3-8B's (hidden 4096, MLP 14336, 32 heads, 8 KV heads, vocabulary 128256); ``--layers`` sets how many
of its 32 decoder layers are built, so the step fits a time budget (peak memory grows by about one layer's bf16
weights per layer under ZeRO-3 on one GPU).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from distinctad.common import init_logger
from distinctad.train.core import distributed as D
from distinctad.train.core.engine import build_engine
from distinctad.train.core.params import DeepSpeedArgs, TrainArgs
from distinctad.train.models.llm import apply_lora

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8, help="Decoder layers built (LLaMA-3-8B has 32).")
    p.add_argument("--seq", type=int, default=512, help="Tokens per sequence.")
    p.add_argument("--batch", type=int, default=1, help="Sequences per step.")
    p.add_argument("--steps", type=int, default=3, help="Timed steps (after one untimed).")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (stage2_llama3_lora.yaml: 16).")
    p.add_argument("--no-grad-ckpt", action="store_true", help="Without activation checkpointing.")
    p.add_argument("--dry-run", action="store_true", help="Tiny shapes on CPU (fp32): checks the code path.")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.layers < 1 or args.seq < 2 or args.batch < 1 or args.steps < 1:
        raise SystemExit("error: need --layers >= 1, --seq >= 2, --batch >= 1, --steps >= 1")
    if args.dry_run:
        args.layers, args.seq = min(args.layers, 2), min(args.seq, 32)
    elif not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (use --dry-run for the tiny CPU version)")
    return args


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoModelForCausalLM, LlamaConfig

    args = parse_args(sys.argv[1:] if argv is None else argv)
    D.init_distributed()
    init_logger(logging.WARNING, rank=D.get_rank())
    cuda = torch.cuda.is_available() and not args.dry_run
    vocab = 512 if args.dry_run else 128256
    cfg = LlamaConfig(
        **(TINY if args.dry_run else LLAMA3_8B),
        num_hidden_layers=args.layers,
        vocab_size=vocab,
        max_position_embeddings=max(args.seq, 8192 if cuda else 64),
        rope_theta=500000.0,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    with torch.device(D.device() if cuda else "cpu"):  # random init where the step runs: seconds, not minutes
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    if not args.no_grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = apply_lora(model, r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train = TrainArgs(max_steps=args.steps + 1, micro_batch_size=args.batch, lr=1e-4, warmup_steps=0)
    ds = DeepSpeedArgs(config="launch/ds_zero3.json", zero_stage=3, precision="bf16" if cuda else "fp32")
    engine, _ = build_engine(model, train, ds)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(engine.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step() -> float:
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        return float(loss.detach())

    first = step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        last = step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    out = {
        "params_B": total / 1e9,
        "trainable_M": trainable / 1e6,
        "s_per_step": dt,
        "tokens_per_s": args.batch * args.seq * D.get_world_size() / dt,
        "loss_first": first,
        "loss_last": last,
        "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    if D.is_master():
        where = torch.cuda.get_device_name() if cuda else "cpu (dry run, tiny shapes)"
        print(
            f"ZeRO-3 LoRA step, LLaMA-3-8B-shaped x {args.layers} layers ({total / 1e6:.1f}M params, "
            f"{out['trainable_M']:.1f}M trainable), {'bf16' if cuda else 'fp32'}, {args.batch}x{args.seq} tokens, "
            f"{where} x{D.get_world_size()}"
        )
        peak = "n/a (cpu)" if out["peak_GiB"] is None else f"{out['peak_GiB']:.2f} GiB"
        print(
            f"  {dt:.3f} s/step | {out['tokens_per_s']:.0f} tokens/s | loss {first:.3f} -> {last:.3f} | "
            f"peak memory {peak}"
        )
    D.shutdown()
    return out


if __name__ == "__main__":
    main()
