"""Raw video decoding with PyAV: T frames sampled uniformly inside each AD, resized and JPEG-encoded."""

from __future__ import annotations

import io
import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")


def find_video(video_dir: str | os.PathLike, movie: str) -> Path | None:
    """The video file of ``movie`` in ``video_dir`` (``{movie}.mp4`` / ``.mkv`` / ...), or ``None``."""
    for suffix in VIDEO_SUFFIXES:
        p = Path(video_dir) / f"{movie}{suffix}"
        if p.is_file():
            return p
    return None


def frame_times(start: float, end: float, t: int) -> np.ndarray:
    """``t`` timestamps uniformly inside [start, end]: the centres of ``t`` equal segments."""
    return start + (np.arange(t) + 0.5) * (end - start) / t


def resize_short_side(img: Image.Image, short_side: int | None) -> Image.Image:
    """Resize so the shorter side is ``short_side`` (aspect kept); ``None`` or 0 keeps the size."""
    if not short_side:
        return img
    w, h = img.size
    scale = short_side / min(w, h)
    if scale == 1:
        return img
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image (deterministic for a given image and quality)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def video_duration(path: str | os.PathLike) -> float:
    """Duration of the first video stream in seconds (container duration when the stream has none)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
        return float(stream.frames / stream.average_rate) if stream.frames and stream.average_rate else 0.0


class VideoClipReader:
    """Decodes AD clips of one movie, in time order, from one open container.

    ADs of a movie come sorted by start time, so each clip seeks to the keyframe before its start and decodes
    forward; this keeps a whole movie to roughly one pass over the stream.
    """

    def __init__(self, path: str | os.PathLike, short_side: int | None = 224):
        self.path = str(path)
        self.short_side = short_side
        self.container = av.open(self.path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"

    def __enter__(self) -> VideoClipReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def clip(self, start: float, end: float, t: int = 8) -> list[Image.Image]:
        """``t`` RGB frames sampled uniformly inside [start, end], resized (short side).

        Each target time takes the last decoded frame whose timestamp is <= the target (the frame on screen
        at that moment); targets before the first decoded frame take the first one.

        Raises:
            ValueError: when no frame can be decoded in the clip (e.g. the AD is past the end of the video).
        """
        targets = frame_times(start, end, t)
        tb = self.stream.time_base
        self.container.seek(max(0, int(start / tb)), stream=self.stream, backward=True, any_frame=False)
        picked: list[Image.Image | None] = [None] * t
        prev = None
        i = 0
        for frame in self.container.decode(self.stream):
            ts = float(frame.pts * tb) if frame.pts is not None else 0.0
            while i < t and ts > targets[i]:
                picked[i] = prev if prev is not None else frame
                i += 1
            if i >= t:
                break
            prev = frame
        while i < t and prev is not None:  # the video ended inside the clip: hold its last frame
            picked[i] = prev
            i += 1
        if any(p is None for p in picked):
            raise ValueError(f"{self.path}: no frames decoded for clip [{start:.3f}, {end:.3f}]")
        return [resize_short_side(p.to_image(), self.short_side) for p in picked]
