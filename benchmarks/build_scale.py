"""Shard builds at MAD scale: every figure of issue "MAD at full scale" against its baseline, measured in one run.

Sections (``--only`` picks some; all by default, a few minutes on 2 cores):

- ``hash``: identifying a feature file of ``--feature-mb`` MB. Baseline: sha256 of the whole file (the builder's old
  default, on every run and resume). New: the sampled identity (size + 64 x 64 KiB blocks), and a resume.
- ``features``: CPU seconds of a window build over real-length movies (``--feature-movies`` x 2 h at 5 fps x 512
  float32, one AD every ~10 s). Baseline: the old reader, which looked the movie's HDF5 dataset up again for
  every AD. New: the dataset held open per movie.
- ``workers``: what one builder worker costs to start (seconds, RSS, memory of its own = USS) and window-build
  throughput with 0/1/2 workers. Baseline: a spawned worker importing torch through webdataset (as before).
- ``film``: Stage-I ADs per CPU second on a generated 1080p H.264 film (GOP 250 at 25 fps, one AD every ~10 s).
  Baseline: the old clip reader (a seek per AD, ``to_image()`` + PIL resize, FFmpeg's default thread count).
- ``parts``: balance of ``--part`` over MAD-like AD counts (longest-first vs hashing movie ids) and merge time.

    python benchmarks/build_scale.py                       # everything, small sizes
    python benchmarks/build_scale.py --only film --film-seconds 120
    python benchmarks/build_scale.py --only hash --feature-mb 4096

CPU times are ``time.process_time()`` (all threads of this process). Printed with ``uptime``: on a shared machine
the load changes the wall-clock figures, and the ratios are what to read.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROC = Path("/proc")  # Linux process information
SECTIONS = ("hash", "features", "workers", "film", "parts")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime: n/a"


def header(name: str) -> None:
    print(f"\n== {name}  [{uptime()}]", flush=True)


def cpu_and_wall(fn, *args, **kwargs):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - c0, time.perf_counter() - w0


# ---------------------------------------------------------------- hash


def bench_hash(work: Path, args) -> None:
    from distinctad.data.identity import HashCache, full_sha256, input_record

    header(f"hash: identity of a {args.feature_mb} MB input")
    path = work / "big_input.bin"
    if not path.is_file() or path.stat().st_size != args.feature_mb << 20:
        block = np.random.default_rng(0).bytes(16 << 20)
        with open(path, "wb") as f:
            for _ in range(args.feature_mb // 16):
                f.write(block)
    full_sha256(path)  # warm the page cache for both
    _, full_cpu, full_wall = cpu_and_wall(full_sha256, path)
    _, samp_cpu, samp_wall = cpu_and_wall(input_record, "features", path)
    cache = HashCache(work)
    input_record("features", path, mode="full", cache=cache)
    _, res_cpu, res_wall = cpu_and_wall(input_record, "features", path, cache=cache)
    mbs = args.feature_mb / full_wall
    print(f"baseline full sha256:      {full_wall:8.3f} s wall, {full_cpu:8.3f} s CPU ({mbs:.0f} MB/s)")
    print(
        f"sampled identity (default): {samp_wall:8.4f} s wall, {samp_cpu:8.4f} s CPU  = "
        f"{full_wall / max(samp_wall, 1e-6):.0f}x faster"
    )
    print(f"resume, full hash cached:  {res_wall:8.4f} s wall (the cached sha256 is reused: nothing re-read)")
    for label, gb, files in (("MAD features", 44, 1), ("MAD films", 2000, 488)):
        print(
            f"  -> {label} ({gb} GB, {files} file(s)): full sha256 ~{gb * 1024 / mbs / 60:.1f} min per run; "
            f"sampled ~{files * samp_wall:.2f} s (4 MiB per file, from page cache here; ~{files * 64} seeks cold)"
        )


# ---------------------------------------------------------------- features


def _mad_like_ads(movies: list[str], seconds: float, every: float, seed: int = 0) -> dict:
    from distinctad.data.annotations import AD

    rng = np.random.default_rng(seed)
    out = {}
    for m in movies:
        starts = np.sort(rng.uniform(1.0, seconds - 8.0, int(seconds / every)))
        out[m] = [AD(m, i, float(s), float(s + rng.uniform(1.0, 6.0)), f"ad {i}") for i, s in enumerate(starts)]
    return out


def _feature_file(work: Path, movies: int, seconds: float, dim: int = 512) -> Path:
    import h5py

    path = work / f"features_{movies}x{int(seconds)}s.h5"
    if not path.is_file():
        rng = np.random.default_rng(0)
        block = rng.standard_normal((int(seconds * 5), dim), dtype=np.float32)
        with h5py.File(path, "w") as f:
            for i in range(movies):
                f.create_dataset(f"m{i:03d}", data=np.roll(block, i, axis=0))
    return path


def _linked_feature_file(work: Path, real: int, movies: int, seconds: float) -> Path:
    """``movies`` 2-hour movies for the worker section: the ``real`` datasets of :func:`_feature_file` and HDF5
    soft links to them for the rest (a MAD-sized AD count without writing GBs of features)."""
    import h5py

    source = _feature_file(work, real, seconds)
    path = work / f"features_{movies}linked_{real}x{int(seconds)}s.h5"
    if not path.is_file():
        with h5py.File(path, "w") as f:
            for i in range(movies):
                f[f"m{i:03d}"] = h5py.ExternalLink(source.name, f"m{i % real:03d}")
    return path


class _ReopenReader:
    """The old FeatureReader.dataset: the movie's dataset looked up again on every call (every AD)."""

    @staticmethod
    def install(reader_cls):
        def dataset(self, movie):
            return self._file()[movie]

        original = reader_cls.dataset
        reader_cls.dataset = dataset
        return original


