"""Film frames: seeking and decoding on pick the same frames, the GOP probe, libswscale resizing."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest

from distinctad.data import video
from distinctad.data.video import VideoClipReader, frame_times, keyframe_interval, short_side_size

FPS, GOP = 10, 20  # a keyframe every 2 s


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    """30 s of 64x48 H.264 at 10 fps, GOP 20, B-frames on; frame i is a flat grey of level 8 * (i % 30)."""
    path = tmp_path_factory.mktemp("film") / "film.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.gop_size = GOP
        s.options = {"preset": "ultrafast", "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=2"}
        for i in range(30 * FPS):
            img = np.full((48, 64, 3), 8 * (i % 30), np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _indices(reader: VideoClipReader, ads) -> list[list[int]]:
    return [[round(float(f.pts * reader.stream.time_base) * FPS) for f in reader.frames(s, e, 4)] for s, e in ads]


def test_keyframe_interval_is_probed_from_the_index(film):
    assert keyframe_interval(film) == pytest.approx(GOP / FPS)


def test_seek_and_decode_on_pick_the_same_frames(film, monkeypatch):
    # dense ADs (0.5 s apart: decoded on), overlapping ones (must seek back) and sparse ones (seek ahead)
    ads = [(1.0, 1.4), (1.9, 2.7), (2.3, 3.1), (3.05, 3.3), (12.0, 13.0), (13.2, 13.9), (27.0, 29.95)]
    # hand-computed: the frame on screen at each target is floor(target * fps)
    expect = [[math.floor(x * FPS + 1e-9) for x in frame_times(s, e, 4)] for s, e in ads]
    runs = {}
    for name, gop_s in (("seek", 0.0), ("linear", math.inf), ("probed", None)):
        with VideoClipReader(film, 16, gop_s=gop_s, threads=1) as r:
            runs[name] = (_indices(r, ads), r.seeks, r.linear)
    assert runs["seek"][0] == runs["linear"][0] == runs["probed"][0] == expect
    assert runs["seek"][1:] == (6, 1)  # (3.05, 3.3) starts before the frame decoding already stands at (3.1 s)
    assert runs["linear"][1:] == (2, 5)  # the first clip and the overlapping one (2.3 < 2.7) seek
    assert runs["probed"][1:] == (4, 3)  # ... and the two more than one GOP (2 s) ahead: 12.0 and 27.0

    # Decoding on far ahead of a clip skips non-reference frames (B-frames here) and still picks the same frames.
    with VideoClipReader(film, 16, gop_s=math.inf, threads=1) as r:
        assert _indices(r, ads) == expect
        skipping = r.decoded
    monkeypatch.setattr(video, "SKIP_MARGIN_S", 1e9)  # never far enough: every frame decoded
    with VideoClipReader(film, 16, gop_s=math.inf, threads=1) as r:
        assert _indices(r, ads) == expect
        everything = r.decoded
    # every frame once (300) plus the ~1 s decoded again after seeking back for the overlapping clip
    assert 30 * FPS <= everything <= 30 * FPS + 2 * FPS and skipping < everything - 40, (skipping, everything)


def test_frames_are_resized_by_swscale_keeping_the_aspect(film):
    assert short_side_size(1920, 1080, 224) == (398, 224) and short_side_size(64, 48, 0) == (64, 48)
    with VideoClipReader(film, 24, threads=1) as r:
        images = r.clip(5.0, 6.0, 2)  # targets 5.25 and 5.75 s: frames 52 and 57, grey 8 * 22 and 8 * 27
    assert [im.size for im in images] == [(32, 24)] * 2 and all(im.mode == "RGB" for im in images)
    np.testing.assert_allclose([np.asarray(im).mean() for im in images], [176, 216], atol=3)
