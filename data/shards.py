"""Shard builder: annotations + features/videos → WebDataset tars + ``manifest.json`` + ``sizes.json``.

Design choices, and why:
- **Deterministic plan.** Which samples go into which shard is a pure function of (movie list, annotations,
  feature/video lengths, options): movies are taken in sorted order, their samples in AD order, and cut into
  shards of ``maxcount`` samples. Tars are written with a fixed mtime/owner, so the same inputs give the same
  bytes. This is what makes builds resumable: a shard whose file is still the one recorded in the manifest (same
  size and mtime, else same sha256) is skipped, and deleting one shard and re-running rebuilds exactly that one.
  Inputs enter the plan by their cheap identity (``identity.py``), so the hashing mode never forces a rebuild.
- **Atomic shards.** Each shard is written to a temporary ``*.tmp`` sibling and renamed when complete, and the
  manifest is rewritten (atomically) after every finished shard, so a crash never leaves a half shard that
  looks finished.
- **Parallel over movies.** Workers (``build_worker.py``) decode video / read features and JPEG-encode one movie
  chunk each, and spool it as ready tar bytes to a file in a private folder of the output; the main process only
  appends those files to the shard and feeds its running sha256, in plan order. (Sending MBs of results through
  the pool's pipe made 1 worker 0.4x as fast as none: the main process spent more CPU receiving than encoding.)
- **Split across machines.** ``part`` builds one part of the movies (``parts.py``); ``merge`` joins the parts.
- **Kind-agnostic.** What a sample is (which ADs, how it is encoded) comes from its kind in ``kinds.py``; this
  module only plans, shards, writes, hashes and resumes.

Checking a finished set is ``verify.py``. This module stays over ~450 lines because :func:`build_shards` is one
resumable transaction (skip the shards whose sha256 matches, write the rest atomically, rewrite the manifest after
each) that must stay in one piece.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from distinctad.common import atomic_path, atomic_write_json
from distinctad.data.annotations import AD
from distinctad.data.build_worker import encode_job, init_worker, tar_end
from distinctad.data.features import FEATURE_FPS, FeatureReader
from distinctad.data.identity import HashCache, content_identity, input_record, sources_changed

# npy_bytes, sample_key, window_meta, window_units stay public here: train/tools/extract.py writes window shards
# with the builder's own code.
from distinctad.data.kinds import (  # noqa: F401
    INPUTS,
    BuildInputs,
    SampleKind,
    Unit,
    get_kind,
    npy_bytes,
    sample_key,
    window_meta,
    window_units,
)

if TYPE_CHECKING:
    from distinctad.data.parts import Part

logger = logging.getLogger(__name__)

BUILDER_VERSION = "1.1.0"  # 1.1: frames are resized by libswscale (video.frame_to_image), not PIL
CHUNK_UNITS = 128  # samples per worker job: bounds the bytes a worker sends back at once
QUICK_HASH_BYTES = 16 << 20


@dataclass
class BuildOptions:
    """Options that define the content of a shard set (all of them go into the manifest and the plan hash)."""

    kind: str = "window"
    """A registered sample kind (``kinds.KINDS``): ``frames`` (Stage-I JPEG frames) or ``window`` (Stage-II feature
    windows, or text-only windows)."""
    split: str = "train"
    """Split name: shard file prefix and the ``split`` field of every sample."""
    num_frames: int = 8
    """T: frames per AD clip."""
    window: int = 16
    """N: ADs per window (stride N; the last window of a movie may be short)."""
    context: int = 3
    """K: previous ADs' sentences stored as text context of a window."""
    maxcount: int | None = None
    """Samples per shard; ``None`` derives it from ``shard_size_mb`` and the estimated sample size."""
    shard_size_mb: float = 1000.0
    """Target shard size when ``maxcount`` is not given."""
    short_side: int = 224
    """Frames: resize so the short side has this many pixels (0 keeps the video size)."""
    jpeg_quality: int = 90
    """Frames: JPEG quality."""
    max_shift: int = 0
    """Windows: training jitter, each AD's frames shifted by a deterministic 0..max_shift frames (AutoAD-II: 4)."""
    shift_seed: int = 0
    """Windows: seed of the per-AD shift."""
    feature_fps: float = FEATURE_FPS
    """Frame rate of the feature file."""

    def __post_init__(self):
        get_kind(self.kind)  # unknown: one line listing the known kinds
        if self.num_frames < 1 or self.window < 1 or self.context < 0:
            raise ValueError("num_frames and window must be >= 1 and context >= 0")
        if self.maxcount is not None and self.maxcount < 1:
            raise ValueError("maxcount must be >= 1")
        if "-" in self.split or "/" in self.split or not self.split:
            raise ValueError(f"split name must be non-empty without '-' or '/', got {self.split!r}")


