"""Where ADs can go: speech (silero-vad), shot cuts (PySceneDetect), and the slots between speech.

A *slot* is a silence of at least ``min_gap`` seconds between two speech segments (or the film's start/end), shrunk
by ``margin`` at both ends; a slot spanning shot cuts is split at them (pieces shorter than ``min_gap`` join their
neighbour), and a piece longer than ``max_slot`` is split evenly, so each AD describes one shot's worth of picture.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from distinctad.train.tools.describe.media import VAD_RATE, audio_blocks

logger = logging.getLogger(__name__)

MIN_GAP_S = 1.5
"""Shortest silence that takes an AD, seconds: about four words at 160 words/min, the shortest description AD
practice places (our default; e.g. the UK's ITC guidance asks for descriptions only where they fit between
dialogue)."""
MARGIN_S = 0.2
"""Seconds left silent between speech and an AD at each end (our default)."""
MAX_SLOT_S = 12.0
"""Longest slot, seconds; longer silences inside one shot are split evenly (our default)."""
MIN_SPEECH_S = 0.25
"""Speech segments shorter than this are dropped: silero-vad's ``min_speech_duration_ms`` default (250 ms)."""
VAD_WINDOW = 512
"""Samples per silero-vad call at 16 kHz (the model's fixed window)."""


@dataclass(frozen=True)
class Slot:
    """A span (seconds) where an AD can be spoken; ``shot`` is the index of the shot it starts in."""

    start: float
    end: float
    shot: int = 0

    @property
    def duration(self) -> float:
        return self.end - self.start


def detect_speech(
    path: str | os.PathLike,
    duration: float,
    *,
    threshold: float = 0.5,
    min_silence_ms: int = 100,
    speech_pad_ms: int = 30,
    progress: bool = True,
) -> list[tuple[float, float]]:
    """Speech segments (start, end) in seconds, sorted, from silero-vad's streaming ``VADIterator``.

    The audio is decoded and resampled block by block (:func:`~.media.audio_blocks`), so memory does not grow with
    the film. ``threshold``, ``min_silence_ms`` and ``speech_pad_ms`` are silero-vad's own defaults; segments
    shorter than :data:`MIN_SPEECH_S` are dropped as ``get_speech_timestamps`` does.
    """
    import torch
    from silero_vad import VADIterator, load_silero_vad

    model = load_silero_vad()
    vad = VADIterator(
        model,
        threshold=threshold,
        sampling_rate=VAD_RATE,
        min_silence_duration_ms=min_silence_ms,
        speech_pad_ms=speech_pad_ms,
    )
    segments: list[tuple[float, float]] = []
    start = None
    seen = 0
    carry = np.zeros(0, np.float32)
    bar = tqdm(total=round(duration, 1), unit="s", desc="speech (silero-vad)", disable=not progress, leave=False)
    for block in audio_blocks(path):
        block = np.concatenate([carry, block]) if len(carry) else block
        usable = len(block) // VAD_WINDOW * VAD_WINDOW
        chunks = torch.from_numpy(np.ascontiguousarray(block[:usable])).view(-1, VAD_WINDOW)
        carry = block[usable:]
        for chunk in chunks:
            with torch.no_grad():  # scoped: never switch autograd off for the whole process
                event = vad(chunk, return_seconds=False)
            if event:
                if "start" in event:
                    start = event["start"] / VAD_RATE
                if "end" in event and start is not None:
                    segments.append((start, event["end"] / VAD_RATE))
                    start = None
        seen += usable
        bar.update(round(usable / VAD_RATE, 1))
    bar.close()
    if start is not None:  # speech ran to the end of the film
        segments.append((start, seen / VAD_RATE))
    vad.reset_states()
    return [(round(a, 3), round(b, 3)) for a, b in segments if b - a >= MIN_SPEECH_S]


def detect_shots(
    path: str | os.PathLike, fps: float, *, threshold: float = 27.0, min_shot_s: float = 0.6, progress: bool = True
) -> list[float]:
    """Shot cut times in seconds: PySceneDetect's ``ContentDetector`` (its default threshold 27) on its PyAV
    backend; ``min_shot_s`` (our default) is its ``min_scene_len`` in seconds."""
    from scenedetect import ContentDetector, SceneManager, open_video

    video = open_video(str(path), backend="pyav", suppress_output=True)
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=max(1, round(min_shot_s * (fps or 25)))))
    manager.detect_scenes(video, show_progress=progress)
    return [round(float(c.seconds), 3) for c in manager.get_cut_list()]


def make_slots(
    speech: Iterable[tuple[float, float]],
    cuts: Iterable[float],
    duration: float,
    *,
    min_gap: float = MIN_GAP_S,
    margin: float = MARGIN_S,
    max_slot: float = MAX_SLOT_S,
) -> list[Slot]:
    """The AD slots of a film: pure function of its speech segments, shot cuts and duration (seconds).

    Returns:
        Slots sorted by time, disjoint, each inside a silence of >= ``min_gap`` s, at least ``margin`` s from
        speech, between ``min_gap - 2·margin`` and ``max_slot`` s long (a piece of a split silence is >=
        ``min_gap`` s unless the whole silence was shorter after the margins).
    """
    speech = sorted((max(0.0, a), min(duration, b)) for a, b in speech)
    cuts = sorted(c for c in cuts if 0 < c < duration)
    gaps, t = [], 0.0
    for a, b in speech:
        if a - t >= min_gap:
            gaps.append((t, a))
        t = max(t, b)
    if duration - t >= min_gap:
        gaps.append((t, duration))
    slots: list[Slot] = []
    for g0, g1 in gaps:
        s0 = g0 + (margin if g0 > 0 else 0.0)  # no speech before the film's start, none after its end
        s1 = g1 - (margin if g1 < duration else 0.0)
        if s1 - s0 <= 0:
            continue
        # Split at the cuts inside; a piece shorter than min_gap joins the piece before it (or after, if first).
        bounds = [s0] + [c for c in cuts if s0 + min_gap <= c <= s1 - min_gap] + [s1]
        pieces = []
        for lo, hi in zip(bounds, bounds[1:]):
            if pieces and hi - lo < min_gap:
                pieces[-1] = (pieces[-1][0], hi)
            else:
                pieces.append((lo, hi))
        for lo, hi in pieces:
            n = max(1, math.ceil((hi - lo) / max_slot - 1e-9))
            for k in range(n):
                a, b = lo + (hi - lo) * k / n, lo + (hi - lo) * (k + 1) / n
                shot = int(np.searchsorted(cuts, a, side="right"))
                slots.append(Slot(round(a, 3), round(b, 3), shot))
    return slots
