"""``--narrate``: each AD spoken with espeak-ng, mixed into the film's audio with ducking, muxed with PyAV.

``MOVIE.ad.mkv`` holds the film's video and original audio (both copied, not re-encoded) and a second audio stream,
the description mix: the original audio lowered to ``duck`` while narration plays (linear ramps of
:data:`RAMP_S`, fully lowered from :data:`LEAD_S` before each AD to :data:`LEAD_S` after it) plus the narration.
It is tagged as the description track: language, title, and Matroska's ``visual_impaired`` + ``descriptions``
dispositions. One pass over the film's packets: memory holds one audio frame and one AD's narration at a time.
"""

from __future__ import annotations

import bisect
import logging
import os
from fractions import Fraction

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

DUCK = 0.25
"""Film-audio gain under narration (about -12 dB; our default, in the -10 to -15 dB range AD mixes use)."""
LEAD_S = 0.1
"""Seconds the film audio is fully ducked before and after each AD (our default)."""
RAMP_S = 0.2
"""Seconds of each linear ducking ramp (our default)."""
NARRATION_PEAK = 0.8
"""Peak amplitude of the narration in the mix."""


def tts(text: str, wpm: float, rate: int, voice: str = "en") -> np.ndarray:
    """``text`` spoken by espeak-ng at ``wpm`` words/min, float32 mono at ``rate`` Hz, trimmed to its audible part
    and normalised to :data:`NARRATION_PEAK` (not memoised: a film has thousands of ADs)."""
    from distinctad.data.synth_audio import audible_span, speak

    pcm = speak.__wrapped__(text, int(round(wpm)), voice, rate)
    a, b = audible_span(pcm, rate)
    pcm = pcm[int(a * rate) : int(np.ceil(b * rate))]
    peak = float(np.abs(pcm).max()) if len(pcm) else 0.0
    return (pcm / peak * NARRATION_PEAK).astype(np.float32) if peak else pcm


def duck_gain(t: np.ndarray, cues: list[dict], duck: float = DUCK) -> np.ndarray:
    """Film-audio gain at times ``t`` (seconds, sorted): 1 away from ADs, ``duck`` from LEAD_S before an AD's
    ``start`` to LEAD_S after its ``end``, linear ramps of RAMP_S around that."""
    g = np.ones_like(t, dtype=np.float32)
    if not len(t):
        return g
    reach = LEAD_S + RAMP_S
    starts = [c["start"] for c in cues]
    # only the cues near this block (cues are sorted and disjoint): a film's thousands of ADs cost nothing per block
    lo = max(bisect.bisect_right(starts, t[0] - reach) - 1, 0)
    hi = bisect.bisect_right(starts, t[-1] + reach)
    for c in cues[lo:hi]:
        a, b = c["start"] - LEAD_S, c["end"] + LEAD_S
        if b + RAMP_S < t[0] or a - RAMP_S > t[-1]:
            continue
        ramp = np.clip(np.minimum((t - (a - RAMP_S)) / RAMP_S, ((b + RAMP_S) - t) / RAMP_S), 0.0, 1.0)
        g = np.minimum(g, 1.0 - (1.0 - duck) * ramp.astype(np.float32))
    return g