def shard_name(split: str, index: int, part: Part | None = None) -> str:
    """``{split}-{index:06d}.tar``; a part's shards carry its tag: ``{split}-p003of008-{index:06d}.tar``."""
    return f"{split}-{index:06d}.tar" if part is None else f"{split}-{part.tag}-{index:06d}.tar"


def manifest_name(part: Part | None = None) -> str:
    """``manifest.json``; a part's own manifest is ``manifest.p003of008.json`` (merged by ``merge``)."""
    return "manifest.json" if part is None else f"manifest.{part.tag}.json"


def file_sha256(path: str | os.PathLike, quick: bool = False) -> str:
    """sha256 of a file; ``quick`` hashes size + first and last 16 MiB (kept for old callers; inputs of a build are
    identified by :mod:`distinctad.data.identity`)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if quick and size > 2 * QUICK_HASH_BYTES:
            h.update(str(size).encode())
            h.update(f.read(QUICK_HASH_BYTES))
            f.seek(size - QUICK_HASH_BYTES)
            h.update(f.read(QUICK_HASH_BYTES))
        else:
            for block in iter(lambda: f.read(4 << 20), b""):
                h.update(block)
    return h.hexdigest()


def estimate_sample_bytes(opts: BuildOptions, feature_dim: int | None) -> int:
    """Rough bytes per sample, to turn ``shard_size_mb`` into a deterministic ``maxcount``."""
    return get_kind(opts.kind).estimate_bytes(opts, feature_dim)


# ---------------------------------------------------------------- planning


@dataclass
class Plan:
    units: list[Unit]
    shards: list[list[Unit]]
    ad_drops: Counter  # reason -> ADs dropped during planning
    movie_drops: dict[str, str]  # movie -> reason (no features / no video)
    ads_per_movie: dict[str, int]  # ADs kept per movie
    feature_dim: int | None


def make_plan(
    by_movie: dict[str, list[AD]],
    movies: list[str],
    opts: BuildOptions,
    *,
    features: FeatureReader | None = None,
    video_dir: str | os.PathLike | None = None,
) -> Plan:
    """Decide every sample and its shard, deterministically, without decoding anything heavy."""
    kind = get_kind(opts.kind)
    inputs = BuildInputs(features=features, videos=None if video_dir is None else str(video_dir))
    check_inputs(kind, inputs)
    units: list[Unit] = []
    ad_drops: Counter = Counter()
    movie_drops: dict[str, str] = {}
    ads_per_movie: dict[str, int] = {}
    for movie in sorted(movies):
        ads = by_movie[movie]
        kept, reason = kind.select(movie, ads, opts, inputs)
        if kept is None:
            movie_drops[movie] = reason
            ad_drops[reason] += len(ads)
            continue
        if len(kept) < len(ads):
            ad_drops[reason] += len(ads) - len(kept)
        if not kept:
            movie_drops[movie] = "no ADs left"
            continue
        ads_per_movie[movie] = len(kept)
        units.extend(kind.units(movie, kept, opts))
    check_unique_keys(units)
    feature_dim = features.dim() if features is not None else None
    maxcount = opts.maxcount or max(1, int(opts.shard_size_mb * 1e6 // estimate_sample_bytes(opts, feature_dim)))
    shards = [units[i : i + maxcount] for i in range(0, len(units), maxcount)]
    return Plan(units, shards, ad_drops, movie_drops, ads_per_movie, feature_dim)


def check_unique_keys(units: list[Unit]) -> None:
    """Raise a one-line ``ValueError`` naming both samples when two units share a key.

    :func:`~distinctad.data.kinds.sample_key` is injective, so this only fires for a kind whose ``units`` hook makes
    keys of its own (or an annotation set with a repeated ``ad_index``). Two samples under one key would be merged
    into one by every WebDataset reader: a window silently lost.
    """
    seen: dict[str, Unit] = {}
    for unit in units:
        other = seen.setdefault(unit.key, unit)
        if other is not unit:
            raise ValueError(
                f"sample key {unit.key!r} is shared by movie {other.movie!r} (AD {other.ads[0][0]}) and movie "
                f"{unit.movie!r} (AD {unit.ads[0][0]}); keys must be unique within a shard set"
            )


# ---------------------------------------------------------------- sample encoding (runs in workers: build_worker.py)


def check_inputs(kind: SampleKind, inputs: BuildInputs) -> None:
    """Raise a one-line ``ValueError`` when ``kind`` lacks a required input."""
    for name in kind.required_inputs:
        if getattr(inputs, name) is None:
            raise ValueError(f"{kind.name} shards need {name} (--{name} {INPUTS[name]})")


# ---------------------------------------------------------------- building


@dataclass
class BuildResult:
    out_dir: str
    manifest: dict
    built: list[str]
    skipped: list[str]
    summary: str


def worker_context() -> mp.context.BaseContext:
    """Where build workers come from: a forkserver that imported only ``build_worker`` (POSIX), else spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["distinctad.data.build_worker"])
    return ctx


