"""Cheap, safe identity of a build's input files (annotations, feature file, films).

Hashing every input in full before writing anything costs ~50-90 s per run for MAD's 44 GB of features on one core
and >= 40 min for ~2 TB of films, on every run and every resume. Instead an input is identified by:

- ``bytes``: its size;
- ``sampled``: sha256 of its size and of :data:`SAMPLE_BLOCKS` blocks of :data:`SAMPLE_BLOCK_BYTES` spread evenly
  over the file, first and last block included (the whole file when it is smaller than that: then ``sampled`` *is*
  a content hash). At most 4 MiB read per file, whatever its size (our default);
- ``mtime_ns``: its modification time;
- ``sha256``: the full hash, only when it is known (``--verify-inputs full``, or cached from an earlier run).

The shard plan depends on ``(bytes, sampled)`` alone, never on the hashing mode, so switching modes never rebuilds
a shard. Two records of one input are the same input (:func:`same_input`) when size and sampled blocks match and
either the mtime is unchanged or both full hashes are known and equal; a file rewritten in place (new mtime) whose
full hash cannot be compared counts as changed, so an edit between the sampled blocks is never missed silently
(when the earlier build knew the full hash, the new one is computed and compared instead).

Full hashes are cached in ``input-hashes.json`` beside the manifest, keyed by path and valid while the file's size,
mtime and sampled blocks are unchanged; ``--verify-inputs full`` re-reads every input regardless (for the paranoid)
and refreshes the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from distinctad.common import atomic_write_json

logger = logging.getLogger(__name__)

SAMPLE_BLOCKS = 64
"""Blocks hashed per file by the sampled identity (our default)."""
SAMPLE_BLOCK_BYTES = 64 << 10
"""Bytes per sampled block (64 KiB: 4 MiB per file in all; our default)."""
VERIFY_MODES = ("sampled", "full")
"""``--verify-inputs`` choices: ``sampled`` (default, cheap) or ``full`` (re-read every input in full)."""
HASH_CACHE = "input-hashes.json"
"""File name of the full-hash cache, written beside ``manifest.json``."""


def full_sha256(path: str | os.PathLike) -> str:
    """sha256 of a whole file (hex), read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sampled_sha256(path: str | os.PathLike, blocks: int = SAMPLE_BLOCKS, block_bytes: int = SAMPLE_BLOCK_BYTES) -> str:
    """sha256 of a file's size and ``blocks`` blocks of ``block_bytes`` at evenly spaced offsets (first and last
    included); a file of at most ``blocks * block_bytes`` bytes is hashed whole. Reads <= ``blocks * block_bytes``."""
    size = os.path.getsize(path)
    h = hashlib.sha256(f"size={size};".encode())
    with open(path, "rb") as f:
        if size <= blocks * block_bytes:
            h.update(f.read())
        else:
            span = size - block_bytes
            for i in range(blocks):
                f.seek(span * i // (blocks - 1))
                h.update(f.read(block_bytes))
    return h.hexdigest()


class HashCache:
    """The full hashes of inputs, valid while (size, mtime, sampled blocks) are unchanged (``input-hashes.json``)."""

    def __init__(self, folder: str | os.PathLike | None, name: str | None = None):
        self.path = None if folder is None else Path(folder) / (name or HASH_CACHE)
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                logger.warning("%s: unreadable hash cache; ignoring it", self.path)

    def get(self, rec: dict) -> str | None:
        hit = self.entries.get(os.path.abspath(rec["path"]))
        if hit and all(hit.get(k) == rec[k] for k in ("bytes", "mtime_ns", "sampled")):
            return hit.get("sha256")
        return None

    def put(self, rec: dict) -> None:
        key = os.path.abspath(rec["path"])
        self.entries[key] = {k: rec[k] for k in ("bytes", "mtime_ns", "sampled", "sha256")}
        self.dirty = True

    def save(self) -> None:
        if self.path is not None and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, self.entries)
            os.chmod(self.path, 0o644)
            self.dirty = False


def input_record(role: str, path: str | os.PathLike, mode: str = "sampled", cache: HashCache | None = None) -> dict:
    """A manifest ``sources`` entry: ``{role, path, bytes, mtime_ns, sampled, sha256, hash}``.

    ``sha256`` is the full hash when ``mode == "full"`` (always re-read) or when ``cache`` holds it for this very
    size/mtime/sampled identity; otherwise ``None``. ``hash`` is the mode used.

    Raises:
        ValueError: unknown ``mode``.
        OSError: the file cannot be read.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"--verify-inputs must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    st = os.stat(path)
    rec = {
        "role": role,
        "path": str(path),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sampled": sampled_sha256(path),
        "sha256": None,
        "hash": mode,
    }
    if mode == "full":
        rec["sha256"] = full_sha256(path)
        if cache is not None:
            cache.put(rec)
    elif cache is not None:
        rec["sha256"] = cache.get(rec)
    return rec


def content_identity(rec: dict) -> list:
    """What of a source record the shard plan depends on: role, size, sampled blocks (never mode or mtime).

    Records written before sampled identities existed carry only ``sha256``; they give a different identity, so a
    set built by an older builder is rebuilt once.
    """
    return [rec.get("role"), rec.get("bytes"), rec.get("sampled") or rec.get("sha256")]


def same_input(old: dict, new: dict, cache: HashCache | None = None) -> tuple[bool, str]:
    """Whether two records of one input describe the same content, and why not (see the module docstring).

    When only the mtime differs and ``old`` knows its full hash, ``new``'s full hash is computed (and cached) to
    decide: a copied or touched input is recognised without rebuilding anything.
    """
    if content_identity(old) != content_identity(new):
        return False, "size or sampled blocks differ"
    if old.get("sha256") and not new.get("sha256") and old.get("mtime_ns") != new.get("mtime_ns"):
        new["sha256"] = full_sha256(new["path"])
        if cache is not None:
            cache.put(new)
    if old.get("sha256") and new.get("sha256"):
        return (True, "") if old["sha256"] == new["sha256"] else (False, "full sha256 differs")
    if old.get("mtime_ns") == new.get("mtime_ns"):
        return True, ""
    return False, "modified since the last build (new mtime) and no full hash to compare; use --verify-inputs full"


def sources_changed(old: list[dict], new: list[dict], cache: HashCache | None = None) -> str | None:
    """The first input whose content differs between two ``sources`` lists (paired by role), or ``None``."""
    old_by_role = {s.get("role"): s for s in old}
    for rec in new:
        prev = old_by_role.get(rec["role"])
        if prev is None:
            return f"{rec['role']}: new input"
        same, why = same_input(prev, rec, cache)
        if not same:
            return f"{rec['role']} ({rec['path']}): {why}"
    return None
