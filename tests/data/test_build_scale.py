"""MAD at full scale: cheap input identity, no rebuild on a hashing-mode change, builds in parts + merge."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from distinctad.data.cli import main
from distinctad.data.decode import iter_tar_samples
from distinctad.data.identity import (
    HashCache,
    full_sha256,
    input_record,
    same_input,
    sampled_sha256,
)
from distinctad.data.parts import Part, assign_parts, parse_part, part_from_env
from distinctad.data.wds_pipeline import get_wds_loader
from distinctad.eval.inputs import read_shard_references


def _window_args(synth_dir, out, *extra):
    return [
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
        "2",
        "--maxcount",
        "2",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _tars(out) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob("*.tar"))}


def _samples(out) -> dict[str, dict]:
    """key -> {member: bytes} of every shard of a folder (a key twice fails)."""
    seen: dict[str, dict] = {}
    for p in sorted(out.glob("*.tar")):
        for s in iter_tar_samples(str(p)):
            assert s["__key__"] not in seen
            seen[s["__key__"]] = {k: v for k, v in s.items() if not k.startswith("__")}
    return seen


# ---------------------------------------------------------------- input identity


def test_sampled_identity_small_file_is_a_content_hash(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"hello world")
    assert sampled_sha256(p) == hashlib.sha256(b"size=11;hello world").hexdigest()
    assert full_sha256(p) == hashlib.sha256(b"hello world").hexdigest()


def test_sampled_identity_of_a_big_file_reads_blocks_and_mtime_guards_the_rest(tmp_path):
    # 4 blocks of 4 bytes over 100 bytes: offsets 0, 32, 64, 96 (span 96 = 100 - 4, i * 96 // 3).
    p = tmp_path / "big.bin"
    data = bytes(range(100))
    p.write_bytes(data)
    expect = hashlib.sha256(b"size=100;" + data[0:4] + data[32:36] + data[64:68] + data[96:100]).hexdigest()
    assert sampled_sha256(p, blocks=4, block_bytes=4) == expect

    # The real defaults: a 5 MiB file is sampled, not read whole; an edit between blocks keeps the sampled hash ...
    big = tmp_path / "feats.h5"
    big.write_bytes(bytes(5 << 20))
    old = input_record("features", big)
    assert old["sha256"] is None and old["hash"] == "sampled"
    with open(big, "r+b") as f:
        f.seek(70_000)  # between block 0 (0..65,536) and block 1 (82,180.. = 5,177,344 * 1 // 63)
        f.write(b"x")
    os.utime(big, ns=(old["mtime_ns"] + 10**9, old["mtime_ns"] + 10**9))
    new = input_record("features", big)
    assert new["sampled"] == old["sampled"]
    # ... but the new mtime makes it "changed" when no full hash can be compared (never missed silently)
    assert same_input(old, new) == (
        False,
        "modified since the last build (new mtime) and no full hash to compare; use --verify-inputs full",
    )
    # with a full hash known for the old content the edit is found, and a mere touch is recognised
    big.write_bytes(bytes(5 << 20))
    os.utime(big, ns=(old["mtime_ns"], old["mtime_ns"]))
    full_old = input_record("features", big, mode="full")
    assert full_old["sha256"] == hashlib.sha256(bytes(5 << 20)).hexdigest()
    os.utime(big, ns=(old["mtime_ns"] + 5, old["mtime_ns"] + 5))  # touched
    assert same_input(full_old, input_record("features", big)) == (True, "")
    with open(big, "r+b") as f:
        f.seek(70_000)
        f.write(b"x")
    assert same_input(full_old, input_record("features", big)) == (False, "full sha256 differs")


def test_hash_cache_is_used_only_while_size_mtime_and_samples_match(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"abc")
    cache = HashCache(tmp_path / "out")
    rec = input_record("annotations", p, mode="full", cache=cache)
    cache.save()
    again = HashCache(tmp_path / "out")
    assert input_record("annotations", p, cache=again)["sha256"] == rec["sha256"] == full_sha256(p)
    os.utime(p, ns=(1, 1))
    assert input_record("annotations", p, cache=again)["sha256"] is None  # identity changed: not trusted


def test_switching_hash_mode_never_rebuilds_and_a_touch_neither(synth_dir, tmp_path, capsys):
    out = tmp_path / "win"
    main(_window_args(synth_dir, out))
    first = _tars(out)
    assert len(first) == 8  # 3 movies x 20 ADs -> 5 windows of 4 each -> 15 windows -> 8 shards of <= 2
    manifest = json.loads((out / "manifest.json").read_text())
    feats = next(s for s in manifest["sources"] if s["role"] == "features")
    assert feats["hash"] == "sampled" and feats["sampled"] == sampled_sha256(synth_dir / "features.h5")
    for mode in ("full", "sampled", "full"):
        capsys.readouterr()
        main(_window_args(synth_dir, out, "--verify-inputs", mode))
        assert "built 0 shard(s), skipped 8" in capsys.readouterr().out
        assert _tars(out) == first  # same bytes, same mtimes: nothing rewritten
    manifest = json.loads((out / "manifest.json").read_text())
    feats = next(s for s in manifest["sources"] if s["role"] == "features")
    assert feats["hash"] == "full" and feats["sha256"] == full_sha256(synth_dir / "features.h5")
    cached = json.loads((out / "input-hashes.json").read_text())
    assert cached[os.path.abspath(synth_dir / "features.h5")]["sha256"] == feats["sha256"]
    assert main(["verify", str(out)]) == 0

    # A copied feature file (new mtime, same bytes) is recognised by its cached full hash: nothing rebuilt.
    copy = tmp_path / "features.h5"
    copy.write_bytes((synth_dir / "features.h5").read_bytes())
    args = _window_args(synth_dir, out)
    args[args.index("--features") + 1] = str(copy)
    capsys.readouterr()
    main(args)
    assert "built 0 shard(s), skipped 8" in capsys.readouterr().out and _tars(out) == first


# ---------------------------------------------------------------- parts


def test_part_specs_and_array_environment():
    assert parse_part("3/8") == Part(3, 8) and Part(3, 8).tag == "p003of008" and Part(5, 1200).tag == "p0005of1200"
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2"}
    assert parse_part("auto", env=env) == Part(3, 4)
    assert part_from_env(
        {"SGE_TASK_ID": "7", "SGE_TASK_FIRST": "1", "SGE_TASK_LAST": "9", "SGE_TASK_STEPSIZE": "2"}
    ) == (Part(3, 5))
    assert part_from_env({"DISTINCTAD_PART": "1/2"}) == Part(1, 2)
    for bad in ("8/8", "x", "1/0"):
        with pytest.raises(ValueError, match="--part"):
            parse_part(bad)
    with pytest.raises(ValueError, match="no array-job environment"):
        part_from_env({})


def test_assign_parts_balances_ads_deterministically():
    ads = {"a": 10, "b": 9, "c": 5, "d": 5, "e": 1}
    # LPT: a->0 (10), b->1 (9), c->1 (14), d->0 (15), e->1 (15)
    assert assign_parts(ads, 2) == {"a": 0, "b": 1, "c": 1, "d": 0, "e": 1}
    assert assign_parts(dict(reversed(list(ads.items()))), 2) == assign_parts(ads, 2)
    assert set(assign_parts(ads, 8).values()) == {0, 1, 2, 3, 4}


def test_parts_built_apart_and_merged_equal_one_build(synth_dir, tmp_path, capsys):
    one, parts = tmp_path / "one", tmp_path / "parts"
    main(_window_args(synth_dir, one))
    for i in (2, 0, 1):  # any order, as array tasks finish
        main(_window_args(synth_dir, parts, "--part", f"{i}/3"))
    names = sorted(p.name for p in parts.glob("*.tar"))
    assert names[0] == "train-p000of003-000000.tar" and len(names) == 9  # 3 movies x 5 windows -> 3 shards each
    assert not (parts / "manifest.json").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["verify", str(parts)])
    assert "run `distinctad-shards merge" in capsys.readouterr().out

    main(["merge", str(parts)])
    assert "merged 3 parts: 9 shards, 15 samples, 60 ADs of 3 movies" in capsys.readouterr().out
    assert _samples(parts) == _samples(one)  # the same samples, byte for byte, each exactly once
    merged, single = (json.loads((d / "manifest.json").read_text()) for d in (parts, one))
    assert merged["movies"] == single["movies"] and merged["totals"]["ads"] == single["totals"]["ads"] == 60
    assert merged["stats"]["ads_read"] == single["stats"]["ads_read"] == 60
    assert json.loads((parts / "sizes.json").read_text()) == {n: (2 if n[-5] != "2" else 1) for n in names}
    assert main(["verify", str(parts), "--deep"]) == 0
    assert main(["inspect", str(parts), "-n", "1"]) == 0

    # The eval reader on 2 ranks sees every sample exactly once.
    keys = []
    for rank in range(2):
        data = get_wds_loader(str(parts), "window", 4, is_train=False, rank=rank, world_size=2)
        for batch in data.dataloader:
            keys += [k for k, v in zip(batch["key"], batch["valid"].tolist()) if v]
    assert sorted(keys) == sorted(_samples(one))
    # ... and so does the eval harness's ground truth
    refs_parts, refs_one = (read_shard_references(str(d)) for d in (parts, one))
    assert sorted(refs_parts, key=repr) == sorted(refs_one, key=repr) and len(refs_one) == 60

    # A part re-run after the merge with nothing to do leaves the merged set alone; mixing layouts is refused.
    main(_window_args(synth_dir, parts, "--part", "1/3"))
    assert (parts / "manifest.json").is_file()
    with pytest.raises(SystemExit, match="holds a build in parts"):
        main(_window_args(synth_dir, parts))
    with pytest.raises(SystemExit, match="holds a single-machine build"):
        main(_window_args(synth_dir, one, "--part", "0/2"))


def test_merge_names_missing_and_mismatched_parts(synth_dir, tmp_path):
    out = tmp_path / "parts"
    main(_window_args(synth_dir, out, "--part", "0/3"))
    with pytest.raises(SystemExit, match=r"error: .*2 of 3 parts missing: 1, 2"):
        main(["merge", str(out)])
    main(_window_args(synth_dir, out, "--part", "1/3", "--context", "1"))
    main(_window_args(synth_dir, out, "--part", "2/3"))
    with pytest.raises(SystemExit, match=r"manifest.p001of003.json: options differs from part 0"):
        main(["merge", str(out)])


# ---------------------------------------------------------------- workers


def test_worker_tar_bytes_equal_webdataset_tarwriter(tmp_path):
    import webdataset as wds

    from distinctad.data.build_worker import sample_tar_bytes, tar_end

    samples = [
        {
            "__key__": "m%C3%A9__000000",
            "json": b'{"sentence": "caf\\u00e9"}',
            "txt": "caf\u00e9".encode(),
            "feats.npy": b"x" * 700,
        },
        {"__key__": "m__000001", "json": b"{}", "00.jpg": bytes(range(256)) * 41, "_skip": b"meta"},
    ]
    with open(tmp_path / "ref.tar", "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=0, user="distinctad", group="distinctad")
        for s in samples:
            writer.write(s)
        writer.close()
    body = b"".join(sample_tar_bytes(s) for s in samples)
    assert body + tar_end(len(body)) == (tmp_path / "ref.tar").read_bytes()
    assert len(tar_end(len(body))) + len(body) == (tmp_path / "ref.tar").stat().st_size


def test_workers_spool_chunks_and_write_the_same_bytes(synth_dir, tmp_path):
    """Workers hand their chunks over as spooled files: the shards equal an in-process build byte for byte, and no
    spool folder is left, neither after a build nor (cleaned at start) after a killed one."""
    main(_window_args(synth_dir, tmp_path / "w0"))
    stale = tmp_path / "w2" / ".train-spool-killed"  # what a build killed mid-way leaves
    stale.mkdir(parents=True)
    (stale / "123-1.tar").write_bytes(b"partial")
    main(_window_args(synth_dir, tmp_path / "w2", "--workers", "2"))
    one, two = ({k: b for k, (_, b) in _tars(tmp_path / d).items()} for d in ("w0", "w2"))
    assert len(one) > 2 and one == two
    assert sorted(p.name for p in (tmp_path / "w2").iterdir()) == sorted(p.name for p in (tmp_path / "w0").iterdir())


PROC = Path("/proc")  # Linux process information
_SLOW_KIND_SCRIPT = """
import contextlib, os, sys, time
from pathlib import Path
from distinctad.data.annotations import AD
from distinctad.data import kinds
from distinctad.data.shards import BuildOptions, build_shards