def _jobs_for_shard(index: int, units: list[Unit]) -> list[tuple[int, list[Unit]]]:
    jobs, current = [], []
    for unit in units:
        if current and (unit.movie != current[0].movie or len(current) >= CHUNK_UNITS):
            jobs.append((index, current))
            current = []
        current.append(unit)
    if current:
        jobs.append((index, current))
    return jobs


def _plan_hash(opts: BuildOptions, sources: list[dict], plan: Plan) -> str:
    # The inputs enter by content identity (size + sampled blocks), never by hashing mode or mtime: switching
    # --verify-inputs, or touching an input, never changes the plan (identity.same_input decides the rest).
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "version": BUILDER_VERSION,
                "options": asdict(opts),
                "sources": [content_identity(s) for s in sources],
            },
            sort_keys=True,
        ).encode()
    )
    for shard in plan.shards:
        h.update(b"|" + "\n".join(u.key for u in shard).encode())
    return h.hexdigest()


def load_manifest(out: Path, part: Part | None = None) -> dict | None:
    """The ``manifest.json`` of a shard folder (a part's own manifest with ``part``); ``None`` when missing or not
    valid JSON."""
    try:
        return json.loads((out / manifest_name(part)).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _summary_table(stats: dict) -> str:
    rows = [
        ("movies read", stats["movies_read"], stats["ads_read"]),
        ("kept (written)", stats["movies_kept"], stats["ads_kept"]),
    ]
    for reason, (movies, ads) in sorted(stats["dropped"].items()):
        rows.append((f"dropped: {reason}", movies, ads))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'movies':>8}  {'ADs':>9}", "-" * (width + 21)]
    lines += [f"{name:<{width}}  {m:>8}  {a:>9}" for name, m, a in rows]
    lines.append(f"{'samples / shards':<{width}}  {stats['samples']:>8}  {stats['shards']:>9}")
    return "\n".join(lines)


