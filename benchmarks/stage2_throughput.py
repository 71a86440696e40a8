"""Windows/s and tokens/s of a Stage-II training step (forward + backward + AdamW), plus MFU on a GPU.

    python benchmarks/stage2_throughput.py                                   # tiny config, CPU
    python benchmarks/stage2_throughput.py --rows all                        # every Table D.2 row, ratio to A0
    python benchmarks/stage2_throughput.py --llm gpt2-124m --device cuda --bf16 --windows 8 --d-model 768
        (GPT-2 124M architecture with random weights, or --llm /path/to/gpt2 for the real one)

A random window batch (B windows x N clips x T frames x D) and ADs drawn from a SynthMAD-like grammar, the
full C3 model (α-path, β-path, L_dist); ``--rows`` measures Table D.2 rows instead, interleaved round by round (so
a change in the machine's load hits every row alike), and prints each row's median step time over A0's with the
``uptime`` load. The defaults are launch/configs/stage2.yaml's model and batch (tiny GPT-2, d=64, L=4, K=8,
2 windows of 16 clips). MFU counts 6·params·tokens for the LLM plus the visual modules (the
tokens are the prompt, context and AD tokens the LLM processes), against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="tiny-gpt2", help="tiny-gpt2, tiny-llama, gpt2-124m (random) or a local HF dir.")
    p.add_argument("--windows", type=int, default=2, help="B: windows per step.")
    p.add_argument("--clips", type=int, default=16, help="N: clips per window.")
    p.add_argument("--frames", type=int, default=8, help="T: frames per clip.")
    p.add_argument("--feature-dim", type=int, default=512, help="D: frame feature width.")
    p.add_argument("--d-model", type=int, default=64, help="d: Perceiver / EMA width.")
    p.add_argument("--latents", type=int, default=4, help="L: Perceiver latents per clip (stage2.yaml: 4).")
    p.add_argument("--bases", type=int, default=8, help="K: Contextual-EMA bases (stage2.yaml: 8).")
    p.add_argument("--steps", type=int, default=20, help="Timed steps.")
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
    p.add_argument("--device", default="cpu", help="cpu or cuda.")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU).")
    p.add_argument("--compile", action="store_true", help="torch.compile the captioner (as train.compile does).")
    p.add_argument("--profile", action="store_true", help="after timing, profile 3 steps: the top ops by device time.")
    p.add_argument(
        "--rows",
        default="",
        help="Comma-separated Table D.2 rows (A0,B1,...,C3) or 'all': step time of each and its ratio to A0.",
    )
    p.add_argument("--rounds", type=int, default=5, help="--rows: interleaved rounds of --steps steps per row.")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: distinctad's set_threads).")
    return p.parse_args(argv)


def make_batch(B: int, N: int, T: int, D: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    names, verbs = ["Ana", "Ben", "Cleo", "Dev"], ["opens", "carries", "drops", "paints"]
    objs, places = ["red door", "blue cup", "green box", "old letter"], ["kitchen", "garden", "street"]
    sent = [
        [
            f"{rng.choice(names)} {rng.choice(verbs)} the {rng.choice(objs)} in the {rng.choice(places)}."
            for _ in range(N)
        ]
        for _ in range(B)
    ]
    g = torch.Generator().manual_seed(seed)
    return dict(
        feats=torch.randn(B, N, T, D, generator=g),
        frame_mask=torch.ones(B, N, T, dtype=torch.bool),
        clip_mask=torch.ones(B, N, dtype=torch.bool),
        sentences=sent,
        context=[sent[b][:3] for b in range(B)],
        movie=[f"m{b}" for b in range(B)],
        ad_index=torch.arange(N).repeat(B, 1),
        key=[""] * B,
        valid=torch.ones(B, dtype=torch.bool),
    )


def compare_rows(args: argparse.Namespace) -> dict[str, float]:
    """Median ms/step of each requested Table D.2 row, measured in interleaved rounds; returns {row: ms}."""
    import statistics
    import subprocess

    from distinctad.train.models.captioner import CaptionerConfig, DistinctADCaptioner, prepare_batch
    from distinctad.train.models.captioner_config import PRESETS
    from distinctad.train.models.llm import train_bpe_tokenizer

    rows = list(PRESETS) if args.rows == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in PRESETS]
    if unknown:
        raise SystemExit(f"error: unknown Table D.2 row(s) {unknown} (choose from {', '.join(PRESETS)} or all)")
    if "A0" not in rows:
        rows.insert(0, "A0")
    batch = make_batch(args.windows, args.clips, args.frames, args.feature_dim)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_bpe_tokenizer([s for w in batch["sentences"] for s in w] * 20, 500, tmp)
    steps = {}
    for row in rows:
        torch.manual_seed(0)
        cfg = CaptionerConfig(
            llm=args.llm,
            feature_dim=args.feature_dim,
            d_model=args.d_model,
            num_latents=args.latents,
            perceiver_heads=4,
            num_bases=args.bases,
            **PRESETS[row],
        )
        model = DistinctADCaptioner(cfg, tok).to(args.device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        prepared = {k: v.to(args.device) for k, v in prepare_batch(batch, tok, cfg).items()}

        def step(model=model, opt=opt, prepared=prepared) -> None:
            loss = model(**prepared)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(args.warmup):
            step()
        steps[row] = step
    times: dict[str, list[float]] = {r: [] for r in rows}
    cpu: dict[str, list[float]] = {r: [] for r in rows}
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for _ in range(args.rounds):
        for row in rows:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                steps[row]()
            times[row].append((time.perf_counter() - t0) / args.steps * 1e3)
            cpu[row].append((time.process_time() - c0) / args.steps * 1e3)
    ms = {r: statistics.median(v) for r, v in times.items()}
    cpu_ms = {r: statistics.median(v) for r, v in cpu.items()}
    print(
        f"Stage-II step per Table D.2 row, {args.llm}, B={args.windows} N={args.clips} T={args.frames} "
        f"D={args.feature_dim} d={args.d_model} L={args.latents} K={args.bases}, {args.device}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds x {args.steps} steps"
    )
    print(f"  load before: {load}")
    print("  (wall: what a run takes; CPU: this process's CPU time, less sensitive to other work on the machine)")
    for row in rows:
        print(
            f"  {row}: wall {ms[row]:7.1f} ms/step {ms[row] / ms['A0']:5.2f}x A0 | CPU {cpu_ms[row]:7.1f} ms/step "
            f"{cpu_ms[row] / cpu_ms['A0']:5.2f}x A0 | {PRESETS[row]}"
        )
    print(f"  load after:  {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return ms


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from distinctad.common import set_threads

    set_threads(args.threads or None)  # as every job does (or the number asked for)
    if args.rows:
        return compare_rows(args)
    from distinctad.train.models.captioner import CaptionerConfig, DistinctADCaptioner, prepare_batch
    from distinctad.train.models.llm import random_gpt2_124m, train_bpe_tokenizer

    torch.manual_seed(0)
    batch = make_batch(args.windows, args.clips, args.frames, args.feature_dim)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_bpe_tokenizer([s for w in batch["sentences"] for s in w] * 20, 500, tmp)
    llm_name = "tiny-gpt2" if args.llm == "gpt2-124m" else args.llm
    cfg = CaptionerConfig(
        llm=llm_name,
        feature_dim=args.feature_dim,
        d_model=args.d_model,
        num_latents=args.latents,
        perceiver_heads=4,
        num_bases=args.bases,
        alpha_path=True,
        beta_path=True,
        lambda_dist=0.1,
    )
    llm = None
    if args.llm == "gpt2-124m":
        llm = random_gpt2_124m(tok)
    model = DistinctADCaptioner(cfg, tok, llm=llm).to(args.device)
    cuda = args.device.startswith("cuda")
    # fused AdamW on CUDA, as the jobs' train.adamw_kernel=auto
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=cuda or None)
    forward = torch.compile(model) if args.compile else model
    prepared = {k: v.to(args.device) for k, v in prepare_batch(batch, tok, cfg).items()}
    n_params = sum(p.numel() for p in model.parameters())
    seq_tokens = int(prepared["text_mask"].sum()) + prepared["clip_mask"].sum().item() * 2 * cfg.num_latents
    ad_tokens = int((prepared["text_labels"] != -100).sum())
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = forward(**prepared)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        last = step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    out = {
        "windows_per_s": args.windows / dt,
        "clips_per_s": args.windows * args.clips / dt,
        "tokens_per_s": seq_tokens / dt,
        "ad_tokens_per_s": ad_tokens / dt,
        "ms_per_step": dt * 1e3,
        "params_M": n_params / 1e6,
        "loss": last,
    }
    print(
        f"Stage-II step, {args.llm}, B={args.windows} N={args.clips} T={args.frames} D={args.feature_dim} "
        f"d={args.d_model}, {n_params / 1e6:.1f}M params, {args.device}{' bf16' if args.bf16 else ''}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"  {out['windows_per_s']:.2f} windows/s | {out['tokens_per_s']:.0f} tokens/s (LLM sequence) | "
        f"{out['ad_tokens_per_s']:.0f} AD tokens/s | {out['ms_per_step']:.1f} ms/step"
    )
    if cuda:
        out["peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        print(f"  peak memory {out['peak_mem_GiB']:.2f} GiB on {name}")
        if peak:
            out["mfu"] = 6 * n_params * out["tokens_per_s"] / (peak * 1e12)
            print(f"  MFU {100 * out['mfu']:.1f}% (6·params·tokens/s over {peak:.0f} TFLOP/s dense bf16)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(3):
                step()
            if cuda:
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    return out


if __name__ == "__main__":
    main()
