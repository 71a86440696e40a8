"""``distinctad-shards``: build, verify and inspect WebDataset shards; generate SynthMAD.

Examples::

    distinctad-shards synth --out work/synthmad --movies 4 --ads-per-movie 48 --videos --features
    distinctad-shards build --annotations work/synthmad/annotations.json --features work/synthmad/features.h5 \\
        --kind window --split-file work/synthmad/splits.json --split-key TRAIN --split train --out work/shards/win
    distinctad-shards build --annotations data/assets/madeval_anno.csv --kind window --split eval \\
        --out work/shards/madeval-text
    distinctad-shards build ... --part 3/8 --out work/shards/win      # on 8 machines, I = 0..7 (or --part auto)
    distinctad-shards merge work/shards/win
    distinctad-shards verify work/shards/win
    distinctad-shards inspect work/shards/win -n 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from distinctad.common import init_logger, set_threads
from distinctad.data import annotations
from distinctad.data.identity import VERIFY_MODES
from distinctad.data.kinds import INPUTS, KINDS, get_kind, kinds_help
from distinctad.data.parts import PART_HELP
from distinctad.data.paths import check_dir, check_file, check_output_dir, check_shards

logger = logging.getLogger("distinctad.data.cli")


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="Build frames or window shards from annotations and features/videos.")
    g = p.add_argument_group("inputs")
    g.add_argument("--annotations", required=True, help="MAD annotation JSON or AutoAD-style CSV file.")
    g.add_argument(
        "--format",
        choices=annotations.FORMATS,
        default=None,
        help="Annotation format; by default it is taken from the file suffix.",
    )
    g.add_argument("--columns", nargs="+", metavar="FIELD=COLUMN", default=None, help=annotations.COLUMNS_HELP)
    g.add_argument(
        "--bad-utf8",
        choices=annotations.BAD_UTF8_POLICIES,
        default=annotations.DEFAULT_BAD_UTF8,
        help=annotations.BAD_UTF8_HELP,
    )
    g.add_argument(
        "--timestamp-field",
        choices=annotations.TIMESTAMP_FIELDS,
        default="timestamps",
        help="MAD JSON: which timestamp field gives an AD's [start, end].",
    )
    # The inputs a kind may read (kinds.INPUTS); which kind reads which is in its --kind help.
    g.add_argument("--features", metavar="FILE", help="MAD-layout HDF5 frame features (window shards with feats.npy).")
    g.add_argument("--videos", metavar="DIR", help="Folder of {movie}.mp4/.mkv videos (frames shards).")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="Output folder for the shards, manifest.json and sizes.json.")
    g.add_argument("--kind", choices=sorted(KINDS), default="window", help=f"Sample kind. {kinds_help()}.")
    g.add_argument("--split", default="train", help="Split name: shard file prefix and the samples' split field.")
    g.add_argument("--num-frames", type=int, default=8, help="T, frames per AD clip.")
    g.add_argument("--window", type=int, default=16, help="N, ADs per window (stride N, last window short).")
    g.add_argument("--context", type=int, default=3, help="K, previous ADs kept as text context of a window.")
    g.add_argument("--maxcount", type=int, default=None, help="Samples per shard (default: from --shard-size-mb).")
    g.add_argument("--shard-size-mb", type=float, default=1000.0, help="Target shard size when --maxcount is unset.")
    g.add_argument("--short-side", type=int, default=224, help="Frames: resize the short side to this (0 = keep).")
    g.add_argument("--jpeg-quality", type=int, default=90, help="Frames: JPEG quality.")
    g.add_argument(
        "--max-shift",
        type=int,
        default=0,
        help="Windows: deterministic per-AD frame jitter of 0..max-shift frames (AutoAD-II train uses 4).",
    )
    g.add_argument("--shift-seed", type=int, default=0, help="Windows: seed of the per-AD jitter.")
    g = p.add_argument_group("curation (supplementary F)")
    g.add_argument("--split-file", default=None, help="JSON split lists, e.g. data/assets/mad_split.json.")
    g.add_argument("--split-key", default=None, help="Which list of --split-file to keep, e.g. EVAL or TRAIN.")
    g.add_argument("--include", default=None, help="Keep only these movies: preset:NAME or a file of ids.")
    g.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="Drop these movies: preset:mad-train (3 missing + 3 mismatched MAD-train movies) or a file.",
    )
    g.add_argument(
        "--duration-ref", default=None, help="Reference durations: JSON {movie|ttID: minutes} or IMDb title.basics.tsv."
    )
    g.add_argument(
        "--duration-unit",
        choices=["minutes", "seconds"],
        default="minutes",
        help="Unit of the values in a JSON --duration-ref.",
    )
    g.add_argument(
        "--imdb-map", default=None, help="movie -> IMDb id JSON (e.g. data/assets/mad2imdb.json) for --duration-ref."
    )
    g.add_argument(
        "--duration-tolerance", type=float, default=60.0, help="Flag movies whose |Δ duration| exceeds this (s)."
    )
    g.add_argument(
        "--drop-duration-mismatch", action="store_true", help="Drop flagged movies instead of only reporting."
    )
    g = p.add_argument_group("run")
    g.add_argument("--workers", type=int, default=0, help="Encoding processes (0 = in the main process).")
    g.add_argument(
        "--verify-inputs",
        choices=VERIFY_MODES,
        default="sampled",
        help="How inputs are identified. sampled (default): size + mtime + sha256 of 64 blocks of 64 KiB per file, "
        "with full hashes cached beside the manifest; full: re-read and sha256 every input in full on every run. "
        "Switching modes never rebuilds a shard whose content is unchanged.",
    )
    g.add_argument("--quick-hash", action="store_true", help=argparse.SUPPRESS)  # old flag: sampled is the default
    g.add_argument("--part", default=None, metavar="I/N", help=PART_HELP)
    g.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


def check_build_paths(args: argparse.Namespace) -> None:
    """Every path of ``build``, before anything is read or written (one line naming the flag and the path)."""
    files = [
        ("--annotations", args.annotations),
        ("--features", args.features),
        ("--split-file", args.split_file),
        ("--duration-ref", args.duration_ref),
        ("--imdb-map", args.imdb_map),
        ("--include", args.include),
        *(("--exclude", spec) for spec in args.exclude),
    ]
    for flag, value in files:
        if value and not value.startswith("preset:"):
            check_file(flag, value)
    if args.videos:
        check_dir("--videos", args.videos, "video folder")
    check_output_dir("--out", args.out)


def cmd_build(args: argparse.Namespace) -> int:
    from distinctad.data.curation import curate, load_duration_reference, load_movie_list, load_split
    from distinctad.data.features import FeatureReader
    from distinctad.data.identity import HashCache
    from distinctad.data.parts import assign_parts, assignment_hash, parse_part
    from distinctad.data.shards import BuildOptions, build_shards, source_record
    from distinctad.data.video import find_video

    check_build_paths(args)
    part = parse_part(args.part) if args.part else None
    cache = HashCache(args.out, f"input-hashes.{part.tag}.json" if part else None)

    def source(role: str, path: str) -> dict:
        return source_record(role, path, mode=args.verify_inputs, cache=cache)

    kind = get_kind(args.kind)
    given = {name: getattr(args, name) for name in INPUTS}
    for name in kind.required_inputs:
        if not given[name]:
            raise ValueError(f"--kind {kind.name} needs --{name} {INPUTS[name]}")
    for name, value in given.items():
        if value and name not in kind.inputs:
            reads = ", ".join(f"--{n}" for n in kind.inputs) or "annotations only"
            raise ValueError(f"--{name} is not used by --kind {kind.name} (it reads {reads})")
    columns = annotations.parse_columns(args.columns, "--columns")
    if (args.split_file is None) != (args.split_key is None):
        raise ValueError("--split-file and --split-key go together")
    opts = BuildOptions(
        kind=args.kind,
        split=args.split,
        num_frames=args.num_frames,
        window=args.window,
        context=args.context,
        maxcount=args.maxcount,
        shard_size_mb=args.shard_size_mb,
        short_side=args.short_side,
        jpeg_quality=args.jpeg_quality,
        max_shift=args.max_shift,
        shift_seed=args.shift_seed,
    )
    try:
        anns = annotations.read_annotations(
            args.annotations,
            fmt=args.format,
            columns=columns,
            bad_utf8=args.bad_utf8,
            timestamp_field=args.timestamp_field,
        )
    except annotations.MissingColumnError as e:
        raise ValueError(e.message("--columns")) from None
    by_movie = anns.by_movie()
    sources = [source("annotations", args.annotations)]
    pre_drops: dict[str, tuple[int, int]] = {}
    bad = Counter(i.action for i in anns.issues)
    if bad.get("dropped"):
        pre_drops["bad row (dropped at read)"] = (0, bad["dropped"])
    if bad.get("repaired"):
        logger.info("%d rows had invalid UTF-8 repaired to U+FFFD (kept)", bad["repaired"])

    include = None
    if args.split_file:
        include = load_split(args.split_file, args.split_key)
        sources.append(source("split-file", args.split_file))
    if args.include:
        listed = load_movie_list(args.include)
        include = listed if include is None else [m for m in include if m in set(listed)]
    exclude: list[str] = []
    for spec in args.exclude:
        exclude += load_movie_list(spec)
        if not spec.startswith("preset:"):
            sources.append(source("exclude-list", spec))
    features = FeatureReader(args.features) if args.features else None
    reference = durations = None
    if args.duration_ref:
        reference = load_duration_reference(args.duration_ref, unit=args.duration_unit, imdb_map=args.imdb_map)
        sources.append(source("duration-reference", args.duration_ref))
        durations = {}
        for movie, ads in by_movie.items():
            d = ads[0].movie_duration
            if d is None and features is not None and movie in features:
                d = features.num_frames(movie) / features.fps
            durations[movie] = d
    report = curate(
        sorted(by_movie),
        include=include,
        exclude=exclude,
        durations=durations,
        reference=reference,
        drop_duration_mismatch=args.drop_duration_mismatch,
        tolerance_s=args.duration_tolerance,
    )
    for reason in sorted(set(report.dropped.values())):
        ms = [m for m, r in report.dropped.items() if r == reason]
        pre_drops[reason] = (len(ms), sum(len(by_movie[m]) for m in ms))
    movies, assignment = report.kept, None
    if part is not None:
        # Every part computes the same assignment from the same annotations and curation (parts.assign_parts).
        owner = assign_parts({m: len(by_movie[m]) for m in report.kept}, part.count)
        assignment = assignment_hash(owner, part.count)
        movies = [m for m in report.kept if owner[m] == part.index]
        logger.info("part %d/%d: %d of %d movies", part.index, part.count, len(movies), len(report.kept))
        if part.index:  # curation drops are counted once, by part 0, so merged totals add up
            pre_drops = {}
    if args.features:
        sources.append(source("features", args.features))
    if args.videos:
        for movie in movies:  # a part identifies its own films only
            video = find_video(args.videos, movie)
            if video is not None:
                sources.append(source(f"video:{movie}", video))
    curation = {
        "include": None if include is None else len(include),
        "exclude": sorted(set(exclude)),
        "dropped": report.dropped,
        "duration_flags": {m: {"duration_s": d, "reference_s": r} for m, (d, r) in report.duration_flags.items()},
        "missing_requested": report.missing_requested,
        "annotation_issues": [list(i) for i in anns.issues],
    }
    result = build_shards(
        args.out,
        by_movie,
        opts,
        movies=movies,
        features_path=args.features,
        video_dir=args.videos,
        sources=sources,
        curation=curation,
        pre_drops=pre_drops,
        workers=args.workers,
        progress=not args.no_progress,
        part=part,
        part_assignment=assignment,
        hash_cache=cache,
    )
    cache.save()
    print(result.summary)
    if report.duration_flags:
        print(
            f"duration flags (|Δ| > {args.duration_tolerance:.0f} s): "
            + ", ".join(f"{m} ({d / 60:.1f} vs {r / 60:.1f} min)" for m, (d, r) in report.duration_flags.items())
        )
    totals = result.manifest["totals"]
    print(
        f"built {len(result.built)} shard(s), skipped {len(result.skipped)} complete one(s); "
        f"{totals['samples']} samples, {totals['bytes'] / 1e6:.1f} MB in {result.out_dir}"
        + (f" (part {part.index}/{part.count}; run `distinctad-shards merge` after the last part)" if part else "")
    )
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from distinctad.data.parts import merge_parts

    check_dir("DIR", args.dir, "shard folder")
    m = merge_parts(args.dir)
    t = m["totals"]
    print(
        f"merged {m['parts']['count']} parts: {t['shards']} shards, {t['samples']} samples, {t['ads']} ADs of "
        f"{t['movies']} movies, {t['bytes'] / 1e6:.1f} MB in {args.dir} (manifest.json, sizes.json)"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from distinctad.data.verify import verify_shards

    check_dir("DIR", args.dir, "shard folder")
    report = verify_shards(args.dir, deep=args.deep)
    for name in report.ok:
        logger.debug("ok %s", name)
    for name, problem in report.problems.items():
        print(f"FAIL {name}: {problem}")
    print(f"{len(report.ok)} shard(s) ok, {len(report.problems)} problem(s) in {args.dir}")
    return 0 if report.passed else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from distinctad.data.decode import decode_sample, iter_tar_samples

    path = Path(check_shards("PATH", args.path)[0])
    shown = 0
    for raw in iter_tar_samples(str(path)):
        sample = decode_sample(raw)
        print(f"== {sample['__key__']} ({path.name})")
        for k in sorted(sample):
            if k.startswith("__"):
                continue
            v = sample[k]
            if hasattr(v, "shape"):
                extra = f" sum={int(v.sum())}" if v.dtype == bool else f" mean|x|={float(abs(v).mean()):.4f}"
                print(f"  {k}: {v.dtype} {tuple(v.shape)}{extra}")
            elif hasattr(v, "size") and hasattr(v, "mode"):
                print(f"  {k}: JPEG {v.size[0]}x{v.size[1]} {v.mode}")
            elif k == "json":
                print(f"  json: {json.dumps(v, ensure_ascii=False)[:600]}")
            else:
                print(f"  {k}: {str(v)[:200]!r}")
        shown += 1
        if shown >= args.num:
            break
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from distinctad.data.synthmad import write_synthmad

    if not args.videos and not args.features:
        raise ValueError("pass --videos and/or --features (what SynthMAD should render)")
    check_output_dir("--out", args.out)
    from distinctad.data.synth_audio import espeak_available

    audio = args.videos and not args.no_audio
    if audio and not espeak_available():
        logger.warning("espeak-ng is not installed: the SynthMAD videos get no dialogue soundtrack")
        audio = False
    meta = write_synthmad(
        args.out,
        movies=args.movies,
        ads_per_movie=args.ads_per_movie,
        seed=args.seed,
        videos=args.videos,
        features=args.features,
        feature_dim=args.feature_dim,
        video_size=args.video_size,
        eval_movies=args.eval_movies,
        audio=audio,
    )
    print(
        f"SynthMAD: {len(meta['movies'])} movies, {meta['ads']} ADs in {args.out} "
        f"({', '.join(k for k in ('videos', 'dialogue', 'features') if k in meta)})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distinctad-shards", description="DistinctAD shard builder.")
    parser.add_argument("--log-level", default="INFO", help="Logging level (DEBUG, INFO, WARNING).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build(sub)
    p = sub.add_parser("merge", help="Make the parts of a --part I/N build one shard set (manifest.json + sizes.json).")
    p.add_argument("dir", help="Folder holding every part's shards and manifest.pIIIofNNN.json.")
    p = sub.add_parser("verify", help="Re-hash shards against manifest.json; non-zero exit on any problem.")
    p.add_argument("dir", help="Shard folder holding manifest.json.")
    p.add_argument("--deep", action="store_true", help="Also read every tar member list.")
    p = sub.add_parser("inspect", help="Print a few decoded samples of a shard (or the first shard of a folder).")
    p.add_argument("path", help="A .tar shard or a shard folder.")
    p.add_argument("-n", "--num", type=int, default=3, help="How many samples to print.")
    p = sub.add_parser("synth", help="Generate a SynthMAD dataset (videos and/or features + MAD JSON + splits).")
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--movies", type=int, default=4, help="Number of movies.")
    p.add_argument("--ads-per-movie", type=int, default=48, help="ADs per movie.")
    p.add_argument("--seed", type=int, default=0, help="Seed; the output is a deterministic function of it.")
    p.add_argument("--videos", action="store_true", help="Render tiny mp4 videos (videos/{movie}.mp4).")
    p.add_argument("--features", action="store_true", help="Write synthetic CLIP features (features.h5).")
    p.add_argument("--feature-dim", type=int, default=512, help="Width D of the synthetic features.")
    p.add_argument("--video-size", type=int, default=64, help="Video frame side in pixels.")
    p.add_argument(
        "--no-audio",
        action="store_true",
        help="Videos without the dialogue soundtrack (default: characters' lines spoken by espeak-ng between the AD "
        "clips, their times in dialogue.json).",
    )
    p.add_argument("--eval-movies", type=int, default=1, help="How many movies go to the EVAL split.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``distinctad-shards``; returns the exit code (verify: 1 when a shard is bad)."""
    args = build_parser().parse_args(argv)
    init_logger(args.log_level.upper())
    set_threads()
    commands = {
        "build": cmd_build,
        "merge": cmd_merge,
        "verify": cmd_verify,
        "inspect": cmd_inspect,
        "synth": cmd_synth,
    }
    try:
        code = commands[args.command](args)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    if code:
        raise SystemExit(code)
    return code


if __name__ == "__main__":
    main(sys.argv[1:])
