"""Stage-I frame decoding: the loader workers' PIL path against ``data.jpeg_decode=device`` (nvJPEG on a GPU).

Both paths take MAD-shard-sized JPEGs (short side 224, 16:9, quality 90: the shard builder's defaults) to CLIP's
input (224 x 224, normalised), with open_clip's eval transform:

- **workers**: PIL decode + open_clip's transform per frame, as one loader worker does it, on one CPU thread;
- **device**: ``distinctad.data.jpeg.decode_frames`` on a batch of B x T frames: one batched ``decode_jpeg`` on
  the GPU (nvJPEG) and the transform on tensors; on a CPU (no GPU, or ``--device cpu``) the same call with
  torchvision's CPU decoder, one thread.

It prints frames/s of each, their ratio, and how many CPU cores would have to decode for one GPU at a given
Stage-I speed (``--clips-per-s``, e.g. the clips/s of ``benchmarks/stage1_zero.py`` on that GPU).

    python benchmarks/jpeg_decode.py                     # GPU if there is one
    python benchmarks/jpeg_decode.py --dry-run           # tiny batch, CPU (CI, via gpu_check.sh --dry-run)
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import time

import numpy as np
import open_clip
import torch
from PIL import Image

from distinctad.common import set_threads
from distinctad.data.jpeg import TensorTransform, decode_frames, nvjpeg_works


def frames(n: int, width: int, height: int, quality: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEGs with film-like content (smooth gradients, edges, a little grain), not white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(n):
        a, b, c = rng.uniform(0.01, 0.05, 3)
        img = np.stack(
            [128 + 100 * np.sin(a * xx + i), 128 + 100 * np.cos(b * yy - i), 128 + 60 * np.sin(c * (xx + yy))], -1
        )
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        img[y0 : y0 + height // 3, x0 : x0 + width // 4] = rng.uniform(0, 255, 3)  # an object with hard edges
        img += rng.normal(0, 4, img.shape)
        buf = io.BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128, help="clips per batch (B; default 128, stage1_vitb32.yaml)")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip (T; default 8)")
    ap.add_argument("--short-side", type=int, default=224, help="JPEG short side in px (default 224, the builder's)")
    ap.add_argument("--size", type=int, default=224, help="CLIP input size (default 224, ViT-B/32)")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats; the best is reported")
    ap.add_argument("--clips-per-s", type=float, default=0, help="Stage-I clips/s of one GPU, for the cores estimate")
    ap.add_argument("--dry-run", action="store_true", help="tiny batch on the CPU (checks the script)")
    args = ap.parse_args()
    if args.dry_run:
        args.batch, args.frames, args.short_side, args.size, args.device, args.repeats = 2, 2, 40, 32, "cpu", 1
    set_threads(1)
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    if device.type == "cuda":
        why = nvjpeg_works(device)
        print(f"GPU: {torch.cuda.get_device_name(device)}; nvJPEG: {why or 'works'}")
    n = args.batch * args.frames
    width = args.short_side * 16 // 9
    pool = frames(min(n, 64), width, args.short_side, 90)
    blobs = [pool[i % len(pool)] for i in range(n)]
    print(
        f"{n} frames per batch ({args.batch} clips x {args.frames}), JPEG {width}x{args.short_side} q90, "
        f"mean {np.mean([len(b) for b in blobs]) / 1024:.1f} KiB -> {args.size}x{args.size}"
    )
    ev = open_clip.image_transform(args.size, is_train=False, mean=None, std=None)

    def workers_path():
        return torch.stack([ev(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])

    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    data = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
    tf = TensorTransform.from_compose(ev)
    # the training transform: RandomResizedCrop drawn per frame, so the resize runs image by image
    tf_train = TensorTransform.from_compose(
        open_clip.image_transform(args.size, is_train=True, mean=None, std=None, aug_cfg={"scale": (0.9, 1.0)})
    )

    def device_path(transform=tf):
        out = decode_frames(data, offsets, args.frames, transform, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    ref, got = workers_path(), device_path().view(n, 3, args.size, args.size).cpu()
    diff = (ref - got).abs()
    device_path()  # warm-up (nvJPEG handles, cuDNN-free resize kernels)
    t_cpu = best_of(workers_path, max(1, args.repeats // 2))
    t_dev = best_of(device_path, args.repeats)
    device_path(tf_train)
    t_train = best_of(lambda: device_path(tf_train), args.repeats)
    cpu_fps, dev_fps = n / t_cpu, n / t_dev
    print(
        f"frames vs the PIL path: mean |diff| {diff.mean():.4f}, max {diff.max():.4f} "
        "(normalised units; 1 level ~0.015)"
    )
    print(f"workers path (PIL + open_clip transform), 1 CPU thread: {cpu_fps:,.0f} frames/s")
    print(
        f"device path ({device.type}{', nvJPEG' if device.type == 'cuda' else ', torchvision CPU decode'}): "
        f"{dev_fps:,.0f} frames/s eval transform, {n / t_train:,.0f} frames/s train transform (a crop per frame)"
    )
    print(f"ratio device/workers-per-core: {dev_fps / cpu_fps:.1f}x")
    if args.clips_per_s:
        need = args.clips_per_s * args.frames / cpu_fps
        print(
            f"at {args.clips_per_s:,.0f} clips/s x {args.frames} frames per GPU, the workers path needs {need:.1f} CPU "
            f"cores per GPU to decode (this machine has {os.cpu_count()})"
            + (
                f"; the device path takes {1e3 * t_dev / args.batch:.2f} / {1e3 * t_train / args.batch:.2f} ms of GPU "
                f"time per clip (eval / train transform), against {1e3 / args.clips_per_s:.2f} ms per clip of step"
                if device.type == "cuda"
                else ""
            )
        )
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
