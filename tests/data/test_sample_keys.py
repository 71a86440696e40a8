"""Sample keys are injective: any movie id (numbers, IMDb ids, dots, spaces, slashes, unicode) gets its own keys, and
the raw id comes back exactly through the shards, the reader, verify, predictions and the eval report (issue 14.3).

The fault: movies ``m.1`` and ``m_1`` both became key ``m_1__000000``; the build reported success, ``verify --deep``
found 1 sample where the manifest said 2, the reader merged two windows into one and eval failed with missing ADs.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from distinctad.data.annotations import AD, write_mad_json
from distinctad.data.cli import main as shards_main
from distinctad.data.kinds import Unit, escape_movie, parse_key, sample_key
from distinctad.data.shards import check_unique_keys, file_sha256
from distinctad.data.verify import verify_shards
from distinctad.data.wds_pipeline import get_wds_loader

# Pairs that a lossy mapping (dots, slashes or spaces to "_", unicode dropped, case folded...) would merge.
TRICKY_IDS = [
    "m.1",
    "m_1",
    "m%2E1",  # what m.1 escapes to: the escape character is escaped too
    "m/1",
    "m 1",
    "m-1",
    "3001",  # MAD ids are numbers
    "tt0111161",  # TV-AD ids are IMDb ids
    "3034_IDES_OF_MARCH",
    "Amélie",  # composed é
    "Ame\u0301lie",  # e + combining accent: another string, so another movie
    "電影.v2",
    "x__000001",  # holds the key separator and an index
    "a_",
    "..",
    "A.1",
    "a.1",
]


def test_keys_are_injective_and_reversible_over_tricky_ids():
    keys = {sample_key(m, i): (m, i) for m in TRICKY_IDS for i in (0, 1, 1_000_000)}
    assert len(keys) == 3 * len(TRICKY_IDS)  # no two (movie, ad_index) pairs share a key
    for key, (movie, index) in keys.items():
        assert parse_key(key) == (movie, index)
        # WebDataset splits a member name at the first dot and treats "/" as a folder: neither may be in a key.
        assert "." not in key and "/" not in key and " " not in key and key.isascii()


def test_plain_ids_keep_their_keys():
    """MAD, IMDb and AutoAD ids are unchanged, so shard sets built before the fix are still reused."""
    for movie in ("3001", "tt0111161", "3034_IDES_OF_MARCH", "movie-01"):
        assert escape_movie(movie) == movie
        assert sample_key(movie, 7) == f"{movie}__000007"


def test_a_key_collision_is_refused_naming_both_movies():
    units = [Unit("k__000000", "m.1", [(0, 0.0, 1.0, "a")]), Unit("k__000000", "m_1", [(0, 0.0, 1.0, "b")])]
    with pytest.raises(ValueError, match=r"^sample key 'k__000000' is shared by movie 'm.1' \(AD 0\) and movie 'm_1'"):
        check_unique_keys(units)


def _mad_inputs(root: Path, movies: list[str], ads: int = 4, dim: int = 8) -> tuple[Path, Path]:
    """MAD JSON + HDF5 features (40 frames of D=8 per movie) for ``movies``, ``ads`` ADs each."""
    records = [
        AD(movie, i, 2.0 * i, 2.0 * i + 1.5, f"{movie} does thing {i}", movie_duration=8.0)
        for movie in movies
        for i in range(ads)
    ]
    write_mad_json(records, root / "ann.json")
    with h5py.File(root / "feats.h5", "w") as f:
        for k, movie in enumerate(movies):
            f.create_dataset(movie, data=np.full((40, dim), k, np.float32))
    return root / "ann.json", root / "feats.h5"


# the ids of the issue, one of each kind the issue lists, and unicode
BUILD_IDS = ["m.1", "m_1", "m 1", "a/b", "a%2Fb", "3001", "tt0111161", "Amélie", "電影.v2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    ann, feats = _mad_inputs(root, BUILD_IDS)
    out = root / "win"
    args = ["build", "--annotations", str(ann), "--features", str(feats), "--kind", "window", "--split", "eval"]
    shards_main([*args, "--window", "4", "--maxcount", "3", "--out", str(out), "--no-progress"])
    return out


def test_tricky_ids_build_verify_and_read_back_exactly(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == len(BUILD_IDS) and manifest["totals"]["ads"] == 4 * len(BUILD_IDS)
    assert sorted(manifest["movies"]) == sorted(BUILD_IDS)
    report = verify_shards(built, deep=True)
    assert report.passed, report.problems

    d = get_wds_loader(str(built), "window", 2, is_train=False)
    rows = [(m, k) for b in d.dataloader for m, k, v in zip(b["movie"], b["key"], b["valid"]) if v]
    assert d.num_skipped == 0
    assert sorted(m for m, _ in rows) == sorted(BUILD_IDS)  # every window once, raw ids from the json member
    assert all(parse_key(k) == (m, 0) for m, k in rows)


def test_predictions_and_the_report_carry_the_raw_ids(built, tmp_path):
    from distinctad.eval.cli import main as eval_main

    preds = tmp_path / "preds.jsonl"
    lines = [{"movie": m, "ad_index": i, "text": f"{m} does thing {i}"} for m in BUILD_IDS for i in range(4)]
    preds.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in lines), encoding="utf-8")
    out = tmp_path / "report"
    args = ["--pred", str(preds), "--gt", str(built), "--metrics", "none", "--recall-n", "4", "--recall-k", "1"]
    eval_main([*args, "--out", str(out), "--no-progress"])
    report = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    assert report["meta"]["matching"]["matched"] == 4 * len(BUILD_IDS) and report["meta"]["matching"]["missing"] == 0
    assert sorted(report["per_movie"]) == sorted(BUILD_IDS)


def test_frames_and_window_kinds_share_the_key_scheme():
    from distinctad.data.kinds import get_kind
    from distinctad.data.shards import BuildOptions

    ads = {m: [AD(m, i, float(i), i + 0.5, "s") for i in range(3)] for m in ("m.1", "m_1")}
    for kind, opts in (("frames", BuildOptions(kind="frames")), ("window", BuildOptions(window=2))):
        units = [u for m, a in ads.items() for u in get_kind(kind).units(m, a, opts)]
        check_unique_keys(units)
        assert {parse_key(u.key)[0] for u in units} == {"m.1", "m_1"}


def _tar_with(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_verify_deep_names_a_key_held_twice(tmp_path):
    """A set built before keys were injective (two samples under one key) fails ``verify --deep``, naming the key."""
    bad = tmp_path / "old"
    bad.mkdir()
    shard = bad / "eval-000000.tar"
    meta = [
        json.dumps({"movie": m, "ad_index": [0], "sentence": ["s"], "num_valid": 1}).encode() for m in ("m.1", "m_1")
    ]
    _tar_with(shard, [("m_1__000000.json", meta[0]), ("m_1__000000.json", meta[1])])
    manifest = {
        "complete": True,
        "shards": [{"file": shard.name, "samples": 2, "bytes": shard.stat().st_size, "sha256": file_sha256(shard)}],
    }
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert verify_shards(bad).passed  # the hashes match what was written...
    problems = verify_shards(bad, deep=True).problems  # ...but two samples share one key
    assert "two samples share key 'm_1__000000'" in problems[shard.name]
