"""Raw video decoding with PyAV: T frames sampled uniformly inside each AD, resized and JPEG-encoded.

Stage-I frames are the expensive path of a MAD build (~1.6-2.3 CPU-s per AD at 1080p before this module was
reworked). Three things keep it down (measured by ``benchmarks/build_scale.py``):

- frames are scaled by libswscale while converting to RGB (``VideoFrame.reformat``, bicubic), never converted to a
  full-size PIL image and resized there (~6 ms against ~45 ms per 1080p frame);
- each AD either seeks to the keyframe before it or decodes on from the previous AD, whichever decodes fewer
  frames: seeking costs on average half a GOP of decoding, so ADs closer than one GOP (:func:`keyframe_interval`,
  probed per film from its index) to where decoding stands are reached linearly;
- frames far (> 2 margins, :data:`SKIP_MARGIN_S`) before a clip's first target are decoded with
  ``skip_frame="NONREF"``: non-reference frames (about half of an H.264 stream) are not decoded there at all;
- decoder threads per film are the cores divided by the build's workers (:func:`set_decoder_threads`), so that
  ``--workers`` processes never oversubscribe the machine.
"""

from __future__ import annotations

import io
import itertools
import os
import statistics
from pathlib import Path

import av
import numpy as np
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
LINEAR_GOPS = 1.0
"""Decode on (rather than seek) when the next AD starts within this many GOPs of where decoding stands: the measured
crossover is about one GOP (~9-10 s at GOP 250, 25 fps; our benchmark)."""
SKIP_MARGIN_S = 1.0
"""Frames further than twice the margin before a clip are decoded with ``skip_frame="NONREF"`` (non-reference
frames, about half of an H.264 stream, are never on screen at a target there); the margin is at least this many
seconds and at least the decoder's delay (16 reordered frames + one per thread)."""
RESIZE_INTERPOLATION = "BICUBIC"
"""libswscale filter of the short-side resize (bicubic, as the PIL resize it replaced)."""
_DECODER_THREADS = 0  # 0: FFmpeg's own choice (one per core)


def set_decoder_threads(threads: int) -> None:
    """Decoder threads of every film opened afterwards in this process (0: one per core, FFmpeg's default).

    The shard builder gives each of its W workers ``cores // W`` (at least 1), so decoders add up to the cores.
    """
    global _DECODER_THREADS
    _DECODER_THREADS = max(0, int(threads))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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


