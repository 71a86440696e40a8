"""Streaming reader: batches, resume, eval exactly-once over ranks, corrupt samples, no unpickling."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

from distinctad.data.cli import main
from distinctad.data.wds_pipeline import get_wds_loader
from distinctad.testing import REPO, deepspeed_cmd, run_cmd


@pytest.fixture(scope="module")
def win_shards(synth_dir, tmp_path_factory) -> Path:
    """15 windows (3 movies x 5 windows of 4 ADs, T=4, D=32) in 8 shards of at most 2."""
    out = tmp_path_factory.mktemp("win")
    main(
        [
            "build",
            "--annotations",
            str(synth_dir / "annotations.json"),
            "--features",
            str(synth_dir / "features.h5"),
            "--kind",
            "window",
            "--window",
            "4",
            "--num-frames",
            "4",
            "--maxcount",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    return out


def all_keys(shard_dir: Path) -> list[str]:
    keys = []
    for p in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(p) as tf:
            keys += sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})
    return keys


def rewrite_member(shard: Path, name: str, data: bytes) -> None:
    """Replace one tar member, or add it right after the other members of its sample."""
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    names = [m.name for m, _ in members]
    if name in names:
        members[names.index(name)] = (members[names.index(name)][0], data)
    else:
        key = name.split(".", 1)[0]
        last = max(i for i, n in enumerate(names) if n.split(".", 1)[0] == key)
        members.insert(last + 1, (tarfile.TarInfo(name), data))
    with tarfile.open(shard, "w") as tf:
        for m, content in members:
            m.size = len(content)
            tf.addfile(m, io.BytesIO(content))


def collect(loader):
    return [b for b in loader]


def test_window_batch_contract(win_shards):
    d = get_wds_loader(str(win_shards), "window", 4, is_train=False, num_workers=0, pad_eval=False)
    batches = collect(d.dataloader)
    b = batches[0]
    assert set(b) == {"feats", "frame_mask", "clip_mask", "sentences", "context", "movie", "ad_index", "key", "valid"}
    assert b["feats"].shape == (4, 4, 4, 32) and b["feats"].dtype == torch.float16
    assert b["frame_mask"].shape == (4, 4, 4) and b["clip_mask"].shape == (4, 4) and b["ad_index"].shape == (4, 4)
    assert b["key"][:2] == ["synth0000__000000", "synth0000__000004"]
    assert b["ad_index"][1].tolist() == [4, 5, 6, 7] and b["sentences"][1][0] != ""
    assert b["context"][1] == b["sentences"][0][1:4]  # K=3 previous ADs
    assert [len(x["key"]) for x in batches] == [4, 4, 4, 3] and d.num_batches == 4


def test_training_resume_skips_exactly_n_batches(win_shards, monkeypatch):
    monkeypatch.setenv("DISTINCTAD_SAMPLE_SHUFFLE_SIZE", "4")
    d = get_wds_loader(str(win_shards), "window", 2, is_train=True, num_workers=2, seed=5)
    assert d.num_batches == 8  # ceil(15 / 2) = 8 batches, 4 per worker
    d.set_epoch(3)
    full = [b["key"] for b in d.dataloader]
    d.set_epoch(3, skip_batches=3)
    resumed = [b["key"] for b in d.dataloader]
    assert len(full) == 8 and resumed == full[3:]
    d.set_epoch(4)
    assert [b["key"] for b in d.dataloader] != full  # a new epoch reshuffles


def test_eval_padding_gives_each_sample_once_over_simulated_ranks(win_shards):
    seen, counts = [], []
    for rank in range(3):
        d = get_wds_loader(str(win_shards), "window", 2, is_train=False, num_workers=2, rank=rank, world_size=3)
        batches = collect(d.dataloader)
        counts.append((len(batches), d.num_batches))
        for b in batches:
            for k, v, idx in zip(b["key"], b["valid"].tolist(), b["ad_index"]):
                if v:
                    seen.append(k)
                else:
                    assert k == "" and (idx == -1).all()
    assert sorted(seen) == sorted(all_keys(win_shards)) and len(seen) == 15
    assert len({c for c in counts}) == 1 and counts[0][0] == counts[0][1]


def test_pickle_member_is_never_unpickled(win_shards, tmp_path):
    class Payload:
        def __init__(self, path):
            self.path = path

        def __reduce__(self):
            return (open, (self.path, "w"))

    proof = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(Payload(str(proof))))
    assert proof.exists()  # the payload is live: unpickling it creates a file
    target = tmp_path / "pwned.txt"
    shards = tmp_path / "evil"
    shards.mkdir()
    src = sorted(win_shards.glob("*.tar"))[0]
    evil = shards / src.name
    evil.write_bytes(src.read_bytes())
    rewrite_member(evil, "synth0000__000000.pyd", pickle.dumps(Payload(str(target))))
    rewrite_member(evil, "synth0000__000004.pickle", pickle.dumps(Payload(str(target))))
    d = get_wds_loader([str(evil)], "window", 2, is_train=False, window=4)  # no manifest beside it: give N
    (b,) = collect(d.dataloader)
    assert b["key"] == ["synth0000__000000", "synth0000__000004"]  # the samples themselves still load
    assert not target.exists() and d.num_unsafe == 2 and d.num_skipped == 0


def test_frames_loader_with_preprocess(synth_dir, tmp_path):
    out = tmp_path / "fr"
    main(
        [
            "build",
            "--annotations",
            str(synth_dir / "annotations.json"),
            "--videos",
            str(synth_dir / "videos"),
            "--kind",
            "frames",
            "--num-frames",
            "3",
            "--short-side",
            "12",
            "--maxcount",
            "30",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    pre = lambda img: torch.full((3, 5, 5), float(img.size[0]))  # noqa: E731
    d = get_wds_loader(str(out), "frames", 7, is_train=True, num_workers=0, preprocess=pre)
    b = next(iter(d.dataloader))
    assert b["images"].shape == (7, 3, 3, 5, 5) and (b["images"] == 12).all()
    assert set(b) == {"images", "sentence", "movie", "ad_index", "key", "valid"} and b["valid"].dtype == torch.bool
    assert b["ad_index"].shape == (7,) and all(k.startswith(m) for k, m in zip(b["key"], b["movie"]))
    assert all(s.endswith(".") for s in b["sentence"])


@pytest.mark.slow
def test_two_ranks_under_deepspeed(win_shards, tmp_path):
    """One deepspeed launch: eval exactly-once + equal batch counts, a corrupt sample skipped and counted."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for p in win_shards.iterdir():
        (shards / p.name).write_bytes(p.read_bytes())
    rewrite_member(shards / "train-000003.tar", "synth0001__000004.feats.npy", b"\x93NUMPY garbage")
    out = tmp_path / "out"
    out.mkdir()
    run_cmd(
        deepspeed_cmd(2, REPO / "tests/data/ds_reader_check.py", str(shards), str(out)),
        cwd=tmp_path,
        env={"DISTINCTAD_SAMPLE_SHUFFLE_SIZE": "4"},
    )
    r = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    assert [x["world"] for x in r] == [2, 2]
    keys = r[0]["eval_keys"] + r[1]["eval_keys"]
    expected = [k for k in all_keys(win_shards) if k != "synth0001__000004"]
    assert sorted(keys) == sorted(expected) and len(keys) == len(set(keys)) == 14
    assert r[0]["eval_batches"] == r[1]["eval_batches"] == r[0]["eval_num_batches"]
    assert r[0]["eval_skipped"] + r[1]["eval_skipped"] == 1  # the corrupt sample, on the rank that owns shard 3
    # training: ceil(15 / (2 * 2)) = 4 batches, rounded to 2 workers -> 4 per rank, every epoch, on both ranks
    assert r[0]["train_batches"] == r[1]["train_batches"] == [4, 4] and r[0]["train_num_batches"] == 4
    assert r[1]["train_skipped"] >= 1 or r[0]["train_skipped"] >= 1


