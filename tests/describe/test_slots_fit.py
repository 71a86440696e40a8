"""Where ADs can go and how long they may be: slots from speech and cuts (hand-computed), speech detection against
the SynthMAD dialogue's true times, fitting an AD to its slot."""

from __future__ import annotations

import pytest

from distinctad.train.tools.describe.content import DescribeError, cpu_has_fast_bf16, resolve_precision, token_cap
from distinctad.train.tools.describe.fit import clean, estimate_seconds, fit
from distinctad.train.tools.describe.slots import Slot, make_slots


def test_slots_are_the_long_silences_with_margins_split_at_cuts():
    speech = [(2.0, 3.0), (5.0, 5.5), (9.0, 10.0)]
    slots = make_slots(speech, [7.25], 14.0, min_gap=1.5, margin=0.2, max_slot=12.0)
    assert slots == [
        Slot(0.0, 1.8, 0),  # the film's start has no speech before it: no margin there
        Slot(3.2, 4.8, 0),
        Slot(5.7, 7.25, 0),  # 5.5..9.0 spans the cut at 7.25: two slots, each >= min_gap
        Slot(7.25, 8.8, 1),
        Slot(10.2, 14.0, 1),
    ]
    # a cut too close to the silence's end would leave a piece shorter than min_gap: not split
    assert make_slots(speech, [8.0], 14.0)[2] == Slot(5.7, 8.8, 0)
    # a silence shorter than min_gap takes no AD
    assert make_slots([(0.0, 3.0), (4.0, 7.0)], [], 7.0) == []


def test_no_audio_is_one_gap_split_at_shots_and_long_slots_split_evenly():
    assert make_slots([], [4.0], 8.0) == [Slot(0.0, 4.0, 0), Slot(4.0, 8.0, 1)]
    assert make_slots([], [], 30.0, max_slot=12.0) == [Slot(0.0, 10.0, 0), Slot(10.0, 20.0, 0), Slot(20.0, 30.0, 0)]


def test_vad_finds_the_spoken_lines_within_0_3_s(film):
    from distinctad.train.tools.describe.media import probe
    from distinctad.train.tools.describe.slots import detect_speech

    info = probe(film["path"])
    assert info.has_audio and not info.vfr
    found = detect_speech(film["path"], info.duration, progress=False)
    truth = film["dialogue"]
    assert len(truth) >= 5 and len(found) == len(truth)
    for (a, b), (ta, tb) in zip(found, truth):
        assert abs(a - ta) <= 0.3 and abs(b - tb) <= 0.3, ((a, b), (ta, tb))


def test_spoken_duration_and_fit():
    assert estimate_seconds("one two three four", 160) == pytest.approx(1.5)
    assert estimate_seconds("one two three four", 120) == pytest.approx(2.0)

    def est(t):
        return estimate_seconds(t, 160)

    six = "one two three four five six"
    # the best beam is too long (2.25 s), the second fits (1.125 s)
    f = fit([six, "one two three"], 1.2, est)
    assert (f.text, f.fits, f.how) == ("one two three", True, "beam 1") and f.seconds == pytest.approx(1.125)
    # no beam fits 1.6 s: the best one is cut to the longest prefix that does (4 words, 1.5 s)
    f = fit([six], 1.6, est)
    assert (f.text, f.fits, f.how) == ("one two three four.", True, "shortened")
    # nothing fits 0.5 s, not even min_words=3: the shortest option is kept and marked
    f = fit(["one two three four"], 0.5, est)
    assert (f.text, f.fits, f.how) == ("one two three.", False, "too long")
    assert clean("a\x00b \ufffd  c\n") == "a b c"


def test_token_cap_is_what_the_slot_can_speak_and_precision_resolves():
    import torch

    # 4 s at 160 wpm = 10.67 words -> ceil(16.0) tokens at 1.5 per word + 4 slack = 20
    assert token_cap(4.0, 160.0, 67) == 20
    assert token_cap(1.5, 120.0, 67) == 5 + 4  # 3 words -> 4.5 -> 5 tokens, + 4
    assert token_cap(60.0, 160.0, 67) == 67  # never above --max-new-tokens
    assert token_cap(0.0, 160.0, 67) == 4
    assert resolve_precision("fp32") == torch.float32 and resolve_precision("bf16") == torch.bfloat16
    assert resolve_precision("auto") == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    with pytest.raises(DescribeError, match="--precision 'fp16': choose one of auto, fp32, bf16"):
        resolve_precision("fp16")


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_synth_cli_videos_have_dialogue_between_the_ad_clips_unless_no_audio(tmp_path):
    import json

    import av

    from distinctad.data.cli import main as shards

    assert shards(["synth", "--out", str(tmp_path / "a"), "--movies", "2", "--ads-per-movie", "4", "--videos"]) == 0
    dialogue = json.loads((tmp_path / "a/dialogue.json").read_text())
    anns = json.loads((tmp_path / "a/annotations.json").read_text()).values()
    for movie, lines in dialogue.items():
        clips = [a["timestamps"] for a in anns if a["movie"] == movie]
        assert lines and all(0 < ln["end"] - ln["start"] for ln in lines)
        for ln in lines:  # spoken in the silences: never inside an AD clip
            assert all(ln["end"] <= s or e <= ln["start"] for s, e in clips)
        with av.open(str(tmp_path / f"a/videos/{movie}.mp4")) as c:
            assert len(c.streams.audio) == 1 and c.streams.audio[0].sample_rate == 16000
    assert (
        shards(
            ["synth", "--out", str(tmp_path / "b"), "--movies", "2", "--ads-per-movie", "4", "--videos", "--no-audio"]
        )
        == 0
    )
    with av.open(str(tmp_path / "b/videos/synth0000.mp4")) as c:
        assert not c.streams.audio
    assert not (tmp_path / "b/dialogue.json").exists()