def short_side_size(w: int, h: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` and the aspect kept; ``None`` or 0 keeps the size."""
    if not short_side:
        return w, h
    scale = short_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_short_side(img: Image.Image, short_side: int | None) -> Image.Image:
    """Resize so the shorter side is ``short_side`` (aspect kept); ``None`` or 0 keeps the size."""
    size = short_side_size(*img.size, short_side)
    return img if size == img.size else img.resize(size, Image.BICUBIC)


def frame_to_image(frame: av.VideoFrame, short_side: int | None) -> Image.Image:
    """An RGB image of a decoded frame, scaled (short side) by libswscale in the same pass as the colour conversion."""
    w, h = short_side_size(frame.width, frame.height, short_side)
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation=RESIZE_INTERPOLATION)
    return Image.fromarray(rgb.to_ndarray())


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


def _keyframe_before(container, stream, seconds: float) -> float | None:
    """Time (s) of the keyframe at or before ``seconds``: one seek in the film's index and one packet read."""
    tb = stream.time_base
    container.seek(max(0, int(seconds / tb)), stream=stream, backward=True, any_frame=False)
    for packet in container.demux(stream):
        if packet.pts is not None:
            return float(packet.pts * tb)
    return None


def keyframe_interval(path: str | os.PathLike, probes: int = 5) -> float:
    """The film's GOP in seconds: median gap between the keyframes around ``probes`` points spread over it.

    Reads a packet per probe (two seeks each), not the film. A film with a single keyframe gives its duration.
    """
    duration = video_duration(path)
    gaps = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tick = float(stream.time_base)
        for k in range(1, probes + 1):
            k1 = _keyframe_before(container, stream, duration * k / (probes + 1))
            if k1 is None or k1 <= 0:
                continue
            k0 = _keyframe_before(container, stream, k1 - tick)
            if k0 is not None and k0 < k1:
                gaps.append(k1 - k0)
    return statistics.median(gaps) if gaps else max(duration, 0.0)


class VideoClipReader:
    """Decodes AD clips of one movie, in time order, from one open container.

    ADs of a movie come sorted by start time. Each clip either goes on decoding from where the previous one stopped
    (when it starts less than ``linear_gops`` GOPs ahead) or seeks to the keyframe before its start; both give the
    same frames. ``seeks`` and ``linear`` count the choices.

    Args:
        path: the film.
        short_side: resize frames so the short side has this many pixels (``None``/0 keeps the size).
        gop_s: the film's keyframe interval in seconds (default: :func:`keyframe_interval`); 0 seeks unless
            decoding already stands past the clip's start, ``math.inf`` decodes on whenever the clip lies ahead.
        threads: decoder threads (default: :func:`set_decoder_threads`, else one per core).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        short_side: int | None = 224,
        *,
        gop_s: float | None = None,
        threads: int | None = None,
        linear_gops: float = LINEAR_GOPS,
    ):
        self.path = str(path)
        self.short_side = short_side
        self.gop_s = keyframe_interval(self.path) if gop_s is None else gop_s
        self.linear_gops = linear_gops
        self.container = av.open(self.path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = _DECODER_THREADS if threads is None else threads
        self._frames = None  # the decode iterator, positioned after _pending
        self._prev = None  # the last decoded frame at or before the previous clip's last target
        self._pending = None  # the first decoded frame after it
        self._skipping = False  # skip_frame is NONREF
        threads = self.stream.codec_context.thread_count or usable_cores() + 1
        fps = float(self.stream.average_rate or 25)
        self.skip_margin = max(SKIP_MARGIN_S, (16 + threads) / fps)
        self.seeks = self.linear = self.decoded = 0  # choices made, frames the decoder gave

    def __enter__(self) -> VideoClipReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _ts(self, frame) -> float:
        return float(frame.pts * self.stream.time_base) if frame.pts is not None else 0.0

    def _go_on(self, start: float, first_target: float) -> bool:
        """Whether decoding on from the previous clip reaches ``start`` more cheaply than a seek."""
        if self._frames is None or self._prev is None or first_target < self._ts(self._prev):
            return False
        here = self._ts(self._pending) if self._pending is not None else self._ts(self._prev)
        return start - here <= self.linear_gops * self.gop_s

    def _skip_nonref(self, skip: bool) -> None:
        if skip != self._skipping:
            self.stream.codec_context.skip_frame = "NONREF" if skip else "DEFAULT"
            self._skipping = skip

    def frames(self, start: float, end: float, t: int = 8) -> list:
        """The ``t`` decoded frames (``av.VideoFrame``) on screen at :func:`frame_times` of [start, end].

        Each target time takes the last decoded frame whose timestamp is <= the target (the frame on screen at
        that moment); targets before the first decoded frame take the first one.

        Raises:
            ValueError: when no frame can be decoded in the clip (e.g. the AD is past the end of the video).
        """
        targets = frame_times(start, end, t)
        if self._go_on(start, float(targets[0])):
            self.linear += 1
            prev, ahead = self._prev, [self._pending] if self._pending is not None else []
        else:
            self.seeks += 1
            self._skip_nonref(False)
            tb = self.stream.time_base
            self.container.seek(max(0, int(start / tb)), stream=self.stream, backward=True, any_frame=False)
            self._frames = self.container.decode(self.stream)
            prev, ahead = None, []
        self._pending = None
        picked: list = [None] * t
        i = 0
        # Packets sent while skipping show before (this frame + the decoder's delay) < targets[0] - margin, so every
        # frame from targets[0] - margin on, and with it the one on screen at targets[0], is decoded.
        far = float(targets[0]) - 2 * self.skip_margin
        for frame in itertools.chain(ahead, self._frames):
            ts = self._ts(frame)
            self.decoded += frame is not self._pending
            self._skip_nonref(ts < far)
            while i < t and ts > targets[i]:
                picked[i] = prev if prev is not None else frame
                i += 1
            if i >= t:
                self._pending = frame
                break
            prev = frame
        else:  # the film ended: the next clip seeks
            self._frames = None
        while i < t and prev is not None:  # the video ended inside the clip: hold its last frame
            picked[i] = prev
            i += 1
        self._prev = prev
        if any(p is None for p in picked):
            raise ValueError(f"{self.path}: no frames decoded for clip [{start:.3f}, {end:.3f}]")
        return picked

    def clip(self, start: float, end: float, t: int = 8) -> list[Image.Image]:
        """``t`` RGB frames sampled uniformly inside [start, end], resized (short side) by libswscale.

        Raises:
            ValueError: when no frame can be decoded in the clip (e.g. the AD is past the end of the video).
        """
        return [frame_to_image(f, self.short_side) for f in self.frames(start, end, t)]