class NarrationTrack:
    """The narration as a stream: ``block(t0, n)`` returns samples [t0, t0 + n/rate) of all ADs, rendering each AD
    when its time comes and forgetting it once passed (cues sorted by start, non-overlapping)."""

    def __init__(self, cues: list[dict], wpm: float, rate: int, progress: bool = True):
        self.cues, self.wpm, self.rate = cues, wpm, rate
        self.next = 0  # first cue not rendered yet
        self.live: list[tuple[int, np.ndarray]] = []  # (first sample, pcm) of rendered, not yet passed ADs
        self.bar = tqdm(total=len(cues), unit="AD", desc="narration (espeak-ng)", disable=not progress, leave=False)

    def block(self, first: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        end = first + n
        while self.next < len(self.cues) and int(round(self.cues[self.next]["start"] * self.rate)) < end:
            c = self.cues[self.next]
            self.live.append((int(round(c["start"] * self.rate)), tts(c["text"], self.wpm, self.rate)))
            self.next += 1
            self.bar.update(1)
        for at, pcm in self.live:
            lo, hi = max(at, first), min(at + len(pcm), end)
            if hi > lo:
                out[lo - first : hi - first] += pcm[lo - at : hi - at]
        self.live = [(at, pcm) for at, pcm in self.live if at + len(pcm) > end]
        return out

    def close(self) -> None:
        self.bar.close()


def mux_described(
    movie: str | os.PathLike,
    out_path: str | os.PathLike,
    cues: list[dict],
    *,
    wpm: float,
    duration: float,
    duck: float = DUCK,
    language: str = "eng",
    title: str = "Audio description",
    progress: bool = True,
) -> None:
    """Write ``out_path`` (Matroska): the film's streams copied + the description mix as a second audio stream.

    Without an audio stream in the film the description stream is the narration over silence (and is then the only
    audio stream). ``out_path`` should be a temporary path that the caller renames.
    """
    import av

    with av.open(str(movie)) as inp, av.open(str(out_path), "w", format="matroska") as out:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if inp.streams.audio else None
        vout = out.add_stream_from_template(vin)
        aout = out.add_stream_from_template(ain) if ain is not None else None
        rate = int(ain.sample_rate) if ain is not None else 48000
        layout = ain.layout.name if ain is not None else "mono"
        dout = out.add_stream("aac", rate=rate, layout=layout)
        dout.options = {"aac_coder": "fast"}  # FFmpeg's default coder (twoloop) alone costs ~0.2x real time
        dout.metadata["language"] = language
        dout.metadata["title"] = title
        dout.disposition = av.stream.Disposition.visual_impaired | av.stream.Disposition.descriptions
        if aout is not None and "language" not in aout.metadata:
            aout.metadata["language"] = language
        narration = NarrationTrack(cues, wpm, rate, progress)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        written = 0  # description samples encoded so far

        def emit(pcm: np.ndarray) -> None:  # (channels, n) float32 at `rate`, starting at sample `written`
            nonlocal written
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, np.float32), format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, written, Fraction(1, rate)
            written += pcm.shape[1]
            for packet in dout.encode(frame):
                out.mux(packet)

        def mix(samples: np.ndarray) -> np.ndarray:  # (channels, n) film audio from sample `written` on
            n = samples.shape[1]
            t = (written + np.arange(n)) / rate
            voice = narration.block(written, n)
            return np.clip(samples * duck_gain(t, cues, duck) + voice[None], -1.0, 1.0)

        channels = len(ain.layout.channels) if ain is not None else 1
        bar = tqdm(total=round(duration, 1), unit="s", desc="mix + mux", disable=not progress, leave=False)
        shown = 0.0
        pending: list[np.ndarray] = []  # decoded film audio not mixed yet
        have = 0
        streams = [vin] + ([ain] if ain is not None else [])
        for packet in inp.demux(*streams):
            if packet.dts is None:  # a demuxer flush packet
                continue
            if packet.stream is vin:
                when = float(packet.pts * vin.time_base) if packet.pts is not None else 0.0
                packet.stream = vout
                out.mux(packet)
                if ain is None:  # narration over silence, kept up with the video
                    while written / rate < when:
                        emit(mix(np.zeros((channels, min(rate, int(when * rate) - written + 1)), np.float32)))
            else:
                frames = packet.decode()  # decode before the packet is re-targeted at the output
                packet.stream = aout
                out.mux(packet)
                for frame in frames:
                    for rs in resampler.resample(frame):
                        pending.append(rs.to_ndarray().reshape(channels, -1))
                        have += pending[-1].shape[1]
                if have >= rate // 2:  # mix and encode about half a second at a time (fewer, larger numpy calls)
                    emit(mix(np.concatenate(pending, axis=1)))
                    pending, have = [], 0
                when = written / rate
            if when - shown >= 1.0:
                bar.update(round(when - shown, 1))
                shown = when
        if ain is not None:
            pending += [rs.to_ndarray().reshape(channels, -1) for rs in resampler.resample(None)]
            if pending:
                emit(mix(np.concatenate(pending, axis=1)))
        while written / rate < duration:  # the last ADs may outlast the film's audio
            emit(mix(np.zeros((channels, min(rate, int(duration * rate) - written + 1)), np.float32)))
        for packet in dout.encode(None):
            out.mux(packet)
        narration.close()
        bar.close()
