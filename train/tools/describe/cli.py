"""``distinctad-describe``: from a movie file to a timed (and optionally narrated) audio-description track.

    distinctad-describe MOVIE.mp4 --stage2 runs/stage2-C3 --clip-ad runs/stage1 --out described/
    distinctad-describe MOVIE.mp4 --stage2 runs/stage2-C3 --clip-ad runs/stage1 --out described/ --narrate

Speech is found with silero-vad; AD slots are the silences of at least --min-gap seconds, split at PySceneDetect shot
cuts; T frames per slot go through the Stage-I CLIP-AD vision tower (as distinctad-extract); the Stage-II captioner
writes one AD per slot, window by window, with its own previous ADs as text context (there is no ground truth); each
AD is fitted to its slot's duration. Writes, atomically, into --out:

    MOVIE.ad.vtt / MOVIE.ad.srt   cues for <track kind="descriptions">
    MOVIE.ad.jsonl                predictions (movie, start, end, text) that distinctad-eval scores by time
    MOVIE.ad.mkv                  (--narrate) the film + a second audio stream: espeak-ng narration, film ducked
    index.html                    preview: the film with the track, and the list of ADs

A re-run reuses every finished phase (cache in --out/.describe-cache, keyed by the film's bytes and the options).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.tools.describe.fit import MIN_WORDS, WPM
from distinctad.train.tools.describe.slots import MARGIN_S, MAX_SLOT_S, MIN_GAP_S

GENERATION = GenerationArgs()  # decoding defaults live in GenerationArgs only


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="distinctad-describe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("movie", metavar="MOVIE", help="The film: any file PyAV (FFmpeg) reads with a video stream.")
    p.add_argument(
        "--stage2", required=True, help="A Stage-II run directory (its latest checkpoint) or one checkpoint folder."
    )
    p.add_argument(
        "--clip-ad",
        default="",
        help="The Stage-I export (a Stage-I run directory means its clip_ad/), or vanilla open_clip weights (file, "
        "folder or cached tag). Empty: random weights (tests and benchmarks only; a warning says so).",
    )
    p.add_argument(
        "--clip-model",
        default="ViT-B-32",
        help="open_clip architecture of --clip-ad (a Stage-I export records its own). Default: %(default)s.",
    )
    p.add_argument("--out", required=True, help="Output folder (created).")
    p.add_argument(
        "--min-gap",
        type=float,
        default=MIN_GAP_S,
        help="Shortest silence between speech that takes an AD, seconds (our default %(default)s: about four words "
        "at 160 words/min).",
    )
    p.add_argument("--margin", type=float, default=MARGIN_S, help="Seconds kept clear of speech (default %(default)s).")
    p.add_argument(
        "--max-slot",
        type=float,
        default=MAX_SLOT_S,
        help="Longest slot in seconds; longer silences inside one shot are split evenly (default %(default)s).",
    )
    p.add_argument(
        "--shot-threshold",
        type=float,
        default=27.0,
        help="PySceneDetect ContentDetector threshold (its default %(default)s).",
    )
    p.add_argument("--frames", type=int, default=8, help="T frames per slot (DESIGN §3.1 default %(default)s).")
    p.add_argument("--window", type=int, default=16, help="N slots per Stage-II window (default %(default)s).")
    p.add_argument(
        "--wpm",
        type=float,
        default=WPM,
        help="Speaking rate, words per minute, for fitting and narration (default %(default)s).",
    )
    p.add_argument(
        "--min-words", type=int, default=MIN_WORDS, help="Shortening never goes below this (default %(default)s)."
    )
    p.add_argument(
        "--num-beams",
        type=int,
        default=GENERATION.num_beams,
        help="Beam width; every beam is a candidate when fitting an AD to its slot (default %(default)s).",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=GENERATION.max_new_tokens,
        help="Longest AD in tokens (default %(default)s).",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="Inference dtype of the CLIP tower and the captioner: auto = bf16 where the hardware is fast at it (a "
        "CPU with AMX/AVX512-BF16, a bf16 GPU; ~2.5x faster) and fp32 elsewhere (default %(default)s).",
    )
    p.add_argument("--narrate", action="store_true", help="Also speak the ADs (espeak-ng) into MOVIE.ad.mkv.")
    p.add_argument(
        "--duck", type=float, default=0.25, help="Film-audio gain under narration (default %(default)s, about -12 dB)."
    )
    p.add_argument(
        "--min-duration", type=float, default=5.0, help="Shortest input accepted, seconds (default %(default)s)."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the random CLIP weights when --clip-ad is empty.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
    args = p.parse_args(argv)
    bad = [
        name
        for name, ok in (
            ("--min-gap > 0", args.min_gap > 0),
            ("--margin >= 0", args.margin >= 0),
            ("--max-slot >= --min-gap", args.max_slot >= args.min_gap),
            ("--frames >= 1", args.frames >= 1),
            ("--window >= 1", args.window >= 1),
            ("--wpm > 0", args.wpm > 0),
            ("--num-beams >= 1", args.num_beams >= 1),
            ("0 <= --duck <= 1", 0 <= args.duck <= 1),
        )
        if not ok
    ]
    if bad:
        p.exit(2, f"error: need {', '.join(bad)}\n")
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``distinctad-describe`` (a console script's return value is its exit status: returns None)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from distinctad.common import init_logger
    from distinctad.train.models.clip_ad import WeightsNotFoundError
    from distinctad.train.tools.describe.pipeline import (
        DescribeError,
        DescribeOptions,
        MediaError,
        describe,
        summary_lines,
    )

    init_logger()
    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)
    opts = DescribeOptions(
        movie=args.movie,
        stage2=args.stage2,
        out=args.out,
        clip_ad=args.clip_ad,
        clip_model=args.clip_model,
        seed=args.seed,
        min_gap=args.min_gap,
        margin=args.margin,
        max_slot=args.max_slot,
        shot_threshold=args.shot_threshold,
        num_frames=args.frames,
        window=args.window,
        wpm=args.wpm,
        min_words=args.min_words,
        generation=GenerationArgs(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, batch_size=1),
        precision=args.precision,
        narrate=args.narrate,
        duck=args.duck,
        min_duration=args.min_duration,
        progress=not args.no_progress,
    )
    try:
        result = describe(opts)
    except (DescribeError, MediaError, WeightsNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:  # a disk filling up or a folder made read-only mid-run: outputs are atomic, none is partial
        raise SystemExit(f"error: {e.filename or args.out}: {e.strerror or e}") from None
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main()
