"""SynthMAD dialogue: characters' lines spoken with espeak-ng between the AD clips, as in real films.

A film's soundtrack is a quiet ambience tone (so ducking under narration can be measured) plus one spoken line in
each silence between two AD clips that is long enough to hold one; the AD clips themselves stay free of speech,
so the AD slots of ``distinctad-describe`` are exactly the silences, as in a described film. Each line's *truth*
times are where its synthesised waveform is audible (espeak-ng's own leading/trailing silence trimmed), written to
``dialogue.json`` beside the annotations.

espeak-ng (apt ``espeak-ng``) is an offline formant synthesiser; renders are memoised per (text, speed), so a
SynthMAD set costs a few dozen espeak calls whatever its size.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave
from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_RATE = 16000
"""Hz of the SynthMAD soundtrack (silero-vad's native rate)."""
AMBIENCE_HZ, AMBIENCE_AMP = 110.0, 0.05
"""The ambience tone under the whole film (our default): quiet, never speech to a VAD, but measurable."""
SPEECH_PEAK = 0.5
"""Peak amplitude of a spoken line."""
GAP_PAD = 0.15
"""Seconds kept silent at each end of a gap around a line (our default), so lines never touch an AD clip."""
SPEEDS = (175, 215, 260)
"""espeak-ng words per minute tried, slowest first, until a line fits its gap (175 is espeak-ng's default)."""

LINES = [
    "Wait.",
    "Look.",
    "Over here.",
    "Come on.",
    "Not now.",
    "Where is it?",
    "I saw that.",
    "Let's go home.",
    "Give me that.",
    "What was that noise?",
    "I told you already.",
    "We should leave now.",
]


class EspeakMissing(RuntimeError):
    """espeak-ng is not installed."""


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=512)
def speak(text: str, speed: int = 175, voice: str = "en", rate: int = SAMPLE_RATE) -> np.ndarray:
    """``text`` spoken by espeak-ng: float32 mono samples at ``rate`` Hz, in [-1, 1] (memoised).

    Raises:
        EspeakMissing: espeak-ng is not on PATH.
        RuntimeError: espeak-ng failed (its stderr's last line).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakMissing("espeak-ng is not installed (apt-get install espeak-ng)")
    # the text goes through stdin: never parsed as an option, and control characters (a random model writes
    # anything) are spaces
    clean = "".join(c if c.isprintable() else " " for c in text).strip() or "."
    proc = subprocess.run(
        [exe, "-v", voice, "-s", str(speed), "--stdout", "--stdin"], input=clean.encode("utf-8"), capture_output=True
    )
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()[-200:]}")
    with wave.open(io.BytesIO(proc.stdout)) as w:
        src_rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    if src_rate != rate and len(pcm):
        n = int(round(len(pcm) * rate / src_rate))
        pcm = np.interp(np.arange(n) * (src_rate / rate), np.arange(len(pcm)), pcm).astype(np.float32)
    return pcm


def audible_span(samples: np.ndarray, rate: int = SAMPLE_RATE, rel: float = 0.02) -> tuple[float, float]:
    """(first, last) second where |samples| exceeds ``rel`` of its peak; (0, 0) for silence."""
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    if peak == 0:
        return 0.0, 0.0
    loud = np.flatnonzero(np.abs(samples) > rel * peak)
    return float(loud[0]) / rate, float(loud[-1] + 1) / rate


@dataclass(frozen=True)
class Line:
    """One spoken line; ``start``/``end`` are the audible speech in seconds of the film."""

    speaker: str
    text: str
    speed: int
    start: float
    end: float


def plan_dialogue(clips, duration: float, cast: list[str], rng: np.random.Generator) -> list[Line]:
    """One line in each silence between AD clips (and before the first) that can hold one, centred in it.

    A line fits when its audible length plus :data:`GAP_PAD` at both ends fits the gap; shorter lines and faster
    speeds are tried before a gap is left silent (then its two neighbouring clips form one longer silence).
    """
    gaps = [(0.0, clips[0].start)] + [(a.end, b.start) for a, b in zip(clips, clips[1:])]
    gaps.append((clips[-1].end, duration))
    lines: list[Line] = []
    for g0, g1 in gaps:
        room = g1 - g0 - 2 * GAP_PAD
        order = list(rng.permutation(len(LINES)))
        speaker = cast[int(rng.integers(len(cast)))]
        chosen = None
        for speed in SPEEDS:
            for i in order:
                a, b = audible_span(speak(LINES[i], speed))
                if 0 < b - a <= room:
                    chosen = (LINES[i], speed, b - a)
                    break
            if chosen:
                break
        if chosen is None:
            continue
        text, speed, length = chosen
        start = round(g0 + (g1 - g0 - length) / 2, 3)
        lines.append(Line(speaker, text, speed, start, round(start + length, 3)))
    return lines


def render_soundtrack(lines: list[Line], duration: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """The film's soundtrack, float32 mono (ceil(duration·rate),): ambience tone + the lines at their times."""
    n = int(np.ceil(duration * rate))
    t = np.arange(n, dtype=np.float64) / rate
    audio = (AMBIENCE_AMP * np.sin(2 * np.pi * AMBIENCE_HZ * t)).astype(np.float32)
    for line in lines:
        pcm = speak(line.text, line.speed, rate=rate)
        a, _ = audible_span(pcm, rate)
        pcm = pcm / max(float(np.abs(pcm).max()), 1e-6) * SPEECH_PEAK
        at = int(round((line.start - a) * rate))  # the audible part starts exactly at line.start
        lo, hi = max(at, 0), min(at + len(pcm), n)
        audio[lo:hi] += pcm[lo - at : hi - at]
    return np.clip(audio, -1.0, 1.0)


def dialogue_record(lines: list[Line]) -> list[dict]:
    """``dialogue.json`` rows: speaker, text, speed, start, end (seconds of audible speech)."""
    return [asdict(line) for line in lines]
