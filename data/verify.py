"""Shard verification (``distinctad-shards verify``): every shard re-hashed against ``manifest.json``.

Missing, truncated, resized and corrupt shards, shards the manifest does not list, and an unfinished build are each
named with their problem; ``deep`` also walks every tar's members and counts its samples.
"""

from __future__ import annotations

import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distinctad.data.shards import file_sha256, load_manifest


@dataclass
class VerifyReport:
    """What :func:`verify_shards` found: the shards that passed, and a problem per shard (or the manifest)."""

    ok: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # shard (or manifest) -> problem

    @property
    def passed(self) -> bool:
        return not self.problems


def verify_shards(out_dir: str | os.PathLike, *, deep: bool = False) -> VerifyReport:
    """Re-hash every shard against ``manifest.json``: missing, truncated, corrupt shards are named.

    Args:
        out_dir: the shard folder.
        deep: also walk every tar member (catches a manifest rewritten to match a broken tar).
    """
    out = Path(out_dir)
    report = VerifyReport()
    manifest = load_manifest(out)
    if manifest is None:
        from distinctad.data.parts import part_manifests

        parts = part_manifests(out)
        if parts:
            n = max(c for _, c in parts)
            report.problems["manifest.json"] = (
                f"missing: {len(parts)} part manifest(s) of a build in {n} parts; run `distinctad-shards merge {out}`"
            )
        else:
            report.problems["manifest.json"] = "missing or not valid JSON"
        return report
    if not manifest.get("complete", False):
        report.problems["manifest.json"] = "build incomplete (re-run build to resume)"
    for rec in manifest.get("shards", []):
        path = out / rec["file"]
        if not path.is_file():
            report.problems[rec["file"]] = "missing"
            continue
        size = path.stat().st_size
        if size < rec["bytes"]:
            report.problems[rec["file"]] = f"truncated ({size} of {rec['bytes']} bytes)"
            continue
        if size != rec["bytes"]:
            report.problems[rec["file"]] = f"size mismatch ({size} bytes, manifest says {rec['bytes']})"
            continue
        if file_sha256(path) != rec["sha256"]:
            report.problems[rec["file"]] = "corrupt (sha256 mismatch)"
            continue
        if deep:
            try:
                with tarfile.open(path) as tf:
                    names = [m.name for m in tf.getmembers()]
            except (tarfile.TarError, OSError, EOFError) as e:
                report.problems[rec["file"]] = f"unreadable tar ({e})"
                continue
            twice = next((name for name, count in Counter(names).items() if count > 1), None)
            if twice is not None:
                # Two samples under one key: every reader merges them into one (a set built before keys were injective).
                key = twice.split(".", 1)[0]
                report.problems[rec["file"]] = f"member {twice!r} appears twice: two samples share key {key!r}; rebuild"
                continue
            n = len({name.split(".", 1)[0] for name in names})
            if n != rec["samples"]:
                report.problems[rec["file"]] = f"holds {n} samples, manifest says {rec['samples']}"
                continue
        report.ok.append(rec["file"])
    listed = {rec["file"] for rec in manifest.get("shards", [])}
    for path in sorted(out.glob("*.tar")):
        if path.name not in listed:
            report.problems[path.name] = "not in manifest"
    return report