def bench_features(work: Path, args) -> None:
    from distinctad.data.features import FeatureReader
    from distinctad.data.shards import BuildOptions, build_shards

    seconds = 7200.0
    header(f"features: window build over {args.feature_movies} movies x 2 h x 512 float32 (one AD / ~10 s)")
    path = _feature_file(work, args.feature_movies, seconds)
    by_movie = _mad_like_ads([f"m{i:03d}" for i in range(args.feature_movies)], seconds, 10.5)
    n_ads = sum(len(v) for v in by_movie.values())
    opts = BuildOptions(kind="window", maxcount=256)

    def build(out: str):
        shutil.rmtree(work / out, ignore_errors=True)  # a fresh build every time (never a resume)
        return build_shards(work / out, by_movie, opts, features_path=path, progress=False)

    build("warm")  # page cache
    results = {}
    for name in ("baseline (dataset per AD)", "new (dataset per movie)", "baseline again", "new again"):
        original = _ReopenReader.install(FeatureReader) if name.startswith("baseline") else None
        try:
            res, cpu, wall = cpu_and_wall(build, name.split()[0])
        finally:
            if original is not None:
                FeatureReader.dataset = original
        results.setdefault(name.split()[0], []).append(cpu)
        print(f"{name:28s}: {cpu:6.2f} s CPU, {wall:6.2f} s wall, {n_ads / cpu:7.0f} ADs per CPU-s")
    base, new = min(results["baseline"]), min(results["new"])
    print(f"features read once: {base / new:.2f}x less CPU per window build (best of 2 each)")
    print(f"  -> MAD windows (334,280 ADs): ~{334280 / (n_ads / new) / 60:.1f} CPU-min of feature reading + encoding")


# ---------------------------------------------------------------- workers