PIDS = Path(sys.argv[2])

@contextlib.contextmanager
def slow_encoder(movie, opts, inputs):
    (PIDS / str(os.getpid())).touch()
    def encode(unit):
        time.sleep(60)
    yield encode

def select(movie, ads, opts, inputs):
    return ads, ""

def size(opts, dim):
    return 100

def one(meta):
    return 1

kinds.register_kind(kinds.SampleKind(
    name="slow", help="sleeps", inputs=(), required_inputs=(), select=select, units=kinds.window_units,
    estimate_bytes=size, encoder=slow_encoder, num_ads=one, decode=None, collate=None))

if __name__ == "__main__":
    by_movie = {m: [AD(m, i, float(i), i + 1.0, "x") for i in range(4)] for m in ("a", "b", "c", "d")}
    build_shards(sys.argv[1], by_movie, BuildOptions(kind="slow", window=1, maxcount=4), workers=2, progress=False)
"""


def _alive(pid: int) -> bool:
    try:
        with open(PROC / str(pid) / "stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not (PROC / "self").is_dir(), reason="reads /proc")
def test_workers_die_with_a_killed_build(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script, pids = tmp_path / "slow_build.py", tmp_path / "pids"
    script.write_text(_SLOW_KIND_SCRIPT)
    pids.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(pids)])
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2 and all(_alive(w) for w in workers)
        with open(PROC / str(workers[0]) / "stat") as f:
            server = int(f.read().rsplit(")", 1)[1].split()[1])  # the forkserver, the workers' parent
        assert server != proc.pid and _alive(server)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in [*workers, server]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in [*workers, server] if _alive(p)]
