"""The reader's lean tar walk yields exactly what webdataset's tarfile walk yields, and fails where it fails."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
import webdataset as wds

from distinctad.data.tarstream import plain_tar_members, tar_samples


def _write_tar(path, members, fmt=tarfile.PAX_FORMAT):
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _both(urls):
    """Samples from webdataset's stage and from ours, plus the errors each handler saw."""
    out = []
    for stage in (wds.tarfile_to_samples, lambda handler: tar_samples(handler)):
        errors = []

        def handler(e, errors=errors):
            errors.append(str(e).split(" @ ")[0])
            return True

        samples = list(wds.DataPipeline(wds.SimpleShardList([str(u) for u in urls]), stage(handler=handler)))
        out.append((samples, errors))
    return out


MEMBERS = [
    ("a__000000.json", b'{"x": 1}'),
    ("a__000000.feats.npy", bytes(range(256)) * 9),
    ("d", None),  # a folder: skipped
    ("__meta__", b"skipped"),
    ("a__000001.json", b"{}"),
    ("a__000001.TXT", b"upper-case suffix"),
    ("m%C3%A9" + "x" * 120 + "__000002.json", b"long name"),  # > 100 bytes
    ("dir/sub/b__000003.json", b"in a folder"),
    ("caf\u00e9__000004.json", b"non-ASCII name"),
    ("e__000005.json", b""),  # empty member
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_same_samples_as_webdataset(tmp_path, fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if m[0].isascii() and len(m[0]) < 100]
    members = [*members, ("p" * 120 + "/f__000006.json", b"ustar prefix field")]
    _write_tar(tmp_path / "a.tar", members, fmt)
    _write_tar(tmp_path / "b.tar", [("a__000000.json", b"same key, next shard")], fmt)
    (wds_samples, wds_errors), (ours, our_errors) = _both([tmp_path / "a.tar", tmp_path / "b.tar"])
    assert ours == wds_samples and our_errors == wds_errors == []
    assert len(ours) == len({m[0].split(".")[0] for m in members if m[1] is not None and m[0] != "__meta__"}) + 1
    assert ours[-1] == {"__key__": "a__000000", "__url__": str(tmp_path / "b.tar"), "json": b"same key, next shard"}


def test_truncated_and_corrupt_shards_are_handed_to_the_handler(tmp_path):
    _write_tar(tmp_path / "ok.tar", MEMBERS[:2])
    data = (tmp_path / "ok.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1700])  # inside the second member's data (it starts at 1536)
    (tmp_path / "cut_header.tar").write_bytes(data[:1500])  # inside the second header
    bad = bytearray(data)
    bad[1024 + 20] ^= 0xFF  # a byte of the second header (at 1024)'s name: checksum mismatch
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    (_, wds_errors), (ours, our_errors) = _both([tmp_path / "cut.tar", tmp_path / "ok.tar"])
    # One counted error, the shard ends, the next shard's sample is whole. (webdataset's walk reports it three
    # times and pairs the cut shard's json with the next shard's feats.npy under one key.)
    assert our_errors == ["unexpected end of data"] and len(wds_errors) == 3
    assert [sorted(k for k in s if not k.startswith("__")) for s in ours] == [["json"], ["feats.npy", "json"]]
    assert ours[1]["json"] == b'{"x": 1}' and ours[1]["__url__"].endswith("ok.tar")
    # a header cut short ends tarfile's walk silently; ours counts it (the shard's end is lost, not just unread)
    (wds_samples, wds_errors), (ours, our_errors) = _both([tmp_path / "cut_header.tar"])
    assert ours == wds_samples and len(ours) == 1 and wds_errors == [] and our_errors == ["unexpected end of data"]
    with open(tmp_path / "bad.tar", "rb") as f, pytest.raises(tarfile.ReadError, match="bad checksum @ bad.tar"):
        list(plain_tar_members(f, "bad.tar"))


def test_compressed_shards_take_webdataset_walk(tmp_path):
    _write_tar(tmp_path / "a.tar", MEMBERS[:2])
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress((tmp_path / "a.tar").read_bytes()))
    (wds_samples, _), (ours, our_errors) = _both([tmp_path / "a.tar.gz"])
    assert ours == wds_samples and len(ours) == 1 and our_errors == []