def _private_mb(pid: int) -> tuple[float, float]:
    """(RSS, USS) of a process in MB, from /proc (USS: the memory only it holds)."""
    rss = uss = 0
    with open(PROC / str(pid) / "smaps_rollup") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key == "Rss":
                rss = int(value.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                uss += int(value.split()[0])
    return rss / 1024, uss / 1024


def _import_webdataset() -> None:
    import webdataset  # noqa: F401 - what the old builder worker imported (and torch with it)


def _noop(x):
    return x


def _pool_cost(ctx, initializer, initargs, n: int = 2) -> tuple[float, list[tuple[float, float]]]:
    t0 = time.perf_counter()
    pool = ctx.Pool(n, initializer=initializer, initargs=initargs)
    try:
        pool.map(_noop, range(n * 4), chunksize=1)  # every worker up and initialised
        start = time.perf_counter() - t0
        mem = [_private_mb(p.pid) for p in pool._pool]
    finally:
        pool.terminate()
        pool.join()
    return start, mem


def bench_workers(work: Path, args) -> None:
    from distinctad.data.kinds import get_kind
    from distinctad.data.shards import BuildOptions, build_shards, worker_context

    header("workers: builder worker cost and window-build throughput")
    from distinctad.data.build_worker import init_worker

    opts = BuildOptions(kind="window", maxcount=64)
    if (PROC / "self").is_dir():
        spawn_s, spawn_mem = _pool_cost(mp.get_context("spawn"), _import_webdataset, ())
        init_args = (None, None, opts, get_kind("window"), os.getpid(), 2)
        fs_s, fs_mem = _pool_cost(worker_context(), init_worker, init_args)
        for label, s, mem in (("baseline spawn + torch", spawn_s, spawn_mem), ("new forkserver", fs_s, fs_mem)):
            rss = statistics.mean(m[0] for m in mem)
            uss = statistics.mean(m[1] for m in mem)
            print(f"{label:24s}: 2 workers up in {s:5.2f} s; per worker RSS {rss:5.0f} MB, own (USS) {uss:5.0f} MB")
        less = spawn_mem[0][1] / fs_mem[0][1]
        print(f"worker start {spawn_s / fs_s:.1f}x faster; own memory per worker {less:.1f}x less")
    path = _linked_feature_file(work, args.feature_movies, args.worker_movies, 7200.0)
    by_movie = _mad_like_ads([f"m{i:03d}" for i in range(args.worker_movies)], 7200.0, 10.5)
    film = work / f"film1080_{int(args.film_seconds)}s.mp4"
    if not film.is_file():
        _make_film(film, args.film_seconds)
    videos = work / "videos"
    videos.mkdir(exist_ok=True)
    for i in range(4):  # 4 "movies" of the same film: 4 jobs for the workers
        if not (videos / f"f{i}.mp4").exists():
            os.symlink(film, videos / f"f{i}.mp4")
    frames_ads = _mad_like_ads([f"f{i}" for i in range(4)], args.film_seconds, 10.0, seed=2)
    for label, ads, kwargs, kind_opts in (
        ("window", by_movie, {"features_path": path}, opts),
        ("frames", frames_ads, {"video_dir": videos}, BuildOptions(kind="frames", maxcount=1000)),
    ):
        n = sum(len(v) for v in ads.values())
        rates = {}
        for workers in (0, 1, 2, 0, 1, 2):  # interleaved twice, best of each: load changes between runs
            out = work / f"{label}-w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            _, _, wall = cpu_and_wall(build_shards, out, ads, kind_opts, workers=workers, progress=False, **kwargs)
            rates[workers] = max(rates.get(workers, 0), n / wall)
            rate = n / wall
            print(f"{label} build ({n} ADs), {workers} workers: {wall:6.2f} s wall = {rate:7.1f} ADs/s  [{uptime()}]")
        print(
            f"{label} build, best of 2: "
            + ", ".join(f"{w} workers {r:7.1f} ADs/s ({r / rates[0]:.2f}x)" for w, r in sorted(rates.items()))
        )
    print(
        "  expected on 32 free cores: jobs are movie chunks encoded in parallel and sent back as ready tar bytes; "
        "the main process only appends and hashes them (~1 GB/s), so throughput grows ~linearly with workers until "
        "that, the disk or the movie count (jobs) is the limit; film decoders get cores // workers threads each"
    )


# ---------------------------------------------------------------- film


def _make_film(path: Path, seconds: float, w: int = 1920, h: int = 1080, fps: int = 25, gop: int = 250) -> None:
    import av

    rng = np.random.default_rng(0)
    base = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"preset": "veryfast", "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for i in range(int(seconds * fps)):
            img = np.roll(base, i * 4, axis=1)
            y = (i * 7) % (h - 100)
            img[y : y + 100, :200] = (i * 3) % 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


class _OldClipReader:
    """The clip reader before this rework: a seek per AD, full-size to_image() + PIL bicubic resize, AUTO threads."""

    def __init__(self, path, short_side=224):
        import av

        self.short_side = short_side
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"

    def close(self):
        self.container.close()

    def clip(self, start, end, t=8):
        from distinctad.data.video import frame_times, resize_short_side

        targets = frame_times(start, end, t)
        tb = self.stream.time_base
        self.container.seek(max(0, int(start / tb)), stream=self.stream, backward=True, any_frame=False)
        picked, prev, i = [None] * t, None, 0
        for frame in self.container.decode(self.stream):
            ts = float(frame.pts * tb) if frame.pts is not None else 0.0
            while i < t and ts > targets[i]:
                picked[i] = prev if prev is not None else frame
                i += 1
            if i >= t:
                break
            prev = frame
        while i < t and prev is not None:
            picked[i] = prev
            i += 1
        return [resize_short_side(p.to_image(), self.short_side) for p in picked]


def _encode_ads(reader, ads) -> int:
    from distinctad.data.video import encode_jpeg

    n = 0
    for s, e in ads:
        for img in reader.clip(s, e, 8):
            n += len(encode_jpeg(img, 90))
    return n


def bench_film(work: Path, args) -> None:
    from distinctad.data.video import VideoClipReader, keyframe_interval, usable_cores

    header(f"film: Stage-I frames from a {args.film_seconds:.0f} s 1080p H.264 film (GOP 250 @ 25 fps)")
    path = work / f"film1080_{int(args.film_seconds)}s.mp4"
    if not path.is_file():
        _, _, wall = cpu_and_wall(_make_film, path, args.film_seconds)
        print(f"(generated {path.name} in {wall:.0f} s)")
    rng = np.random.default_rng(1)
    results = {}
    for every in args.ad_every:
        starts = np.sort(rng.uniform(0.5, args.film_seconds - 7.0, max(2, int(args.film_seconds / every))))
        ads = [(float(s), float(s + rng.uniform(1.5, 6.0))) for s in starts]
        print(f"-- {len(ads)} ADs, one every ~{every:g} s; film GOP probed: {keyframe_interval(path):.2f} s")
        for name in ("baseline", "new", "baseline", "new"):
            if name == "baseline":
                reader = _OldClipReader(path)
            else:  # what one of W = cores builder workers gets: cores // W = 1 decoder thread
                reader = VideoClipReader(path, 224, threads=max(1, usable_cores() // max(1, args.film_workers)))
            try:
                _, cpu, wall = cpu_and_wall(_encode_ads, reader, ads)
            finally:
                reader.close()
            results.setdefault((every, name), []).append(cpu)
            extra = f" (seeks {reader.seeks}, decoded on {reader.linear})" if name == "new" else ""
            print(f"   {name:8s}: {cpu:6.2f} CPU-s, {wall:6.2f} s wall = {len(ads) / cpu:5.2f} ADs per CPU-s{extra}")
        base, new = min(results[(every, "baseline")]), min(results[(every, "new")])
        print(
            f"   ADs per CPU-second: {base / new:.2f}x the baseline (target >= 1.5x); "
            f"{new / len(ads):.2f} CPU-s per AD -> MAD (334,280 ADs) ~{334280 * new / len(ads) / 3600:.0f} core-hours"
        )


# ---------------------------------------------------------------- parts


def bench_parts(work: Path, args) -> None:
    from distinctad.data.parts import assign_parts

    header("parts: --part balance over 488 MAD-like movies (334,280 ADs, lognormal counts)")
    rng = np.random.default_rng(0)
    counts = rng.lognormal(0.0, 0.45, 488)
    counts = np.maximum(1, np.round(counts / counts.sum() * 334280)).astype(int)
    ads = {f"{3000 + i}": int(c) for i, c in enumerate(counts)}
    for n in (8, 32, 64):
        lpt = assign_parts(ads, n)
        hashed = {m: int(hashlib.sha256(m.encode()).hexdigest(), 16) % n for m in ads}
        ideal = sum(ads.values()) / n

        def worst(assign):
            load = [0] * n
            for m, p in assign.items():
                load[p] += ads[m]
            return max(load) / ideal

        print(
            f"n={n:3d}: busiest part / ideal = {worst(lpt):.3f} longest-first (ours) vs {worst(hashed):.3f} "
            "hash of the movie id (baseline): the array finishes when its busiest part does"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="Sections to run.")
    parser.add_argument("--dir", default=None, help="Work folder, kept between runs (default: a temporary one).")
    parser.add_argument("--feature-mb", type=int, default=512, help="hash: size of the input hashed.")
    parser.add_argument("--feature-movies", type=int, default=4, help="features/workers: 2-hour movies.")
    parser.add_argument(
        "--worker-movies", type=int, default=32, help="workers: 2-hour movies in the window build (~690 ADs each)."
    )
    parser.add_argument("--film-seconds", type=float, default=60.0, help="film: length of the 1080p test film.")
    parser.add_argument(
        "--ad-every", type=float, nargs="+", default=[10.0], help="film: seconds between ADs (MAD: ~10)."
    )
    parser.add_argument(
        "--film-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="film: builder workers sharing the cores (default: one per core, so the new reader's decoder gets "
        "cores // workers = 1 thread; the baseline keeps FFmpeg's one thread per core in every worker).",
    )
    args = parser.parse_args(argv)
    print(f"build_scale: {os.cpu_count()} CPUs; {uptime()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        sections = {
            "hash": bench_hash,
            "features": bench_features,
            "workers": bench_workers,
            "film": bench_film,
            "parts": bench_parts,
        }
        for name in args.only:
            sections[name](work, args)
    print(f"\ndone; {uptime()}")


if __name__ == "__main__":
    main(sys.argv[1:])
