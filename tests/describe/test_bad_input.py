"""Bad input to ``distinctad-describe``: one ``error:`` line each and nothing written; a variable-frame-rate film
without audio is described (one notice each), as one gap split at its shot cut."""

from __future__ import annotations

import wave
from fractions import Fraction

import numpy as np
import pytest

from distinctad.train.tools.describe.cli import main


def write_video(path, times, colour_at, size=32):
    """An H.264 video whose frames are shown at ``times`` (seconds; irregular = variable frame rate)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=5)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.time_base = Fraction(1, 1000)
        s.codec_context.time_base = Fraction(1, 1000)
        for t in times:
            img = np.zeros((size, size, 3), np.uint8)
            img[:] = colour_at(t)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _fails(argv, out, *fragments):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(out), "--no-progress"])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg
    assert not out.exists() or not any(out.iterdir())  # nothing written, not even the cache


def test_unreadable_no_video_and_too_short(stage2_run, tmp_path):
    out = tmp_path / "out"
    s2 = ["--stage2", str(stage2_run)]
    text = tmp_path / "notes.mp4"
    text.write_text("not a film at all\n")
    _fails([str(text), *s2], out, "notes.mp4", "not a readable video file")
    _fails([str(tmp_path / "missing.mp4"), *s2], out, "no such video file")
    wav = tmp_path / "speech.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(16000 * 6, "<i2").tobytes())
    _fails([str(wav), *s2], out, "has no video stream (audio)")
    short = tmp_path / "short.mp4"
    write_video(short, np.arange(15) / 5, lambda t: (200, 30, 30))
    _fails([str(short), *s2], out, "3.0 s long", "--min-duration")


def test_feature_width_mismatch_and_unwritable_out(film, stage2_run, tmp_path):
    s2 = ["--stage2", str(stage2_run)]
    out = tmp_path / "out"
    # the tiny run reads 64-d features; a (random) ViT-B/32 tower gives 512-d ones
    _fails([str(film["path"]), *s2, "--clip-model", "ViT-B-32"], out, "64-d features", "gives 512-d")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails([str(film["path"]), *s2, "--clip-model", "distinctad-tiny"], blocker / "out", "--out", "is a file")


def test_variable_frame_rate_film_without_audio(stage2_run, tmp_path, capsys, ranks):
    # 8 s, frames at irregular times, red then blue: one shot cut at 4 s
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.1, 0.35, 60))
    times = np.concatenate([[0.0], times[times < 8.0], [8.0]])
    film = tmp_path / "vfr.mkv"
    write_video(film, times, lambda t: (220, 30, 30) if t < 4.0 else (30, 60, 220))
    out = tmp_path / "out"
    with ranks():
        main(
            [str(film), "--stage2", str(stage2_run), "--clip-model", "distinctad-tiny", "--out", str(out)]
            + ["--num-beams", "1", "--max-new-tokens", "4", "--no-progress"]
        )
    printed = capsys.readouterr().out
    assert "notice: " in printed and "has no audio stream" in printed
    assert "has a variable frame rate" in printed
    import webvtt

    cues = webvtt.read(str(out / "vfr.ad.vtt")).captions
    # one gap (the whole film) split at the cut near 4 s: two slots, [0, ~4] and [~4, end]
    assert len(cues) == 2 and cues[0].start == "00:00:00.000"
    cut = cues[1].start_in_seconds + int(cues[1].start.split(".")[1]) / 1000
    assert 3.5 <= cut <= 4.5
