"""Sample kinds behind one registry: a kind added in a test is built, read and listed like the built-in ones."""

from __future__ import annotations

import contextlib
import functools
import json
import re

import numpy as np
import pytest

from distinctad.data import kinds
from distinctad.data.annotations import read_annotations
from distinctad.data.cli import main as shards_main
from distinctad.data.kinds import KINDS, SampleKind, Unit, get_kind, json_bytes, register_kind, sample_key
from distinctad.data.shards import BuildOptions, build_shards
from distinctad.testing import REPO

# ---------------------------------------------------------------- a toy kind: one text-only sample per AD


def _toy_select(movie, ads, opts, inputs):
    return [a for a in ads if a.sentence], "empty sentence"


def _toy_units(movie, ads, opts):
    return [Unit(sample_key(movie, a.ad_index), movie, [(a.ad_index, a.start, a.end, a.sentence)]) for a in ads]


def _toy_bytes(opts, feature_dim):
    return 600


def _one(meta):
    return 1


def _toy_encode(unit, split):
    ad_index, start, end, sentence = unit.ads[0]
    meta = {"movie": unit.movie, "ad_index": ad_index, "sentence": sentence, "split": split}
    return {"__key__": unit.key, "json": json_bytes(meta), "txt": sentence.upper().encode("utf-8")}


def _toy_encoder(movie, opts, inputs):
    return contextlib.nullcontext(functools.partial(_toy_encode, split=opts.split))


def _toy_decode(sample, meta, key, read):
    if sample.get("txt") != meta["sentence"].upper():
        raise ValueError(f"{key}: txt and json disagree")
    return {"shout": sample["txt"]}


def _toy_collate(samples, read, state, empty):
    state["batches"] = state.get("batches", 0) + 1
    return {
        "shout": ["" if s is None else s["shout"] for s in samples],
        "ad_index": np.array([-1 if s is None else s["meta"]["ad_index"] for s in samples], np.int64),
        "key": ["" if s is None else s["key"] for s in samples],
    }


TOY = SampleKind(
    name="toy",
    help="one AD, its sentence shouted",
    inputs=(),
    required_inputs=(),
    select=_toy_select,
    units=_toy_units,
    estimate_bytes=_toy_bytes,
    encoder=_toy_encoder,
    num_ads=_one,
    decode=_toy_decode,
    collate=_toy_collate,
)


@pytest.fixture
def toy_kind():
    register_kind(TOY)
    yield TOY
    del KINDS["toy"]


# ---------------------------------------------------------------- tests


def test_builtin_kinds_and_their_inputs():
    assert sorted(KINDS) == ["frames", "window"]
    assert get_kind("frames").required_inputs == ("videos",) and get_kind("window").inputs == ("features",)


def test_unknown_kind_is_one_error_listing_the_known_kinds(tmp_path, capsys):
    from distinctad.data.wds_pipeline import get_wds_loader

    expected = r"^unknown sample kind 'clips'; known kinds: frames, window$"
    with pytest.raises(ValueError, match=expected):
        get_kind("clips")
    with pytest.raises(ValueError, match=expected):
        BuildOptions(kind="clips")
    with pytest.raises(ValueError, match=expected):
        get_wds_loader([str(tmp_path / "a.tar")], "clips", 2, is_train=False)
    with pytest.raises(SystemExit) as e:
        shards_main(["build", "--annotations", "a.csv", "--out", str(tmp_path), "--kind", "clips"])
    assert e.value.code == 2 and "invalid choice: 'clips' (choose from 'frames', 'window')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="already registered"):
        register_kind(get_kind("window"))


@pytest.mark.parametrize("workers", [0, 1])  # 1: the kind travels to a spawned build worker
def test_a_kind_registered_in_a_test_builds_and_reads(toy_kind, synth_dir, tmp_path, workers):
    from distinctad.data.wds_pipeline import get_wds_loader

    by_movie = read_annotations(synth_dir / "annotations.json").by_movie()
    n_ads = sum(len(v) for v in by_movie.values())
    opts = BuildOptions(kind="toy", split="eval", maxcount=16)
    result = build_shards(tmp_path / "toy", by_movie, opts, workers=workers, progress=False)
    assert result.manifest["kind"] == "toy" and result.manifest["text_only"]
    assert result.manifest["totals"] == {
        "shards": -(-n_ads // 16),
        "samples": n_ads,
        "bytes": result.manifest["totals"]["bytes"],
        "movies": len(by_movie),
        "ads": n_ads,
    }

    d = get_wds_loader(str(tmp_path / "toy"), "toy", 8, is_train=False)  # padded to full batches
    batches = list(d.dataloader)
    assert len(batches) == d.num_batches == -(-n_ads // 8)
    keys = [k for b in batches for k, v in zip(b["key"], b["valid"]) if v]
    assert sorted(keys) == sorted(sample_key(m, a.ad_index) for m, ads in by_movie.items() for a in ads)
    last = batches[-1]
    pad = ~last["valid"]
    assert pad.sum() == 8 * len(batches) - n_ads and (last["ad_index"][pad] == -1).all()
    assert all(s == "" for s, p in zip(last["shout"], pad) if p)
    assert all(s.isupper() for b in batches for s, v in zip(b["shout"], b["valid"]) if v)

    with pytest.raises(ValueError, match="shards are 'toy', not 'window'"):
        get_wds_loader(str(tmp_path / "toy"), "window", 8, is_train=False)


def test_the_cli_lists_and_checks_a_registered_kind(toy_kind, synth_dir, tmp_path, capsys):
    ann = str(synth_dir / "annotations.json")
    shards_main(["build", "--annotations", ann, "--kind", "toy", "--out", str(tmp_path / "t"), "--no-progress"])
    assert json.loads((tmp_path / "t/manifest.json").read_text())["kind"] == "toy"
    with pytest.raises(SystemExit) as e:
        features = str(synth_dir / "features.h5")
        shards_main(["build", "--annotations", ann, "--kind", "toy", "--features", features, "--out", str(tmp_path)])
    assert str(e.value) == "error: --features is not used by --kind toy (it reads annotations only)"
    with pytest.raises(SystemExit) as e:
        shards_main(["build", "--annotations", ann, "--kind", "frames", "--out", str(tmp_path)])
    assert str(e.value) == "error: --kind frames needs --videos DIR"
    with pytest.raises(SystemExit):
        shards_main(["build", "--help"])
    assert "toy: one AD, its sentence shouted" in " ".join(capsys.readouterr().out.split())


def test_no_kind_branches_outside_the_registry():
    """Only kinds.py knows what a kind is: no ``kind == "window"`` style branch anywhere else in data/ or eval/."""
    branch = re.compile(r"""kind\w*\s*(?:==|!=)\s*["']|["'](?:window|frames)["']\s*(?:==|!=|in)\s""")
    offenders = [
        f"{path.relative_to(REPO)}:{i}"
        for folder in ("data", "eval")
        for path in sorted((REPO / folder).glob("*.py"))
        if path != REPO / "data/kinds.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert offenders == []
    assert kinds.__file__ == str(REPO / "data/kinds.py")
