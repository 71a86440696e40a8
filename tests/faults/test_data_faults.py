"""Bad data is skipped and counted, and the job finishes: a truncated shard, a corrupt npy, an empty AD (Stage-II
job on SynthMAD window shards), a corrupt JPEG and an empty AD in Stage-I frames shards (the reader).

An AD whose sentence is empty is never trained on: the training reader skips the whole sample (a window's clips
are each other's context and distinctive-word negatives) and counts it with the corrupt ones.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from distinctad.data.cli import main as shards_cli
from distinctad.data.synth_default import ensure_synthmad
from distinctad.data.synthmad import write_synthmad
from distinctad.data.wds_pipeline import get_wds_loader
from distinctad.testing import REPO, metrics_rows, rewrite_tar, run_cmd

pytestmark = pytest.mark.slow


def _first_key(shard: Path) -> str:
    with tarfile.open(shard) as tf:
        return tf.getmembers()[0].name.split(".", 1)[0]


@pytest.fixture(scope="module")
def bad_windows(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """SynthMAD window shards (D=64) with a truncated shard, a corrupt feats.npy and an empty AD."""
    root = tmp_path_factory.mktemp("synthmad")
    dirs = ensure_synthmad(root, kinds=("window",), feature_dim=64)
    bad = root / "bad-train"
    shutil.copytree(dirs["window-train"], bad)
    tars = sorted(bad.glob("*.tar"))
    assert len(tars) >= 4
    keys = {"npy": _first_key(tars[0]), "empty": _first_key(tars[1])}

    def corrupt_npy(name: str, data: bytes) -> bytes:
        return b"\x93NUMPY garbage" if name == f"{keys['npy']}.feats.npy" else data

    def empty_ad(name: str, data: bytes) -> bytes:
        if name != f"{keys['empty']}.json":
            return data
        meta = json.loads(data)
        meta["sentence"][1] = "  "
        return json.dumps(meta).encode()

    rewrite_tar(tars[0], corrupt_npy)
    rewrite_tar(tars[1], empty_ad)
    truncated = tars[2].read_bytes()
    tars[2].write_bytes(truncated[: len(truncated) // 2])
    keys["truncated_shard"] = tars[2].name
    return bad, Path(dirs["window-eval"]), keys


def test_training_reader_skips_and_counts_bad_windows(bad_windows):
    bad, _, keys = bad_windows
    d = get_wds_loader(str(bad), "window", 2, is_train=True, seed=0)
    d.set_epoch(0)
    seen = [k for b in d.dataloader for k in b["key"]]
    assert len(seen) == 2 * d.num_batches  # the epoch still has its full batch count
    assert keys["npy"] not in seen and keys["empty"] not in seen
    assert d.num_skipped >= 3  # corrupt npy, empty AD, truncated tar (each time the repeating stream meets them)


def test_stage2_job_finishes_on_bad_shards_and_reports_the_count(bad_windows, tmp_path):
    bad, eval_dir, keys = bad_windows
    out = tmp_path / "run"
    proc = run_cmd(
        [
            "bash",
            str(REPO / "launch/stage2.sh"),
            str(REPO / "launch/configs/stage2.yaml"),
            "--tracking.enabled",
            "false",
            "--model.feature_dim",
            "64",
            "--data.train_shards",
            str(bad),
            "--data.eval_shards",
            str(eval_dir),
            "--run.out_dir",
            str(out),
            "--train.max_steps",
            "8",
            "--train.log_every",
            "4",
            "--train.ckpt_every",
            "0",
            "--eval.enabled",
            "false",
        ],
        cwd=tmp_path,
        env={"DISTINCTAD_SAMPLE_SHUFFLE_SIZE": "4", "DISTINCTAD_SAMPLE_SHUFFLE_INITIAL": "2"},
    )
    err = proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 8
    assert summary["skipped_samples"] >= 3
    logged = [r["data/skipped_samples"] for r in metrics_rows(out) if "data/skipped_samples" in r]
    assert logged and logged[-1] <= summary["skipped_samples"] and logged == sorted(logged)
    # each skip is logged with the sample (or the shard) and why
    assert f"{keys['npy']}: ValueError: we only support format version" in err
    assert f"{keys['empty']}: empty AD sentence (sample skipped in training)" in err
    assert re.search(rf"ReadError: unexpected end of data .*{keys['truncated_shard']}", err)
    assert f"tokenizer training skips unreadable shard {bad / keys['truncated_shard']}" in err
    assert f"{summary['skipped_samples']} corrupt or unusable samples were skipped" in err


def test_frames_reader_skips_corrupt_jpeg_and_empty_ad(tmp_path):
    synth = tmp_path / "synth"
    write_synthmad(synth, movies=2, ads_per_movie=6, seed=3, videos=True, features=False, video_size=32)
    out = tmp_path / "frames"
    shards_cli(
        [
            "build",
            "--annotations",
            str(synth / "annotations.json"),
            "--videos",
            str(synth / "videos"),
            "--kind",
            "frames",
            "--num-frames",
            "2",
            "--short-side",
            "12",
            "--maxcount",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    tars = sorted(out.glob("*.tar"))
    jpeg_key, empty_key = _first_key(tars[0]), _first_key(tars[1])

    def corrupt_jpeg(name: str, data: bytes) -> bytes:
        return data[: len(data) // 3] if name == f"{jpeg_key}.01.jpg" else data

    def empty_ad(name: str, data: bytes) -> bytes:
        if name == f"{empty_key}.json":
            return json.dumps({**json.loads(data), "sentence": ""}).encode()
        return b"" if name == f"{empty_key}.txt" else data

    rewrite_tar(tars[0], corrupt_jpeg)
    rewrite_tar(tars[1], empty_ad)
    d = get_wds_loader(str(out), "frames", 2, is_train=True, seed=0)
    d.set_epoch(0)
    seen = [k for b in d.dataloader for k in b["key"]]
    assert len(seen) == 2 * d.num_batches == 12
    assert jpeg_key not in seen and empty_key not in seen
    assert d.num_skipped >= 2
    # eval keeps every readable sample (an empty AD is still a reference), only the broken JPEG is skipped
    e = get_wds_loader(str(out), "frames", 2, is_train=False, pad_eval=False)
    keys = [k for b in e.dataloader for k in b["key"]]
    assert jpeg_key not in keys and empty_key in keys and len(keys) == 11 and e.num_skipped == 1
