"""Speed of ``distinctad-describe`` per phase: seconds of processing per minute of film, and the ratio to real time.

    python benchmarks/describe_speed.py                      # 10-min 640x360 film, ViT-B/32 + GPT-2 124M shapes
    python benchmarks/describe_speed.py --minutes 3 --device cuda

A film is generated once (``--film``): 640x360 at 25 fps, a shot cut every 4-9 s, a moving square, 48 kHz stereo
ambience with espeak-ng lines every few seconds. The phases run the describe pipeline's own functions: audio decode
(PyAV, resampled to 16 kHz), VAD (silero-vad, decode included), shots (PySceneDetect), frames + CLIP encode
(ViT-B/32, random weights), generation + fit (the Stage-II captioner with GPT-2 124M blocks, random weights, beam 5,
the model's own previous ADs as context), TTS + ducking + mux (espeak-ng, PyAV). Random weights never emit <eos>, so
every AD runs to the describe pipeline's cap: ``--max-new-tokens`` (67) lowered per window to what its longest slot
can speak at 160 words/min (``content.token_cap``): generation is timed at its worst case. The LM head has the
BPE tokenizer's vocabulary (a few hundred), not GPT-2's 50257: that part of each step is not timed.

Goal (issue 18): a 2-hour film in under 30 minutes on 2 CPU cores, i.e. <= 0.25x real time. The machine's load
(``uptime``) is printed beside the figures: under load they are pessimistic.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="Film length in minutes.")
    p.add_argument("--film", default="work/bench_describe", help="Folder of the generated film (reused).")
    p.add_argument("--device", default="cpu", help="Torch device of CLIP and the captioner.")
    p.add_argument("--num-beams", type=int, default=5, help="Beam width (our default 5).")
    p.add_argument("--max-new-tokens", type=int, default=67, help="Longest AD in tokens (our default 67).")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="As distinctad-describe --precision."
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the goal is for 2 cores).")
    return p.parse_args(argv)


def make_film(path: Path, minutes: float, fps: int = 25, w: int = 640, h: int = 360, rate: int = 48000) -> None:
    """The benchmark film (atomic; skipped when it exists)."""
    import av

    from distinctad.common import atomic_path
    from distinctad.data.synth_audio import LINES, audible_span, speak

    if path.is_file():
        return
    rng = np.random.default_rng(0)
    seconds = minutes * 60
    cuts = np.cumsum(rng.uniform(4, 9, int(seconds / 4) + 2))
    colours = rng.integers(30, 230, (len(cuts) + 1, 3))
    # soundtrack: ambience + a line every 2.5-6 s of silence
    n = int(seconds * rate)
    audio = (0.05 * np.sin(2 * np.pi * 110 * np.arange(n) / rate)).astype(np.float32)
    t = 1.0
    while t < seconds - 3:
        pcm = speak(LINES[int(rng.integers(len(LINES)))], 175, rate=rate)
        a, b = audible_span(pcm, rate)
        pcm = pcm[int(a * rate) : int(b * rate)] * 0.5 / max(np.abs(pcm).max(), 1e-6)
        lo = int(t * rate)
        audio[lo : lo + len(pcm)] += pcm[: n - lo]
        t += (b - a) + float(rng.uniform(2.5, 6.0))
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.options = {"preset": "ultrafast", "crf": "23"}
            aus = out.add_stream("aac", rate=rate, layout="stereo")
            frames = int(seconds * fps)
            sent = 0
            for f in range(frames):
                ft = f / fps
                shot = int(np.searchsorted(cuts, ft))
                img = np.empty((h, w, 3), np.uint8)
                img[:] = colours[shot]
                x = int((ft * 60) % (w - 40))
                img[150:190, x : x + 40] = 255 - colours[shot]
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
                upto = min(int((f + 1) / fps * rate), n)
                if upto - sent >= rate or f == frames - 1:
                    block = np.repeat(audio[None, sent:upto], 2, axis=0)
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="stereo")
                    frame.sample_rate, frame.pts, frame.time_base = rate, sent, Fraction(1, rate)
                    for p in aus.encode(frame):
                        out.mux(p)
                    sent = upto
            for s in (vs, aus):
                for p in s.encode():
                    out.mux(p)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from distinctad.train.models.captioner import CaptionerConfig, DistinctADCaptioner
    from distinctad.train.models.captioner_config import GenerationArgs
    from distinctad.train.models.llm import random_gpt2_124m, train_bpe_tokenizer
    from distinctad.train.tools.describe.content import (
        encode_slots,
        generate_window,
        load_vision_tower,
        resolve_precision,
        window_batch,
    )
    from distinctad.train.tools.describe.fit import estimate_seconds
    from distinctad.train.tools.describe.media import audio_blocks, probe
    from distinctad.train.tools.describe.narrate import mux_described
    from distinctad.train.tools.describe.slots import detect_shots, detect_speech, make_slots

    torch.set_num_threads(args.threads)
    film = Path(args.film) / f"film_{args.minutes:g}min_640x360.mp4"
    t0 = time.perf_counter()
    make_film(film, args.minutes)
    print(f"film: {film} (made/reused in {time.perf_counter() - t0:.1f} s)")
    info = probe(film)
    minutes = info.duration / 60
    times: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        times[name] = time.perf_counter() - t
        return out

    timed("decode audio (16 kHz)", lambda: sum(len(b) for b in audio_blocks(film)))
    speech = timed("decode + VAD", detect_speech, film, info.duration, progress=False)
    cuts = timed("shots", detect_shots, film, info.fps, progress=False)
    slots = make_slots(speech, cuts, info.duration)
    dtype = resolve_precision(args.precision, args.device)
    clip, eval_tf, _ = load_vision_tower("", "ViT-B-32", 0, args.device)
    clip = clip.to(dtype)
    feats = timed("frames + CLIP encode", encode_slots, film, slots, clip, eval_tf, progress=False)

    sentences = [
        f"{n} {v} the {o}." for n in ("Ana", "Ben", "Cleo") for v in ("opens", "drops") for o in ("door", "box")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_bpe_tokenizer(sentences * 20, 500, tmp)
    cfg = CaptionerConfig(llm="tiny-gpt2", feature_dim=512, d_model=768, alpha_path=True, beta_path=True)
    llm = random_gpt2_124m(tok)
    model = DistinctADCaptioner(cfg, tok, llm=llm).to(args.device, dtype).eval()
    gen = GenerationArgs(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)

    def generate():
        history, cues = [], []
        for lo in range(0, len(slots), 16):
            group = slots[lo : lo + 16]
            batch = window_batch(film.stem, feats[lo : lo + len(group)], lo, history[-cfg.context_ads :])
            _, fitted = generate_window(model, tok, batch, gen, group, estimate_seconds, 160.0, 3)
            for i, (f, s) in enumerate(zip(fitted, group)):
                history.append(f.text)
                cues.append({"index": lo + i, "start": s.start, "end": min(s.end, s.start + f.seconds), "text": f.text})
        return cues

    cues = timed("generate + fit", generate)
    with tempfile.TemporaryDirectory() as tmp:
        timed(
            "TTS + mix + mux",
            mux_described,
            film,
            Path(tmp) / "x.mkv",
            cues,
            wpm=160,
            duration=info.duration,
            progress=False,
        )
    import resource

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    total = sum(v for k, v in times.items() if k != "decode audio (16 kHz)")  # VAD's time includes its decode
    print(f"\n{info.duration / 60:.1f} min film, {len(speech)} speech segments, {len(cuts)} cuts, {len(slots)} slots")
    print(f"{'phase':<24} {'s':>8} {'s / film min':>13} {'x real time':>12}")
    for k, v in times.items():
        print(f"{k:<24} {v:8.1f} {v / minutes:13.2f} {v / info.duration:12.3f}")
    print(f"{'total':<24} {total:8.1f} {total / minutes:13.2f} {total / info.duration:12.3f}   (goal <= 0.25)")
    print(
        f"device {args.device}, {dtype}, torch threads {args.threads}, beams {args.num_beams}, max_new_tokens "
        f"{args.max_new_tokens} (capped per window by what its longest slot can speak), peak RSS {peak_mb:.0f} MB\n"
        f"uptime: {load}"
    )
    result = {
        "minutes": minutes,
        "times": times,
        "ratio": total / info.duration,
        "peak_rss_mb": peak_mb,
        "uptime": load,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
