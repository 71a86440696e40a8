"""The ``distinctad-describe`` pipeline: film → speech → shots → slots → features → ADs → fit → files (→ narration).

Every phase shows a progress bar, streams the film (audio block by block, frames slot by slot, packets one by one)
and stores its result in the phase cache (:mod:`.cache`), so a re-run, or a run killed during generation and started
again, redoes only what is missing and writes identical files.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.tools.describe import cache as C
from distinctad.train.tools.describe.content import DescribeError
from distinctad.train.tools.describe.fit import MIN_WORDS, WPM, estimate_seconds
from distinctad.train.tools.describe.media import MediaError, Probe, file_digest, probe
from distinctad.train.tools.describe.slots import MARGIN_S, MAX_SLOT_S, MIN_GAP_S, Slot, make_slots

logger = logging.getLogger("distinctad.train.tools.describe")

MIN_FILM_S = 5.0
"""Shortest input described, seconds (our default): below it there is no room for speech and an AD both."""


@dataclass
class DescribeOptions:
    """Everything a description depends on (the cache keys are built from these)."""

    movie: str
    stage2: str
    out: str
    clip_ad: str = ""
    clip_model: str = "ViT-B-32"
    seed: int = 0
    min_gap: float = MIN_GAP_S
    margin: float = MARGIN_S
    max_slot: float = MAX_SLOT_S
    shot_threshold: float = 27.0
    num_frames: int = 8
    window: int = 16
    wpm: float = WPM
    min_words: int = MIN_WORDS
    generation: GenerationArgs = field(default_factory=lambda: GenerationArgs(batch_size=1))  # beams = candidates
    precision: str = "auto"  # content.resolve_precision: bf16 where the hardware is fast at it, else fp32
    narrate: bool = False
    duck: float = 0.25
    min_duration: float = MIN_FILM_S
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)


def _timed(opts: DescribeOptions, phase: str, t0: float) -> None:
    opts.timings[phase] = opts.timings.get(phase, 0.0) + time.perf_counter() - t0


def check_inputs(opts: DescribeOptions) -> Probe:
    """Every input checked before anything is written: one :class:`DescribeError`/:class:`MediaError` line."""
    import os
    import tempfile

    from distinctad.data.paths import PathProblem, check_dir, check_file, check_output_dir, check_weights

    try:
        check_file("MOVIE", opts.movie, "video file")
        check_dir("--stage2", opts.stage2, "Stage-II run or checkpoint folder")
        check_weights("--clip-ad", opts.clip_ad)
        out = check_output_dir("--out", opts.out)
    except PathProblem as e:
        raise DescribeError(str(e)) from None
    # writable? probe with a temporary file in the first existing folder on the way (nothing is left behind)
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=".describe-probe.", dir=probe_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise DescribeError(f"--out: {opts.out}: not writable ({e.strerror})") from None
    from distinctad.data.synth_audio import espeak_available

    if opts.narrate and not espeak_available():
        raise DescribeError("--narrate needs espeak-ng, which is not installed (apt-get install espeak-ng)")
    if opts.min_gap <= 2 * opts.margin:
        raise DescribeError(f"--min-gap ({opts.min_gap}) must exceed twice --margin ({opts.margin})")
    info = probe(opts.movie)
    if info.duration < opts.min_duration:
        raise MediaError(
            f"{opts.movie}: {info.duration:.1f} s long; a film to describe needs at least {opts.min_duration:g} s "
            "(--min-duration)"
        )
    return info


def describe(opts: DescribeOptions) -> dict:
    """Describe ``opts.movie`` into ``opts.out``; returns a summary (paths, counts, ADs that do not fit).

    Raises:
        DescribeError, MediaError: bad input, one line; nothing is written before the inputs are checked.
    """
    from distinctad.train.core.checkpoint import CheckpointError, find_checkpoint
    from distinctad.train.core.config import ConfigError, load_config
    from distinctad.train.stage2.config import Stage2Job

    info = check_inputs(opts)
    movie = Path(opts.movie)
    movie_id = movie.stem
    try:  # the Stage-II config alone (cheap): its feature width is checked against the CLIP tower below
        root, tag = find_checkpoint(opts.stage2)
        s2cfg = load_config(Stage2Job, root / tag / "config.yaml")
    except (CheckpointError, ConfigError) as e:
        raise DescribeError(f"--stage2: {e}") from None
    if info.vfr:
        print(f"notice: {movie} has a variable frame rate: frames are taken by their timestamps")
    from distinctad.train.tools.describe.content import load_vision_tower, resolve_precision

    dtype = resolve_precision(opts.precision)
    t0 = time.perf_counter()
    clip, eval_tf, source = load_vision_tower(opts.clip_ad, opts.clip_model, opts.seed)
    clip = clip.to(dtype)
    width = int(clip.visual.output_dim)
    if width != s2cfg.model.feature_dim:
        raise DescribeError(
            f"--stage2 {opts.stage2} was trained on {s2cfg.model.feature_dim}-d features but the CLIP tower "
            f"({source.model}{', ' + source.pretrained if source.pretrained else ', random weights'}) gives {width}-d"
        )
    _timed(opts, "load models", t0)

    store = C.PhaseCache(opts.out)
    t0 = time.perf_counter()
    digest = file_digest(movie)
    _timed(opts, "hash", t0)

    # 1. speech
    from distinctad.train.tools.describe.slots import detect_shots, detect_speech

    t0 = time.perf_counter()
    k_speech = C.key("speech", digest)
    if not info.has_audio:
        speech = []
        print(f"notice: {movie} has no audio stream: the whole film is one gap, split at shot cuts")
    else:
        speech = store.get_json("speech", k_speech)
        if speech is None:
            speech = store.put_json("speech", k_speech, detect_speech(movie, info.duration, progress=opts.progress))
    _timed(opts, "decode + VAD", t0)
    t0 = time.perf_counter()
    k_shots = C.key("shots", digest, opts.shot_threshold)
    cuts = store.get_json("shots", k_shots)
    if cuts is None:
        cuts = store.put_json(
            "shots",
            k_shots,
            detect_shots(movie, info.fps, threshold=opts.shot_threshold, progress=opts.progress),
        )
    _timed(opts, "shots", t0)
    slots = make_slots(speech, cuts, info.duration, min_gap=opts.min_gap, margin=opts.margin, max_slot=opts.max_slot)
    if not slots:
        raise DescribeError(f"{movie}: no silence of at least --min-gap {opts.min_gap:g} s: nowhere to put an AD")

    # 2. features
    T = opts.num_frames
    t0 = time.perf_counter()
    k_feats = C.key("feats", digest, [dataclasses.astuple(s) for s in slots], T, source.weights_sha256, str(dtype))
    feats = store.get_npy("feats", k_feats)
    if feats is None:
        from distinctad.train.tools.describe.content import encode_slots

        feats = store.put_npy(
            "feats", k_feats, encode_slots(movie, slots, clip, eval_tf, num_frames=T, progress=opts.progress)
        )
    del clip
    _timed(opts, "frames + CLIP", t0)

    # 3. generation, window by window, with the model's own previous ADs as context; 4. fit
    cues, records = _generate(opts, movie_id, slots, feats, store, k_feats, dtype)

    # 5. outputs
    t0 = time.perf_counter()
    paths = _write_outputs(opts, info, movie, movie_id, cues)
    _timed(opts, "outputs", t0)
    if opts.narrate:
        from distinctad.common import atomic_path
        from distinctad.train.tools.describe.narrate import mux_described

        t0 = time.perf_counter()
        mkv = Path(opts.out) / f"{movie_id}.ad.mkv"
        with atomic_path(mkv) as tmp:
            mux_described(
                movie, tmp, cues, wpm=opts.wpm, duration=info.duration, duck=opts.duck, progress=opts.progress
            )
        paths["mkv"] = str(mkv)
        _timed(opts, "TTS + mix + mux", t0)
    too_long = [c for c in cues if not c["fits"]]
    return {
        "movie": str(movie),
        "duration": info.duration,
        "speech": speech,
        "cuts": cuts,
        "slots": [dataclasses.asdict(s) for s in slots],
        "cues": cues,
        "windows": records,
        "too_long": too_long,
        "paths": paths,
        "timings": dict(opts.timings),
    }


def _generate(opts, movie_id, slots, feats, store, k_feats, dtype):
    from tqdm import tqdm

    from distinctad.train.tools.describe.content import generate_window, load_captioner, window_batch

    gen = dataclasses.replace(opts.generation, batch_size=1)
    measure = _measure(opts)
    model = tokenizer = None
    k_model = None
    history: list[str] = []
    cues, records = [], []
    starts = list(range(0, len(slots), opts.window))
    bar = tqdm(total=len(slots), unit="slot", desc="generate (Stage-II)", disable=not opts.progress, leave=False)
    t_gen = time.perf_counter()
    for w, lo in enumerate(starts):
        group = slots[lo : lo + opts.window]
        if model is None:
            t0 = time.perf_counter()
            model, tokenizer, cfg, weights = load_captioner(opts.stage2)
            model = model.to(dtype)
            k_model = C.key(
                "model",
                weights,
                dataclasses.asdict(gen),
                opts.window,
                opts.wpm,
                opts.min_words,
                opts.narrate,
                str(dtype),
            )
            _timed(opts, "load models", t0)
            t_gen += time.perf_counter() - t0
        K = model.cfg.context_ads
        context = history[-K:] if K > 0 else []
        # the window's key chains the context it was given: a re-run reuses it only if everything before matches
        k_win = C.key("window", k_feats, k_model, w, context)
        rec = store.get_json("window", k_win)
        if rec is None:
            # no ground truth exists: blank sentences, and the model's own last K ADs as the text context
            batch = window_batch(movie_id, feats[lo : lo + len(group)], lo, context)
            cands, fitted = generate_window(model, tokenizer, batch, gen, group, measure, opts.wpm, opts.min_words)
            rec = store.put_json(
                "window",
                k_win,
                {
                    "window": w,
                    "first_slot": lo,
                    "context": context,
                    "candidates": cands,
                    "ads": [dataclasses.asdict(f) for f in fitted],
                },
            )
        records.append(rec)
        history.extend(a["text"] for a in rec["ads"])
        for i, (slot, ad) in enumerate(zip(group, rec["ads"])):
            cues.append(_cue(lo + i, slot, ad))
        bar.update(len(group))
    bar.close()
    _timed(opts, "generate + fit", t_gen)
    return cues, records


def _cue(index: int, slot: Slot, ad: dict) -> dict:
    end = min(slot.end, slot.start + ad["seconds"])
    return {
        "index": index,
        "start": round(slot.start, 3),
        "end": round(max(end, slot.start + 0.001), 3),
        "slot_start": slot.start,
        "slot_end": slot.end,
        "text": ad["text"],
        "seconds": round(ad["seconds"], 3),
        "fits": ad["fits"],
        "how": ad["how"],
    }


def _measure(opts):
    if not opts.narrate:
        return lambda text: estimate_seconds(text, opts.wpm)
    from distinctad.train.tools.describe.narrate import tts

    rate = 16000

    def measured(text: str) -> float:  # the espeak-ng rendering's audible length at the same rate
        return len(tts(text, opts.wpm, rate)) / rate

    return measured


def _write_outputs(opts, info: Probe, movie: Path, movie_id: str, cues: list[dict]) -> dict:
    from distinctad.train.tools.describe.outputs import relative_url, write_jsonl, write_preview, write_subtitles

    out = Path(opts.out)
    vtt, srt, jsonl = (out / f"{movie_id}.ad.{ext}" for ext in ("vtt", "srt", "jsonl"))
    page = out / "index.html"
    write_subtitles(cues, vtt, srt)
    write_jsonl(cues, movie_id, jsonl)
    too_long = sum(not c["fits"] for c in cues)
    summary = (
        f"{len(cues)} audio descriptions for {info.duration:.1f} s of film"
        f"{f'; {too_long} do not fit their slot (red)' if too_long else ''}. Spoken at {opts.wpm:g} words/min."
    )
    video = movie if not opts.narrate else out / f"{movie_id}.ad.mkv"
    write_preview(cues, movie_id, relative_url(video, out), vtt.name, summary, page)
    return {"vtt": str(vtt), "srt": str(srt), "jsonl": str(jsonl), "html": str(page)}


def summary_lines(result: dict) -> list[str]:
    """What the command prints at the end."""
    lines = [
        f"described {result['movie']}: {len(result['cues'])} ADs in {len(result['slots'])} slots "
        f"({len(result['speech'])} speech segments, {len(result['cuts'])} shot cuts)"
    ]
    if result["too_long"]:
        lines.append(f"{len(result['too_long'])} AD(s) do not fit their slot even shortened:")
        for c in result["too_long"]:
            lines.append(f"  #{c['index']} [{c['start']:.2f}-{c['slot_end']:.2f} s] {c['seconds']:.2f} s: {c['text']}")
    for name in ("vtt", "srt", "jsonl", "mkv", "html"):
        if name in result["paths"]:
            lines.append(f"  {name:<5} {result['paths'][name]}")
    return lines