def test_worker_batches_equal_in_process_batches(win_shards, monkeypatch):
    """Arrays cross from workers as pickled numpy or through each worker's ring of shared-memory segments (copied out
    by the main process); either way the windows are the same tensors, also when every batch is kept while the
    rings wrap around many times (batch size 1: 7-8 batches per worker, rings of 4)."""
    from distinctad.data import wds_pipeline

    def windows(workers: int, batch_size: int) -> dict[str, tuple]:
        d = get_wds_loader(str(win_shards), "window", batch_size, is_train=False, num_workers=workers, pad_eval=False)
        out = {}
        for b in d.dataloader:
            assert not b["feats"].is_shared()  # a ring segment is reused: the batch holds a copy
            for name in ("feats", "frame_mask", "clip_mask", "ad_index", "valid"):
                assert isinstance(b[name], torch.Tensor), name
            assert b["feats"].dtype == torch.float16 and b["ad_index"].dtype == torch.int64
            for i, key in enumerate(b["key"]):
                out[key] = (b["feats"][i], b["frame_mask"][i], b["clip_mask"][i], b["ad_index"][i], b["sentences"][i])
        return out

    ref = windows(0, 4)
    assert len(ref) == 15
    assert wds_pipeline._SHM_RING * 2 * 1 < 15
    for shm_min, batch_size in ((1 << 30, 4), (0, 4), (0, 1)):  # everything pickled; the features in shared memory
        monkeypatch.setattr(wds_pipeline, "_SHM_MIN_BYTES", shm_min)
        got = windows(2, batch_size)
        assert got.keys() == ref.keys()
        for key, row in got.items():
            *arrays, sentences = row
            assert all(torch.equal(a, b) for a, b in zip(arrays, ref[key][:4])), key
            assert sentences == ref[key][4]


