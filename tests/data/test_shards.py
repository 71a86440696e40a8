"""Shard builder: MAD-Eval text windows, SynthMAD frames/windows, resume, verify, curation."""

from __future__ import annotations

import json
import math
import shutil

import h5py
import numpy as np
import pytest

from distinctad.data.annotations import read_annotations
from distinctad.data.cli import main
from distinctad.data.decode import decode_sample, iter_tar_samples
from distinctad.data.shards import file_sha256

from .conftest import MADEVAL_CSV


def read_back(out) -> dict[str, list[dict]]:
    """Decoded samples of every shard of a folder, in file order."""
    return {p.name: [decode_sample(s) for s in iter_tar_samples(str(p))] for p in sorted(out.glob("*.tar"))}


@pytest.mark.parametrize("policy,total", [("repair", 6520), ("drop", 6516)])
def test_madeval_text_windows(tmp_path, capsys, policy, total):
    out = tmp_path / "win"
    main(
        [
            "build",
            "--annotations",
            str(MADEVAL_CSV),
            "--bad-utf8",
            policy,
            "--kind",
            "window",
            "--split",
            "eval",
            "--maxcount",
            "100",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert "kept (written)" in printed and str(total) in printed
    by_movie = read_annotations(MADEVAL_CSV, bad_utf8=policy).by_movie()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_only"] and manifest["totals"]["ads"] == total
    windows: dict[str, list[dict]] = {}
    for samples in read_back(out).values():
        for s in samples:
            assert set(s) == {"__key__", "__url__", "json"}  # text-only: no feats.npy / mask.npy
            windows.setdefault(s["json"]["movie"], []).append(s["json"])
    assert sorted(windows) == sorted(by_movie)
    for movie, ws in windows.items():
        ads = by_movie[movie]
        assert len(ws) == math.ceil(len(ads) / 16)
        assert [w["window_index"] for w in ws] == list(range(len(ws)))  # movie order kept across shards
        assert [s for w in ws for s in w["sentence"]] == [a.sentence for a in ads]  # AD order kept
        assert [i for w in ws for i in w["ad_index"]] == [a.ad_index for a in ads]
        assert all(w["num_valid"] == 16 for w in ws[:-1]) and ws[-1]["num_valid"] == len(ads) - 16 * (len(ws) - 1)
        assert ws[0]["context"] == [] and ws[1]["context"] == [a.sentence for a in ads[13:16]]
    ides = windows["3034_IDES_OF_MARCH"]
    n_fffd = sum("\ufffd" in s for w in ides for s in w["sentence"])
    assert n_fffd == (4 if policy == "repair" else 0)
    assert sum(len(w["sentence"]) for w in ides) == (437 if policy == "repair" else 433)


def test_madeval_error_policy_is_a_one_line_cli_error(tmp_path):
    args = ["build", "--annotations", str(MADEVAL_CSV), "--out", str(tmp_path / "x"), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main([*args, "--bad-utf8", "error"])
    assert str(e.value).startswith("error: ") and ":5725:" in str(e.value) and "\n" not in str(e.value)


def test_frames_shards_resume_and_verify(synth_dir, tmp_path, capsys):
    out = tmp_path / "frames"
    args = [
        "build",
        "--annotations",
        str(synth_dir / "annotations.json"),
        "--videos",
        str(synth_dir / "videos"),
        "--kind",
        "frames",
        "--num-frames",
        "4",
        "--short-side",
        "16",
        "--maxcount",
        "25",
        "--out",
        str(out),
        "--no-progress",
    ]
    main([*args, "--workers", "2"])
    manifest = json.loads((out / "manifest.json").read_text())
    shards = read_back(out)
    assert manifest["complete"] and list(shards) == [s["file"] for s in manifest["shards"]]
    assert [len(v) for v in shards.values()] == [s["samples"] for s in manifest["shards"]] == [25, 25, 10]
    assert json.loads((out / "sizes.json").read_text()) == {k: len(v) for k, v in shards.items()}
    assert manifest["totals"]["samples"] == 60 and manifest["totals"]["ads"] == 60
    for rec in manifest["shards"]:
        assert rec["sha256"] == file_sha256(out / rec["file"]) and rec["bytes"] == (out / rec["file"]).stat().st_size
    s = shards["train-000000.tar"][0]
    assert s["__key__"] == "synth0000__000000" and s["txt"] == s["json"]["sentence"]
    assert [s[f"{i:02d}.jpg"].size for i in range(4)] == [(16, 16)] * 4

    # delete one shard: a rerun (in-process this time) rebuilds only it, byte-identical
    before = {p.name: (p.stat().st_mtime_ns, file_sha256(p)) for p in out.glob("*.tar")}
    (out / "train-000001.tar").unlink()
    capsys.readouterr()
    main(args)
    assert "built 1 shard(s), skipped 2" in capsys.readouterr().out
    after = {p.name: (p.stat().st_mtime_ns, file_sha256(p)) for p in out.glob("*.tar")}
    assert (
        after["train-000000.tar"] == before["train-000000.tar"]
        and after["train-000002.tar"] == before["train-000002.tar"]
    )
    assert after["train-000001.tar"][1] == before["train-000001.tar"][1]  # same content: deterministic plan
    assert main(["verify", str(out)]) == 0

    # truncate a shard: verify exits non-zero and names it
    shard = out / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["verify", str(out)])
    assert e.value.code == 1
    printed = capsys.readouterr().out
    assert "FAIL train-000002.tar: truncated" in printed and "train-000000.tar" not in printed


def test_window_feature_shards_and_drops(synth_dir, tmp_path):
    # a feature file where synth0002 is cut at 20 s: its ADs starting later are dropped and counted
    feats = tmp_path / "cut.h5"
    shutil.copy(synth_dir / "features.h5", feats)
    with h5py.File(feats, "a") as f:
        full = f["synth0002"][()]
        del f["synth0002"]
        f.create_dataset("synth0002", data=full[:100])
    anns = read_annotations(synth_dir / "annotations.json")
    past_end = sum(1 for a in anns.by_movie()["synth0002"] if math.floor(a.start * 5) >= 100)
    assert past_end > 0
    out = tmp_path / "win"
    main(
        [
            "build",
            "--annotations",
            str(synth_dir / "annotations.json"),
            "--features",
            str(feats),
            "--kind",
            "window",
            "--window",
            "8",
            "--num-frames",
            "4",
            "--maxcount",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stats"]["dropped"]["past end of features"] == [0, past_end]
    assert manifest["totals"]["ads"] == 60 - past_end
    samples = [s for v in read_back(out).values() for s in v]
    assert len(samples) == manifest["totals"]["samples"] == 3 + 3 + math.ceil((20 - past_end) / 8)
    first = samples[0]
    assert first["feats.npy"].dtype == np.float16 and first["feats.npy"].shape == (8, 4, 32)
    # the stored features are the AutoAD-II sampled rows of the source file
    a = anns.by_movie()["synth0000"][0]
    with h5py.File(synth_dir / "features.h5") as f:
        src = f["synth0000"][()]
    s, e = math.floor(a.start * 5), math.ceil(a.end * 5)
    idx = np.floor(np.linspace(s, e - 1, 4, endpoint=False)).astype(int)
    np.testing.assert_allclose(first["feats.npy"][0].astype(np.float32), src[idx], atol=2e-3)
    last = [x for x in samples if x["json"]["movie"] == "synth0002"][-1]
    n = last["json"]["num_valid"]
    assert last["mask.npy"][:n].all() and not last["mask.npy"][n:].any() and not last["feats.npy"][n:].any()


def test_exclusion_and_duration_curation(synth_dir, tmp_path):
    excl = tmp_path / "exclude.txt"
    excl.write_text("# broken\nsynth0001\n")
    ref = tmp_path / "ref.json"
    anns = read_annotations(synth_dir / "annotations.json")
    durations = {m: ads[0].movie_duration for m, ads in anns.by_movie().items()}
    ref.write_text(
        json.dumps({"synth0000": durations["synth0000"] / 60 + 2.0, "synth0002": durations["synth0002"] / 60})
    )
    out = tmp_path / "cur"
    main(
        [
            "build",
            "--annotations",
            str(synth_dir / "annotations.json"),
            "--kind",
            "window",
            "--exclude",
            str(excl),
            "--duration-ref",
            str(ref),
            "--drop-duration-mismatch",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["movies"] == ["synth0002"]
    assert manifest["curation"]["dropped"] == {"synth0000": "duration mismatch", "synth0001": "excluded"}
    assert {s["json"]["movie"] for v in read_back(out).values() for s in v} == {"synth0002"}


def test_mad_train_preset_drops_exactly_the_six(tmp_path):
    ids = ["4797", "4839", "5900", "4017", "4902", "5634", "1234", "9999"]
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("movie,sentence,start,end\n" + "".join(f"{m},AD of {m}.,1,2\n" for m in ids))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"TRAIN": ids[:-1], "EVAL": ["9999"]}))
    out = tmp_path / "p"
    main(
        [
            "build",
            "--annotations",
            str(csv_path),
            "--exclude",
            "preset:mad-train",
            "--split-file",
            str(split),
            "--split-key",
            "TRAIN",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["movies"] == ["1234"]
    assert manifest["stats"]["dropped"] == {"excluded": [6, 6], "not in split/include list": [1, 1]}
    with pytest.raises(SystemExit, match="error: unknown movie-list preset"):
        main(["build", "--annotations", str(csv_path), "--exclude", "preset:nope", "--out", str(out)])
