"""``distinctad-extract``: frame features of every AD clip, from a vanilla or adapted CLIP, as Stage-II window shards.

Reads ``frames`` shards (Stage-I format), runs the CLIP vision tower over each clip's T frames (open_clip's eval
transform, no augmentation) and writes ``window`` shards (DESIGN §3.3): N consecutive ADs of a movie per sample
(stride N, last window zero-padded and masked), the K previous ADs as text context, ``feats.npy`` float16 (N, T, D)
holding the *normalised* frame embeddings, ``mask.npy`` (N, T). The windows, their keys and their json are planned
by the shard builder's own code (:mod:`distinctad.data.shards`), and ``manifest.json`` / ``sizes.json`` have the
builder's format, so :func:`~distinctad.data.wds_pipeline.get_wds_loader` reads the output like any window shards.

Examples::

    # adapted CLIP-AD of a Stage-I run (its <run dir>/clip_ad), one process
    distinctad-extract --frames work/synthmad/shards/frames-eval --pretrained runs/stage1-tiny --out work/feats/eval
    # vanilla ViT-B/32 from a local checkpoint, 8 GPUs (torchrun --nproc_per_node 8 -m ... works the same)
    deepspeed --num_gpus 8 --module distinctad.train.tools.extract --frames shards/frames-train --model ViT-B-32 \\
        --pretrained /models/vit_b32/open_clip_pytorch_model.bin --out feats/train

Distributed: under a launcher (deepspeed, torchrun) each rank takes whole movies (balanced by AD count), reads only
the frames shards holding them and writes their window shards; rank 0 then merges the per-shard records into the
manifest. Every output shard belongs to one movie. Resumable: a shard whose file matches its record (size and
sha256) and was made by the same model and options is skipped, so a killed job re-run does only what is missing.

Planning (frames scan, output shards, movie → rank) is in :mod:`~distinctad.train.tools.extract_plan`; the rest stays
one module, over ~450 lines, because the resume contract (signature of weights and options, per-shard records,
rank 0's merge) runs through loading the model, writing shards and merging the manifest alike.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from distinctad.common import atomic_path, atomic_write_json, init_logger, set_threads
from distinctad.data.paths import PathProblem, check_dir, check_output_dir, check_shards, check_weights
from distinctad.data.shardlist import expand_shards
from distinctad.data.shards import (
    BUILDER_VERSION,
    BuildOptions,
    Unit,
    file_sha256,
    npy_bytes,
    source_record,
    window_meta,
)
from distinctad.data.wds_pipeline import get_wds_loader
from distinctad.train.core import distributed as D
from distinctad.train.models.clip_ad import DEFAULT_MODEL, WeightsNotFoundError, clip_transforms, create_clip
from distinctad.train.tools.extract_plan import ShardPlan, assign_movies, plan_shards, scan_frames

logger = logging.getLogger("distinctad.train.tools.extract")  # the same name when run as __main__

PARTS_DIR = ".parts"
"""Per-shard records written by the rank that made the shard; rank 0 merges them into manifest.json."""


# ---------------------------------------------------------------------------------------------------------------
# Model


@dataclass
class VisionSource:
    """Where the vision tower came from (recorded in the manifest; part of the resume signature)."""

    model: str
    pretrained: str
    adapted: bool
    weights_sha256: str


def resolve_pretrained_arg(pretrained: str, model: str) -> tuple[str, bool, str]:
    """A Stage-I run directory means its exported ``clip_ad/``.

    Returns:
        (what to load, whether it is a Stage-I adapted model, architecture name: the export's own when recorded).
    """
    if not pretrained:
        return "", False, model
    p = Path(pretrained)
    if (p / "clip_ad" / "open_clip_config.json").is_file():
        p = p / "clip_ad"
    export = p / "stage1_export.json"
    if export.is_file():
        return str(p), True, json.loads(export.read_text()).get("model", model)
    return str(p), False, model


def load_vision(
    model: str, pretrained: str, *, cache_dir: str | None = None, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, object, VisionSource]:
    """The open_clip model (eval mode) and its eval transform; random weights (seeded) when ``pretrained`` is empty."""
    path, adapted, model = resolve_pretrained_arg(pretrained, model)
    if not path:
        logger.warning("no --pretrained: %s with random weights (seed %d); only useful for tests", model, seed)
        torch.manual_seed(seed)
    clip = create_clip(model, path or None, cache_dir=cache_dir, device=device).eval()
    _, eval_tf = clip_transforms(clip)
    digest = hashlib.sha256()
    for k, v in sorted(clip.visual.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    return clip, eval_tf, VisionSource(model, path, adapted, digest.hexdigest())


# ---------------------------------------------------------------------------------------------------------------
# Writing


def window_sample(unit: Unit, split: str, feats: list[np.ndarray], window: int) -> dict:
    """A window sample exactly as the builder's ``_encode_window`` writes it, with the given per-AD features.

    Args:
        unit: the planned window.
        split: the split name stored in the json.
        feats: one (T, D) float16 array per AD of the window.
        window: N (rows are zero-padded up to it).
    """
    T, Dm = feats[0].shape
    arr = np.zeros((window, T, Dm), np.float16)  # (N, T, D)
    mask = np.zeros((window, T), bool)  # (N, T)
    arr[: len(feats)] = np.stack(feats)
    mask[: len(feats)] = True  # every frame of a frames-shard clip is a real frame
    meta = window_meta(unit, split)
    return {
        "__key__": unit.key,
        "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        "feats.npy": npy_bytes(arr),
        "mask.npy": npy_bytes(mask),
    }


def write_shard(
    out: Path, shard: ShardPlan, feats: dict[int, np.ndarray], split: str, window: int, signature: str
) -> dict:
    """Write one shard atomically (fixed tar metadata, as the builder) and its record; returns the record."""
    path = out / shard.name
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, encoder=False, mtime=0, user="distinctad", group="distinctad")
            for unit in shard.units:
                writer.write(window_sample(unit, split, [feats[a[0]] for a in unit.ads], window))
            writer.close()
    os.chmod(path, 0o644)
    record = {
        "file": shard.name,
        "samples": len(shard.units),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "movies": [shard.movie],
        "ads": shard.ads,
        "dropped": {},
        "signature": signature,
    }
    atomic_write_json(out / PARTS_DIR / f"{shard.name}.json", record)
    return record


def shard_done(out: Path, name: str, signature: str) -> dict | None:
    """The shard's record if the shard is complete, intact and made with the same model/options, else None."""
    path, rec_path = out / name, out / PARTS_DIR / f"{name}.json"
    if not (path.is_file() and rec_path.is_file()):
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except json.JSONDecodeError:
        return None
    if rec.get("signature") != signature or rec.get("bytes") != path.stat().st_size:
        return None
    return rec if file_sha256(path) == rec.get("sha256") else None


# ---------------------------------------------------------------------------------------------------------------
# The job


@dataclass
class ExtractConfig:
    frames: str
    out: str
    model: str = DEFAULT_MODEL
    pretrained: str = ""
    cache_dir: str = ""
    seed: int = 0
    split: str = ""
    window: int = 16
    context: int = 3
    maxcount: int = 64
    batch_size: int = 32
    num_workers: int = 2
    device: str = ""
    precision: str = "auto"
    progress: bool = True


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def extract(cfg: ExtractConfig, rank: int | None = None, world: int | None = None) -> dict:
    """Extract this rank's movies; rank 0 then merges the manifest (collective when a process group is up).

    Returns:
        ``{"written": [...], "skipped": [...], "failed": [...], "manifest": dict | None}`` for this rank
        (``manifest`` on rank 0 only).
    """
    rank = D.get_rank() if rank is None else rank
    world = D.get_world_size() if world is None else world
    urls = expand_shards(cfg.frames)
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise ValueError(
            f"frames shard not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    frames_dir = Path(urls[0]).parent
    frames_manifest = {}
    if (frames_dir / "manifest.json").is_file():
        frames_manifest = json.loads((frames_dir / "manifest.json").read_text())
        if frames_manifest.get("kind") not in (None, "frames"):
            raise ValueError(f"{frames_dir}: shards are {frames_manifest['kind']!r}, not 'frames'")
    split = cfg.split or frames_manifest.get("split") or "train"
    # One rank reads the json members and tells the others (every rank then plans the same shards).
    scan = D.broadcast_object(scan_frames(urls) if rank == 0 or D.get_world_size() == 1 else None)
    by_movie, where, T = scan
    if not by_movie:
        raise ValueError(f"{cfg.frames}: no clips found in the frames shards")
    opts = BuildOptions(
        kind="window", split=split, num_frames=T, window=cfg.window, context=cfg.context, maxcount=cfg.maxcount
    )
    plan = plan_shards(by_movie, opts)

    device = torch.device(cfg.device or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"))
    clip, eval_tf, source = load_vision(
        cfg.model, cfg.pretrained, cache_dir=cfg.cache_dir or None, seed=cfg.seed, device=device
    )
    autocast = _autocast_dtype(cfg.precision, device)
    signature = hashlib.sha256(
        json.dumps(
            {
                "options": asdict(opts),
                "weights": source.weights_sha256,
                "precision": str(autocast),
                "frames": frames_manifest.get("plan_hash") or sorted(os.path.basename(u) for u in urls),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    owner = assign_movies({m: len(a) for m, a in by_movie.items()}, world)
    mine = [s for s in plan if owner[s.movie] == rank]
    done = {s.name for s in mine if shard_done(out, s.name, signature) is not None}
    todo = [s for s in mine if s.name not in done]
    if done:
        logger.info(
            "rank %d: %d/%d shards already complete (same model and options); skipping them", rank, len(done), len(mine)
        )
    todo_movies = sorted({s.movie for s in todo})
    written, failed = [], []
    if todo_movies:
        written, failed = _run(
            cfg, clip, eval_tf, device, autocast, todo, todo_movies, by_movie, where, opts, out, signature, rank
        )
    D.barrier()
    manifest = None
    if rank == 0:
        manifest = merge_manifest(
            out, plan, opts, frames_dir, frames_manifest, source, signature, feature_dim=int(clip.visual.output_dim)
        )
    D.barrier()
    return {"written": written, "skipped": sorted(done), "failed": failed, "manifest": manifest}


@torch.no_grad()
def _run(cfg, clip, eval_tf, device, autocast, todo, todo_movies, by_movie, where, opts, out, signature, rank):
    """Embed the clips of ``todo_movies`` and write their pending shards as each movie completes."""
    urls = sorted({u for m in todo_movies for u in where[m]})
    info = get_wds_loader(
        urls,
        "frames",
        cfg.batch_size,
        is_train=False,
        pad_eval=False,
        num_workers=cfg.num_workers,
        preprocess=eval_tf,
        num_frames=opts.num_frames,
        rank=0,
        world_size=1,
    )
    wanted = set(todo_movies)
    expected = {m: len(by_movie[m]) for m in todo_movies}
    pending = {m: [s for s in todo if s.movie == m] for m in todo_movies}
    buffers: dict[str, dict[int, np.ndarray]] = {m: {} for m in todo_movies}
    written: list[str] = []
    bar = tqdm(
        total=sum(expected.values()),
        unit="clip",
        desc=f"extract (rank {rank})",
        position=rank,
        disable=not cfg.progress,
    )
    for batch in info.dataloader:
        rows = [i for i, m in enumerate(batch["movie"]) if m in wanted]
        if not rows:
            continue
        images = batch["images"][rows].to(device)  # (b, T, 3, H, W)
        b, T = images.shape[:2]
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            emb = clip.encode_image(images.flatten(0, 1), normalize=True)  # (b*T, D)
        emb = torch.nn.functional.normalize(emb.float(), dim=-1).view(b, T, -1).cpu().numpy().astype(np.float16)
        for j, i in enumerate(rows):
            movie = batch["movie"][i]
            buffers[movie][int(batch["ad_index"][i])] = emb[j]
        bar.update(len(rows))
        for movie in {batch["movie"][i] for i in rows}:
            if len(buffers[movie]) == expected[movie]:
                for shard in pending.pop(movie):
                    write_shard(out, shard, buffers[movie], opts.split, opts.window, signature)
                    written.append(shard.name)
                del buffers[movie]
                wanted.discard(movie)
    bar.close()
    failed = sorted(pending)
    for movie in failed:
        logger.error(
            "movie %s: only %d of %d clips could be read (%d corrupt samples skipped); its shards are not written",
            movie,
            len(buffers[movie]),
            expected[movie],
            info.num_skipped,
        )
    return written, failed


def merge_manifest(
    out: Path,
    plan: list[ShardPlan],
    opts: BuildOptions,
    frames_dir: Path,
    frames_manifest: dict,
    source: VisionSource,
    signature: str,
    feature_dim: int,
) -> dict:
    """Rank 0: the builder-format ``manifest.json`` and ``sizes.json`` from the per-shard records."""
    records = {}
    for shard in plan:
        rec = shard_done(out, shard.name, signature)
        if rec is not None:
            records[shard.name] = {k: v for k, v in rec.items() if k != "signature"}
    shards = [records[s.name] for s in plan if s.name in records]
    sources = []
    if (frames_dir / "manifest.json").is_file():
        sources.append(source_record("frames-manifest", frames_dir / "manifest.json"))
    all_movies = sorted({s.movie for s in plan})
    missing = sorted({s.movie for s in plan if s.name not in records})
    manifest = {
        "builder_version": BUILDER_VERSION,
        "kind": "window",
        "split": opts.split,
        "options": asdict(opts),
        "feature_dim": feature_dim,
        "text_only": False,
        "sources": sources,
        "plan_hash": signature,
        "movies": [m for m in all_movies if m not in missing],
        "curation": {},
        "complete": len(records) == len(plan),
        "shards": shards,
        "totals": {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "movies": len(all_movies) - len(missing),
            "ads": sum(s["ads"] for s in shards),
        },
        "extraction": {
            "frames": str(frames_dir),
            "frames_plan_hash": frames_manifest.get("plan_hash"),
            "model": source.model,
            "pretrained": source.pretrained,
            "adapted": source.adapted,
            "vision_weights_sha256": source.weights_sha256,
            "features": "L2-normalised CLIP image embeddings of each frame (open_clip eval transform)",
            "missing_movies": missing,
        },
    }
    atomic_write_json(out / "manifest.json", manifest)
    atomic_write_json(out / "sizes.json", {s["file"]: s["samples"] for s in shards})
    logger.info(
        "%s: %d/%d shards, %d windows, %d ADs of %d movies%s",
        out,
        len(shards),
        len(plan),
        manifest["totals"]["samples"],
        manifest["totals"]["ads"],
        manifest["totals"]["movies"],
        "" if manifest["complete"] else f" (incomplete: {', '.join(missing)})",
    )
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="distinctad-extract",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--frames", required=True, help="Frames shards: a folder, a brace pattern or one .tar.")
    p.add_argument("--out", required=True, help="Output folder for the window shards, manifest.json and sizes.json.")
    p.add_argument(
        "--pretrained",
        default="",
        help="A Stage-I run directory (uses its clip_ad/), a saved CLIP "
        "folder, a checkpoint file, or an open_clip tag in the local cache; empty: random weights (tests).",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="open_clip architecture of --pretrained (ignored when it is a folder with its own open_clip_config.json).",
    )
    p.add_argument("--cache-dir", default="", help="Hugging Face / open_clip cache folder to look tags up in.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights when --pretrained is empty.")
    p.add_argument("--split", default="", help="Split name of the output shards; default: the frames shards' split.")
    p.add_argument("--window", type=int, default=16, help="N, ADs per window (stride N; the last one is padded).")
    p.add_argument("--context", type=int, default=3, help="K, previous ADs' sentences kept as a window's context.")
    p.add_argument("--maxcount", type=int, default=64, help="Windows per output shard (a shard holds one movie).")
    p.add_argument("--batch-size", type=int, default=32, help="Clips per forward pass.")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (JPEG decoding, preprocessing).")
    p.add_argument("--device", default="", help="Torch device; default: this rank's GPU, else cpu.")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="Autocast precision of the forward; auto: fp16 on GPU, fp32 on CPU (features are stored "
        "as float16 either way).",
    )
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.window < 1 or args.context < 0 or args.maxcount < 1 or args.batch_size < 1 or args.num_workers < 0:
        raise SystemExit(
            "error: need --window >= 1, --context >= 0, --maxcount >= 1, --batch-size >= 1, --num-workers >= 0"
        )
    if "-" in args.split or "/" in args.split:
        raise SystemExit(f"error: --split must not contain '-' or '/', got {args.split!r}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``distinctad-extract`` (returns nothing: a console script's return value is its exit status)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:  # every path before any work: one line naming the flag and the path
        check_shards("--frames", args.frames)
        check_output_dir("--out", args.out)
        check_weights("--pretrained", args.pretrained)
        if args.cache_dir:
            check_dir("--cache-dir", args.cache_dir, "cache folder")
    except PathProblem as e:
        raise SystemExit(f"error: {e}") from None
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        D.init_distributed()
    init_logger(rank=D.get_rank())
    set_threads()  # (init_distributed sets them too; a single process needs it here)
    cfg = ExtractConfig(
        frames=args.frames,
        out=args.out,
        model=args.model,
        pretrained=args.pretrained,
        cache_dir=args.cache_dir,
        seed=args.seed,
        split=args.split,
        window=args.window,
        context=args.context,
        maxcount=args.maxcount,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
    )
    try:
        result = extract(cfg)
    except (WeightsNotFoundError, ValueError, OSError, tarfile.TarError) as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        if distributed:
            D.shutdown()
    if result["failed"]:
        raise SystemExit(f"error: movies not extracted (unreadable clips): {', '.join(result['failed'])}")
    if result["manifest"] is not None:
        t = result["manifest"]["totals"]
        print(
            f"extracted {t['ads']} ADs of {t['movies']} movies into {t['samples']} windows / {t['shards']} shards "
            f"in {cfg.out} (wrote {len(result['written'])}, skipped {len(result['skipped'])} complete)"
        )


if __name__ == "__main__":
    main()
