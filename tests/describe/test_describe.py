"""``distinctad-describe`` on a SynthMAD film with spoken dialogue: cues in the gaps, the files it writes, the
narration mix, the autoregressive context and the resume after a kill."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest


def _cues(described):
    return described["cues"]


def test_every_cue_lies_in_a_gap_and_none_overlap(described, film):
    cues = _cues(described)
    assert len(cues) >= 5
    for c in cues:
        assert c["slot_start"] <= c["start"] < c["end"] <= c["slot_end"]
        for a, b in described["speech"]:  # detected speech: never under a cue, margins kept
            assert c["end"] + 0.2 - 1e-6 <= a or b <= c["start"] - 0.2 + 1e-6 or (a < 0.01 and c["start"] == 0)
        for a, b in film["dialogue"]:  # the true spoken lines (VAD is within 0.3 s of them, margins are 0.2 s)
            assert c["end"] <= a + 0.1 or b - 0.1 <= c["start"], (c, (a, b))
    for c, d in zip(cues, cues[1:]):
        assert c["end"] <= d["start"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_precisions_describe_within_the_gaps_and_cap_generation(
    film, stage2_run, tmp_path, describe_film, monkeypatch, precision
):
    """fp32 and bf16 (the default where the CPU is fast at it) both give a cue per slot inside it; each window's
    generation stops at the token cap of its longest slot (what could be spoken there), never at a fixed 40."""
    import torch

    from distinctad.train.models.captioner_config import GenerationArgs
    from distinctad.train.stage2 import context
    from distinctad.train.tools.describe.content import token_cap

    calls = []
    original = context.generate_candidates

    def spy(model, tokenizer, batch, gen, num_return=1, **kwargs):
        calls.append((next(model.parameters()).dtype, kwargs["max_new_tokens"]))
        return original(model, tokenizer, batch, gen, num_return, **kwargs)

    monkeypatch.setattr(context, "generate_candidates", spy)
    gen = GenerationArgs(num_beams=2, max_new_tokens=40, batch_size=1)
    result = describe_film(film["path"], stage2_run, tmp_path, precision=precision, generation=gen)
    cues, slots = result["cues"], result["slots"]
    assert len(cues) == len(slots) >= 5
    for c in cues:
        assert c["slot_start"] <= c["start"] < c["end"] <= c["slot_end"]
    caps = [
        token_cap(max(s["end"] - s["start"] for s in slots[rec["first_slot"] : rec["first_slot"] + 3]), 160.0, 40)
        for rec in result["windows"]
    ]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert calls == [(dtype, cap) for cap in caps] and min(caps) < 40


def test_vtt_parses_back_and_srt_matches(described):
    import webvtt

    from distinctad.train.tools.describe.outputs import timestamp

    paths = described["paths"]
    vtt = webvtt.read(paths["vtt"])
    assert [c.text for c in vtt.captions] == [c["text"] for c in _cues(described)]
    assert [(c.start, c.end) for c in vtt.captions] == [
        (timestamp(c["start"]), timestamp(c["end"])) for c in _cues(described)
    ]
    srt = webvtt.from_srt(paths["srt"])
    assert [c.text for c in srt.captions] == [c.text for c in vtt.captions]
    page = open(paths["html"]).read()
    assert '<track id="ad" kind="descriptions"' in page and "synth0001.ad.vtt" in page


def test_jsonl_scores_through_distinctad_eval_by_time(described, film, tmp_path):
    from distinctad.eval.cli import main as eval_main

    rows = [json.loads(line) for line in open(described["paths"]["jsonl"])]
    assert len(rows) == len(_cues(described)) and all("ad_index" not in r for r in rows)
    prefix = tmp_path / "report"
    rc = eval_main(
        [
            "--pred",
            described["paths"]["jsonl"],
            "--gt",
            str(film["annotations"]),
            "--time-tolerance",
            "0.5",
            "--allow-missing",
            "--metrics",
            "bleu",
            "--no-recall",
            "--no-progress",
            "--out",
            str(prefix),
        ]
    )
    assert not rc
    report = json.loads(prefix.with_suffix(".json").read_text())
    # slots are the silences between lines, i.e. the AD clips: most predictions find their GT AD by time
    assert report["meta"]["num_ads"] >= len(rows) // 2 and report["BLEU-1"] is not None


def _decode(path, index, rate):
    """Audio stream ``index`` of ``path`` as mono float32 at ``rate``, samples placed by their timestamps."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.audio[index]
        out = np.zeros(int(float(c.duration / 1e6) * rate) + rate, np.float32)
        for frame in c.decode(stream):
            pcm = frame.to_ndarray().reshape(len(frame.layout.channels), -1).mean(axis=0)
            at = int(round(float(frame.pts * frame.time_base) * rate))
            n = min(len(pcm), len(out) - at)
            out[at : at + n] = pcm[:n]
    return out


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def test_narrated_mkv_two_audio_streams_narration_in_gaps_film_ducked(described):
    import av

    from distinctad.train.tools.describe.narrate import DUCK, LEAD_S, RAMP_S

    mkv = described["paths"]["mkv"]
    with av.open(mkv) as c:
        audio = list(c.streams.audio)
        assert len(c.streams.video) == 1 and len(audio) == 2
        desc = audio[1]
        assert desc.metadata.get("title") == "Audio description" and desc.metadata.get("language") == "eng"
        assert desc.disposition & av.stream.Disposition.visual_impaired
    rate = 16000
    orig, mix = _decode(mkv, 0, rate), _decode(mkv, 1, rate)
    n = min(len(orig), len(mix))
    orig, mix = orig[:n], mix[:n]
    cues = _cues(described)
    ducked = np.zeros(n, bool)  # every sample the ducking or the narration may touch
    spoken = np.zeros(n, bool)
    for c in cues:
        ducked[int((c["start"] - LEAD_S - RAMP_S - 0.05) * rate) : int((c["end"] + LEAD_S + RAMP_S + 0.05) * rate)] = 1
        spoken[int(c["start"] * rate) : int(c["end"] * rate)] = True
    added = mix - orig  # narration + the ducking's change (+ AAC coding noise)
    energy = np.square(added)
    assert energy[ducked].sum() > 0.97 * energy.sum()  # the narration's energy lies in the cues' gaps
    assert _rms(added[spoken]) > 10 * _rms(added[~ducked])
    # just before each AD the film is fully ducked and no narration plays yet: mix/orig = DUCK there
    ratios = []
    for c in cues:
        lo, hi = int((c["start"] - LEAD_S + 0.02) * rate), int((c["start"] - 0.03) * rate)
        if lo > 0 and _rms(orig[lo:hi]) > 0.01:
            ratios.append(_rms(mix[lo:hi]) / _rms(orig[lo:hi]))
    assert len(ratios) >= 3 and abs(float(np.median(ratios)) - DUCK) < 0.08, ratios
    # away from ADs the film is untouched
    assert abs(_rms(mix[~ducked]) / _rms(orig[~ducked]) - 1) < 0.05