def build_shards(
    out_dir: str | os.PathLike,
    by_movie: dict[str, list[AD]],
    opts: BuildOptions,
    *,
    movies: list[str] | None = None,
    features_path: str | os.PathLike | None = None,
    video_dir: str | os.PathLike | None = None,
    sources: list[dict] | None = None,
    curation: dict | None = None,
    pre_drops: dict[str, tuple[int, int]] | None = None,
    workers: int = 0,
    progress: bool = True,
    part: Part | None = None,
    part_assignment: str | None = None,
    hash_cache: HashCache | None = None,
) -> BuildResult:
    """Build (or resume) one shard set.

    Args:
        out_dir: output folder for ``{split}-{i:06d}.tar``, ``manifest.json`` and ``sizes.json``.
        by_movie: annotations grouped by movie (``AnnotationSet.by_movie()``).
        opts: the content options.
        movies: the curated movie list (default: all of ``by_movie``).
        features_path: MAD-layout HDF5 features (window shards with ``feats.npy``); ``None`` = text-only windows.
        video_dir: folder of ``{movie}.mp4`` files (frames shards).
        sources: ``[{"role", "path", "bytes", "sha256"}]`` of the inputs, recorded in the manifest.
        curation: curation report to record in the manifest.
        pre_drops: ``{reason: (movies, ADs)}`` dropped before this call (curation, bad UTF-8), for the summary.
        workers: encoding processes (0 = in this process).
        progress: show a tqdm bar.
        part: build as part I of N (``--part``): ``movies`` are this part's, shards and manifest carry its tag
            and ``merge`` makes the parts one set (see ``parts.py``).
        part_assignment: ``parts.assignment_hash`` of the whole movie -> part assignment (checked by ``merge``).
        hash_cache: full input hashes known from earlier runs (``identity.HashCache``); used and filled when an
            input's mtime changed, to tell a touched input from an edited one.

    Returns:
        A :class:`BuildResult` with the manifest, the shards built and skipped, and the printed summary table.
    """
    kind = get_kind(opts.kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    movies = sorted(by_movie) if movies is None else sorted(movies)
    features = FeatureReader(features_path) if features_path else None
    plan = make_plan(by_movie, movies, opts, features=features, video_dir=video_dir)
    sources = list(sources or [])
    plan_hash = _plan_hash(opts, sources, plan)

    _check_layout(out, part)
    old = load_manifest(out, part)
    old_shards: dict[str, dict] = {}
    if old is not None:
        changed = sources_changed(old.get("sources", []), sources, hash_cache)
        if old.get("plan_hash") == plan_hash and changed is None:
            old_shards = {s["file"]: s for s in old.get("shards", [])}
        else:
            why = changed if old.get("plan_hash") == plan_hash else "other inputs/options"
            logger.warning("%s: existing manifest was built from %s; rebuilding every shard", out, why)

    # Left by a killed build; never a finished shard (and never another part's file in progress).
    tmp_glob = f".{opts.split}-[0-9]*.tar.*.tmp" if part is None else f".{opts.split}-{part.tag}-*.tar.*.tmp"
    for stale in out.glob(tmp_glob):
        stale.unlink()
    spool_prefix = f".{opts.split}-spool-" if part is None else f".{opts.split}-{part.tag}-spool-"
    for stale in out.glob(spool_prefix + "*"):  # a killed build's worker chunks
        shutil.rmtree(stale, ignore_errors=True)
    names = [shard_name(opts.split, i, part) for i in range(len(plan.shards))]
    todo, skipped = [], []
    for i, name in enumerate(names):
        if _shard_intact(out / name, old_shards.get(name)):
            skipped.append(name)
        else:
            todo.append(i)
    if skipped:
        logger.info("%d/%d shards already complete (as the manifest records); skipping them", len(skipped), len(names))
    if part is not None and todo and (out / "manifest.json").is_file():
        # A part rebuilt after merging: the merged manifest would no longer describe it.
        for stale in ("manifest.json", "sizes.json"):
            (out / stale).unlink(missing_ok=True)
        logger.warning(
            "%s: removed the merged manifest; run `distinctad-shards merge %s` when every part is done", out, out
        )

    shard_records: dict[str, dict] = {n: old_shards[n] for n in skipped}
    manifest = {
        "builder_version": BUILDER_VERSION,
        "kind": opts.kind,
        "split": opts.split,
        "options": asdict(opts),
        "feature_dim": plan.feature_dim,
        # samples made of annotation text alone (e.g. window shards built without --features)
        "text_only": all({"features": features, "videos": video_dir}[name] is None for name in kind.inputs),
        "sources": sources,
        "plan_hash": plan_hash,
        "movies": sorted(plan.ads_per_movie),
        "curation": curation or {},
        "complete": False,
    }
    if part is not None:
        manifest["part"] = {"index": part.index, "count": part.count, "assignment": part_assignment}

    def write_manifest(complete: bool) -> None:
        shards = [shard_records[n] for n in names if n in shard_records]
        manifest["shards"] = shards
        manifest["complete"] = complete
        manifest["totals"] = {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "movies": len({m for s in shards for m in s["movies"]}),
            "ads": sum(s["ads"] for s in shards),
        }
        atomic_write_json(out / manifest_name(part), manifest)

    jobs = [job for i in todo for job in _jobs_for_shard(i, plan.shards[i])]
    remaining = Counter(i for i, _ in jobs)
    init_args = (str(features_path) if features_path else None, str(video_dir) if video_dir else None, opts, kind)
    pool = None
    if workers > 0 and jobs:
        spool = tempfile.mkdtemp(prefix=spool_prefix, dir=out)
        pool = worker_context().Pool(
            workers, initializer=init_worker, initargs=(*init_args, os.getpid(), workers, spool)
        )
        results = pool.imap(encode_job, jobs)
    else:
        init_worker(*init_args)
        results = map(encode_job, jobs)

    built: list[str] = []
    writer = tmp_ctx = tmp = None
    current = None
    shard_stats: dict = {}
    bar = tqdm(total=sum(len(u) for _, u in jobs), unit="sample", desc=f"{opts.split} shards", disable=not progress)
    try:
        for index, blob, n_samples, n_ads, movies_seen, drops, n_units in results:
            if index != current:
                current = index
                tmp_ctx = atomic_path(out / names[index])
                tmp = tmp_ctx.__enter__()
                # Members come as tar bytes with a fixed mtime/owner (build_worker.sample_tar_bytes): identical
                # inputs give byte-identical shards (needed for resumable builds). Hashed as written.
                writer = open(tmp, "wb")  # noqa: SIM115 - closed below or in finally
                digest = hashlib.sha256()
                shard_stats = {"samples": 0, "ads": 0, "movies": [], "dropped": Counter(), "offset": 0}
            if isinstance(blob, str):  # a worker's chunk, spooled to a file
                spooled = blob
                with open(spooled, "rb") as f:
                    blob = f.read()
                os.unlink(spooled)
            writer.write(blob)
            digest.update(blob)
            shard_stats["offset"] += len(blob)
            shard_stats["ads"] += n_ads
            shard_stats["movies"] += [m for m in movies_seen if m not in shard_stats["movies"]]
            shard_stats["samples"] += n_samples
            shard_stats["dropped"].update(drops)
            bar.update(n_units)
            remaining[index] -= 1
            if remaining[index] == 0:
                end = tar_end(shard_stats["offset"])
                writer.write(end)
                digest.update(end)
                writer.close()
                writer = None
                sha = digest.hexdigest()
                tmp_ctx.__exit__(None, None, None)  # fsync + rename *.tmp onto the shard name
                os.chmod(out / names[index], 0o644)
                st = (out / names[index]).stat()
                tmp_ctx = None
                shard_records[names[index]] = {
                    "file": names[index],
                    "samples": shard_stats["samples"],
                    "bytes": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "sha256": sha,
                    "movies": shard_stats["movies"],
                    "ads": shard_stats["ads"],
                    "dropped": dict(shard_stats["dropped"]),
                }
                built.append(names[index])
                write_manifest(complete=False)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if tmp_ctx is not None:  # interrupted mid-shard: remove the partial *.tmp, keep finished shards
            tmp_ctx.__exit__(RuntimeError, RuntimeError("interrupted"), None)
        if pool is not None:
            pool.terminate()
            pool.join()
            shutil.rmtree(spool, ignore_errors=True)

    # Totals and the summary are computed from the manifest records, so a resumed build reports the same.
    decode_drops = Counter()
    for rec in shard_records.values():
        decode_drops.update(rec.get("dropped", {}))
    dropped: dict[str, tuple[int, int]] = dict(pre_drops or {})
    movie_reason_counts = Counter(plan.movie_drops.values())
    for reason, ads in plan.ad_drops.items():
        if ads:
            m, a = dropped.get(reason, (0, 0))
            dropped[reason] = (m + movie_reason_counts.get(reason, 0), a + ads)
    for reason, ads in decode_drops.items():
        m, a = dropped.get(reason, (0, 0))
        dropped[reason] = (m, a + ads)
    n_pre_movies = sum(m for m, _ in (pre_drops or {}).values())
    n_pre_ads = sum(a for _, a in (pre_drops or {}).values())
    stats = {
        "movies_read": len(movies) + n_pre_movies,
        "ads_read": sum(len(by_movie[m]) for m in movies) + n_pre_ads,
        "movies_kept": len({m for r in shard_records.values() for m in r["movies"]}),
        "ads_kept": sum(r["ads"] for r in shard_records.values()),
        "dropped": {k: list(v) for k, v in dropped.items()},
        "samples": sum(r["samples"] for r in shard_records.values()),
        "shards": len(shard_records),
    }
    manifest["stats"] = stats
    write_manifest(complete=True)
    meta_files = [manifest_name(part)]
    if part is None:  # a part's sizes go into the merged sizes.json
        atomic_write_json(out / "sizes.json", {n: shard_records[n]["samples"] for n in names})
        meta_files.append("sizes.json")
    for meta_file in meta_files:  # the atomic helper's temp files are private (0600)
        os.chmod(out / meta_file, 0o644)
    summary = _summary_table(stats)
    return BuildResult(str(out), manifest, built, skipped, summary)


def _shard_intact(path: Path, rec: dict | None) -> bool:
    """Whether a shard of the old manifest is still the one it records: same size and mtime (written by us and not
    touched since: no re-read of gigabytes on resume), else a full sha256 match."""
    if rec is None or not path.is_file():
        return False
    st = path.stat()
    if st.st_size != rec["bytes"]:
        return False
    return st.st_mtime_ns == rec.get("mtime_ns") or file_sha256(path) == rec["sha256"]


def _check_layout(out: Path, part: Part | None) -> None:
    """Refuse to mix a single-machine build and a build in parts in one folder (one line)."""
    from distinctad.data.parts import part_manifests

    merged = load_manifest(out)
    if part is None and part_manifests(out):
        raise ValueError(f"{out}: holds a build in parts (manifest.p*of*.json); build with --part or use another --out")
    if part is not None and merged is not None:
        if "parts" not in merged:
            raise ValueError(f"{out}: holds a single-machine build (manifest.json); use another --out for parts")


def source_record(role: str, path: str | os.PathLike, quick: bool = False, **kwargs) -> dict:
    """A manifest ``sources`` entry for one input file (:func:`distinctad.data.identity.input_record`; ``quick``
    is the old name of the default sampled identity and is ignored)."""
    return input_record(role, path, **kwargs)
