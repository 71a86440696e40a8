"""The film file: probing (streams, duration, frame-rate regularity) and streamed audio decoding with PyAV."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

VAD_RATE = 16000
"""Hz the audio is resampled to for silero-vad (its native rate)."""
VFR_TOLERANCE = 0.02
"""Relative spread of frame durations above which a video stream counts as variable frame rate (our default)."""
VFR_PROBE_PACKETS = 600
"""Video packets whose timestamps are compared when probing the frame rate (our default; about 20 s at 30 fps)."""


class MediaError(ValueError):
    """The input cannot be described (one line, naming the file)."""


@dataclass
class Probe:
    """What ``distinctad-describe`` needs to know about a film before any work.

    Attributes:
        duration: seconds (the video stream's, else the container's).
        width, height: pixels of the first video stream.
        fps: its average frame rate (frames/s).
        has_audio: the film has an audio stream.
        audio_rate: that stream's sample rate in Hz (0 without audio).
        vfr: frame durations vary by more than :data:`VFR_TOLERANCE` (frames are then taken by timestamp anyway).
    """

    duration: float
    width: int
    height: int
    fps: float
    has_audio: bool
    audio_rate: int
    vfr: bool

    def to_dict(self) -> dict:
        return asdict(self)


def probe(path: str | os.PathLike) -> Probe:
    """Open ``path`` with PyAV and check it is a film.

    Raises:
        MediaError: not readable as media, no video stream, or no decodable duration.
    """
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: not a readable video file ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    with container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise MediaError(f"{path}: has no video stream ({kinds})")
        v = container.streams.video[0]
        duration = 0.0
        if v.duration is not None and v.time_base is not None:
            duration = float(v.duration * v.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # av.time_base
        fps = float(v.average_rate) if v.average_rate else 0.0
        a = container.streams.audio[0] if container.streams.audio else None
        width, height = v.codec_context.width, v.codec_context.height
        # Frame-rate regularity from the packets' timestamps alone (no decoding).
        pts = []
        try:
            for packet in container.demux(v):
                if packet.pts is not None:
                    pts.append(packet.pts)
                if len(pts) >= VFR_PROBE_PACKETS:
                    break
        except av.error.FFmpegError as e:
            raise MediaError(f"{path}: video stream cannot be read ({str(e).splitlines()[0][:120]})") from None
        if not pts:
            raise MediaError(f"{path}: video stream holds no frames")
        if duration <= 0:
            duration = float((max(pts) - min(pts)) * v.time_base) + (1 / fps if fps else 0)
        steps = np.diff(np.sort(np.asarray(pts, dtype=np.float64)))
        steps = steps[steps > 0]
        vfr = bool(len(steps) > 2 and (steps.max() - steps.min()) > VFR_TOLERANCE * np.median(steps))
        return Probe(
            duration=duration,
            width=int(width),
            height=int(height),
            fps=fps,
            has_audio=a is not None,
            audio_rate=int(a.sample_rate or 0) if a is not None else 0,
            vfr=vfr,
        )


def audio_blocks(path: str | os.PathLike, rate: int = VAD_RATE, block: int = 512 * 64) -> Iterator[np.ndarray]:
    """The first audio stream, decoded and resampled (PyAV ``AudioResampler``) to mono float32 at ``rate`` Hz, in
    blocks of ``block`` samples (the last one shorter): memory stays one block whatever the film's length."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    pending: list[np.ndarray] = []
    have = 0
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"

        def frames():
            for frame in container.decode(stream):
                yield from resampler.resample(frame)
            yield from resampler.resample(None)

        for out in frames():
            pcm = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            pending.append(pcm)
            have += len(pcm)
            while have >= block:
                joined = np.concatenate(pending)
                yield joined[:block]
                pending, have = [joined[block:]], have - block
    if have:
        yield np.concatenate(pending)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of the file's bytes, read in 4 MiB chunks (the cache key of everything derived from the film)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()