def test_context_of_each_window_is_the_previous_windows_own_ads(described, stage2_run):
    records = described["windows"]
    assert len(records) >= 3
    assert records[0]["context"] == []
    K = 3  # CaptionerConfig.context_ads of the tiny run (its default)
    history = []
    for w, rec in enumerate(records):
        assert rec["window"] == w and rec["context"] == history[-K:]
        history += [a["text"] for a in rec["ads"]]
    assert [c["text"] for c in _cues(described)] == history


def test_killed_during_generation_rerun_gives_identical_files(film, stage2_run, tmp_path, monkeypatch, describe_film):
    from distinctad.train.stage2 import context as ctx
    from distinctad.train.tools.describe import cache as C

    ref = describe_film(film["path"], stage2_run, tmp_path / "ref")
    out = tmp_path / "killed"
    real_put = C.PhaseCache.put_json
    windows_written = []

    def put_then_die(self, phase, k, value):
        real_put(self, phase, k, value)
        if phase == "window":
            windows_written.append(k)
            if len(windows_written) == 2:
                raise KeyboardInterrupt  # the kill, after two windows were stored
        return value

    monkeypatch.setattr(C.PhaseCache, "put_json", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        describe_film(film["path"], stage2_run, out)
    monkeypatch.undo()
    assert not list(out.glob("*.vtt")) and not list(out.glob("*.jsonl"))  # nothing half-written
    calls = []
    real_gen = ctx.generate_candidates
    monkeypatch.setattr(ctx, "generate_candidates", lambda *a, **k: calls.append(1) or real_gen(*a, **k))
    again = describe_film(film["path"], stage2_run, out)
    assert len(calls) == len(again["windows"]) - 2  # the two finished windows were reused
    for name in ("vtt", "srt", "jsonl"):
        assert open(again["paths"][name]).read() == open(ref["paths"][name]).read()
    assert Fraction(len(again["cues"])) == len(ref["cues"])