def test_a_rank_leaves_a_core_to_each_loader_worker(win_shards, monkeypatch):
    from distinctad import common

    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(common, "thread_budget", lambda: 3)
    try:
        for workers, want in ((0, 3), (1, 2), (2, 1), (5, 1)):
            get_wds_loader(str(win_shards), "window", 2, is_train=False, num_workers=workers)
            assert torch.get_num_threads() == want, workers
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's word: left as it is
        torch.set_num_threads(2)
        get_wds_loader(str(win_shards), "window", 2, is_train=False, num_workers=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_ring_segments_are_reused_per_slot_and_batch(monkeypatch):
    """In a worker, a batch's k-th big tensor takes segment (batch mod ring) of ring k: the same storage returns
    every _SHM_RING batches, and two tensors of one batch never share one."""
    from distinctad.data import wds_pipeline as W

    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    monkeypatch.setattr(W, "_SHM_POOL", {})
    monkeypatch.setattr(W, "_SHM_AT", {"batch": 0, "slot": 0})
    seen = []
    for _ in range(2 * W._SHM_RING):
        W._next_batch()
        a = W._batch_tensor((512, 256), torch.float16)  # 256 KiB: shared
        b = W._batch_tensor((512, 256), torch.float16)
        small = W._batch_tensor((4,), torch.int64)
        assert a.is_shared() and b.is_shared() and not small.is_shared()
        assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
        seen.append((a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()))
    assert seen[: W._SHM_RING] == seen[W._SHM_RING :] and len(set(seen)) == W._SHM_RING


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "bool", "int64", ">i4"])
def test_npy_loader_equals_np_load_and_rejects_truncation(order, dtype):
    import numpy as np

    from distinctad.data.decode import _load_npy

    arr = np.asarray(np.arange(24).reshape(2, 3, 4) % 5, dtype=dtype, order=order)
    buf = io.BytesIO()
    np.save(buf, arr)
    data = buf.getvalue()
    for _ in range(2):  # parsed, then from the memoised header
        got = _load_npy(data)
        assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr)
        with pytest.raises(ValueError):
            _load_npy(data[:-3])
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        _load_npy(obj.getvalue())
