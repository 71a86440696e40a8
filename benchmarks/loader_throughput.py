"""Throughput of the training reader on SynthMAD window shards vs. reading the same tar bytes raw.

The raw limit walks every shard with ``tarfile`` and reads each member's bytes (no decode, no collation), from
page cache, best of 3: random access (``tarfile.open(path)``, the fastest way to read a tar: the ratio's
baseline) and stream mode (``r|*``, how WebDataset and any reader of tar streams must read it). The reader is
``get_wds_loader(..., is_train=True)`` timed over whole epochs, for each ``--workers`` count, bare (a consumer that
does nothing) and feeding a stand-in training step (``--step-ms``). It also reports the shard builder's MB/s.

Bare, a worker does all the work the main process would do plus handing the batch over, so on 2 cores 1 worker can
at best match 0; what workers are for is overlap with the step, which the ``--step-ms`` rows show.

    python benchmarks/loader_throughput.py --movies 16 --ads-per-movie 1024 --maxcount 64 --epochs 3 --workers 0 1 2

``--mad-size F`` reads a synthetic window set of F times MAD's size instead (F=1: 20,984 windows of N=16 ADs x T=8
frames x D=512 float16, 2.84 GB, as MAD-train's windows; written straight to tars, no SynthMAD, no builder):

    python benchmarks/loader_throughput.py --mad-size 0.25 --maxcount 1024 --epochs 2 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distinctad.common import init_logger
from distinctad.data.annotations import read_annotations
from distinctad.data.shards import BuildOptions, build_shards
from distinctad.data.synthmad import write_synthmad
from distinctad.data.wds_pipeline import get_wds_loader


def raw_tar_read(shards: list[Path], mode: str = "r") -> tuple[int, int, float]:
    """(samples, bytes, seconds) of reading every member of every shard with tarfile (mode "r" or "r|*")."""
    t0 = time.perf_counter()
    keys, nbytes = 0, 0
    for p in shards:
        last = None
        with open(p, "rb") as f, tarfile.open(fileobj=f, mode=mode) as tf:
            for m in tf:
                data = tf.extractfile(m).read()
                nbytes += len(data)
                key = m.name.split(".", 1)[0]
                keys += key != last
                last = key
    return keys, nbytes, time.perf_counter() - t0


MAD_WINDOWS = 20984  # MAD-train windows of N=16 (334,280 ADs over 488 movies, the last window of a movie short)


def write_mad_size_set(out: Path, fraction: float, maxcount: int, feature_dim: int = 512) -> int:
    """A window set of ``fraction`` x MAD's size, written directly (random features, 64 distinct windows cycled).

    Returns the number of windows. Each window holds 16 ADs of one of 488 movies, as the builder writes them.
    """
    from distinctad.common import atomic_write_json
    from distinctad.data.build_worker import sample_tar_bytes, tar_end
    from distinctad.data.kinds import Unit, json_bytes, npy_bytes, sample_key, window_meta

    n = max(1, round(MAD_WINDOWS * fraction))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    feats = [npy_bytes(rng.standard_normal((16, 8, feature_dim)).astype(np.float16)) for _ in range(64)]
    mask = npy_bytes(np.ones((16, 8), bool))
    sizes = {}
    for shard in range(0, n, maxcount):
        name = f"train-{shard // maxcount:06d}.tar"
        with open(out / name, "wb") as f:
            offset = 0
            for w in range(shard, min(n, shard + maxcount)):
                movie = str(3000 + w * 488 // MAD_WINDOWS)
                ads = [(w * 16 + i, 10.0 * i, 10.0 * i + 3.0, f"Someone does thing {w * 16 + i}.") for i in range(16)]
                unit = Unit(sample_key(movie, w * 16), movie, ads, context=["Before."] * 3, window_index=w)
                blob = sample_tar_bytes(
                    {
                        "__key__": unit.key,
                        "json": json_bytes(window_meta(unit, "train")),
                        "feats.npy": feats[w % 64],
                        "mask.npy": mask,
                    }
                )
                f.write(blob)
                offset += len(blob)
            f.write(tar_end(offset))
        sizes[name] = min(n, shard + maxcount) - shard
    atomic_write_json(out / "sizes.json", sizes)
    atomic_write_json(
        out / "manifest.json",
        {"kind": "window", "options": {"window": 16, "num_frames": 8}, "feature_dim": feature_dim},
    )
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=8, help="SynthMAD movies.")
    parser.add_argument("--ads-per-movie", type=int, default=128, help="ADs per movie.")
    parser.add_argument("--feature-dim", type=int, default=512, help="Feature width D.")
    parser.add_argument("--maxcount", type=int, default=16, help="Windows per shard.")
    parser.add_argument("--batch-size", type=int, default=8, help="Reader batch size.")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="Reader DataLoader worker counts to time (one reader each).",
    )
    parser.add_argument("--build-workers", type=int, default=0, help="Builder encoding processes.")
    parser.add_argument("--epochs", type=int, default=2, help="Reader epochs timed (the first includes startup).")
    parser.add_argument("--dir", default=None, help="Work folder (default: a temporary one).")
    parser.add_argument(
        "--shuffle-buffer",
        type=int,
        default=64,
        help="Sample shuffle buffer; at the end of an epoch the reader has read this far ahead, "
        "so keep it small against the epoch (the default 1000 suits 20k-window epochs).",
    )
    parser.add_argument(
        "--step-ms",
        type=float,
        nargs="+",
        default=[0.0, 5.0],
        help="Time the reader feeding a consumer that reads each batch and then computes this long (ms, torch "
        "matmuls that release the GIL, as a training step does); 0 = the bare reader. Default: 0 and 5 (a fast GPU "
        "step; a CPU step of the Stage-II model takes far longer).",
    )
    parser.add_argument(
        "--mad-size",
        type=float,
        default=None,
        metavar="F",
        help="Read a synthetic window set of F x MAD's size (F=1: 20,984 windows, 2.84 GB) instead of SynthMAD.",
    )
    args = parser.parse_args(argv)
    init_logger("WARNING")
    os.environ["DISTINCTAD_SAMPLE_SHUFFLE_SIZE"] = str(args.shuffle_buffer)
    os.environ["DISTINCTAD_SAMPLE_SHUFFLE_INITIAL"] = str(max(1, args.shuffle_buffer // 4))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.dir or tmp)
        if args.mad_size is not None:
            t0 = time.perf_counter()
            n = write_mad_size_set(work / "win", args.mad_size, args.maxcount, args.feature_dim)
            print(f"MAD-size set: {n} windows written in {time.perf_counter() - t0:.1f} s")
        else:
            build_small_set(work, args)
        read_benchmark(work, args)


def build_small_set(work: Path, args) -> None:
    """SynthMAD -> the shard builder (timed: the builder's MB/s)."""
    write_synthmad(
        work / "synth",
        movies=args.movies,
        ads_per_movie=args.ads_per_movie,
        seed=0,
        features=True,
        feature_dim=args.feature_dim,
    )
    anns = read_annotations(work / "synth" / "annotations.json")
    t0 = time.perf_counter()
    res = build_shards(
        work / "win",
        anns.by_movie(),
        BuildOptions(kind="window", maxcount=args.maxcount),
        features_path=work / "synth" / "features.h5",
        workers=args.build_workers,
        progress=False,
    )
    build_s = time.perf_counter() - t0
    shards = sorted((work / "win").glob("*.tar"))
    mb = res.manifest["totals"]["bytes"] / 1e6
    print(
        f"builder: {res.manifest['totals']['samples']} windows, {len(shards)} shards, {mb:.1f} MB in "
        f"{build_s:.2f} s = {mb / build_s:.1f} MB/s ({args.build_workers} workers)"
    )


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def read_benchmark(work: Path, args) -> None:
    """Raw tar reads (baselines) and the reader with each worker count, on the shards in ``work/win``."""
    shards = sorted((work / "win").glob("*.tar"))
    raw_n, raw_bytes, raw_s = min((raw_tar_read(shards) for _ in range(3)), key=lambda r: r[2])
    raw_rate = raw_n / raw_s
    print(
        f"raw tar read (random access): {raw_n} samples, {raw_bytes / 1e6:.1f} MB in {raw_s:.3f} s = "
        f"{raw_rate:.0f} samples/s  [{uptime()}]"
    )
    stream_s = min(raw_tar_read(shards, "r|*")[2] for _ in range(3))
    stream_rate = raw_n / stream_s
    print(f"raw tar read (stream mode):   {raw_n} samples in {stream_s:.3f} s = {stream_rate:.0f} samples/s")

    for step_ms in args.step_ms:
        _time_readers(work, args, step_ms, stream_rate, raw_rate)


def _step(batch: dict, step_ms: float, a: torch.Tensor) -> None:
    """A stand-in training step: read the features, then matmuls until ``step_ms`` have passed."""
    if step_ms <= 0:
        return
    end = time.perf_counter() + step_ms / 1000
    batch["feats"].float().sum()
    while time.perf_counter() < end:
        a @ a


def _time_readers(work: Path, args, step_ms: float, stream_rate: float, raw_rate: float) -> None:
    a = torch.randn(64, 64)
    label = "bare reader" if step_ms <= 0 else f"reader + {step_ms:g} ms step"
    best, by_workers = 0.0, {}
    for workers in args.workers:
        data = get_wds_loader(str(work / "win"), "window", args.batch_size, is_train=True, num_workers=workers, seed=0)
        rates = []
        for epoch in range(args.epochs):
            data.set_epoch(epoch)
            t0 = time.perf_counter()
            n = 0
            for b in data.dataloader:
                n += len(b["key"])
                _step(b, step_ms, a)
            rates.append(n / (time.perf_counter() - t0))
        del data  # stops its persistent workers before the next reader starts
        reader_rate = rates[-1]
        by_workers[workers] = reader_rate
        best = max(best, reader_rate)
        print(
            f"{label}, {workers} workers: {args.epochs} epochs of {n} windows (batch {args.batch_size}); "
            "samples/s per epoch: "
            + ", ".join(f"{r:.0f}" for r in rates)
            + f"; vs stream mode {reader_rate / stream_rate:.2f}, vs random access {reader_rate / raw_rate:.2f}  "
            f"[{uptime()}]"
        )
    first = by_workers[args.workers[0]]
    target = " (target >= 0.8)" if step_ms <= 0 else " (bound by the step)"
    print(
        f"{label}: best / raw stream-mode read = {best / stream_rate:.2f}{target}; "
        f"vs raw random-access read {best / raw_rate:.2f}; by workers vs {args.workers[0]}: "
        + ", ".join(f"{w}: {r / first:.2f}x" for w, r in by_workers.items())
        + ("" if step_ms <= 0 else " (target: none below 1.00x)")
    )


if __name__ == "__main__":
    main(sys.argv[1:])
