"""Shard lists and sizes: which tars a shard argument names, how many samples each holds, what made them.

Used by the streaming reader (``wds_pipeline.py``) to size epochs, and by the jobs and tools that take a
``--shards`` / ``--frames`` argument (a list, a folder of ``*.tar`` or a brace pattern).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

from distinctad.common import warn_once

logger = logging.getLogger(__name__)


def is_remote(url: str) -> bool:
    """Whether a shard URL is read by webdataset's own openers (``pipe:``, ``s3://``...) rather than from disk."""
    return url.startswith("pipe:") or "://" in url


def _expand_urls(spec: str) -> list[str]:
    # webdataset imports torch (~2.5 s): imported on use, so the shard builder's CLI and workers start light.
    import webdataset as wds

    return wds.shardlists.expand_urls(spec)


def expand_shards(shards: str | list[str]) -> list[str]:
    """Shard paths from a list, a folder (all ``*.tar``), a glob ``dir/train-*.tar`` or a brace pattern
    ``dir/train-{000000..000009}.tar``. Existence is not checked here (see :func:`distinctad.data.paths.check_shards`).
    """
    if isinstance(shards, (list, tuple)):
        urls = [str(s) for s in shards]
    elif os.path.isdir(shards):
        urls = [str(p) for p in sorted(Path(shards).glob("*.tar"))]
    elif any(c in shards for c in "*?[") and not is_remote(shards):
        urls = sorted(p for pattern in _expand_urls(shards) for p in glob.glob(pattern))
    else:
        urls = _expand_urls(shards)
    if not urls:
        raise ValueError(f"no shards found in {shards!r}")
    return urls


def _count_tar_samples(path: str) -> int:
    """Samples of a tar by its member names; a truncated or unreadable tar counts what can be read (logged)."""
    import tarfile

    keys: set[str] = set()
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isfile():
                    keys.add(m.name.split(".", 1)[0])
    except (OSError, EOFError, tarfile.TarError) as e:
        why = " ".join(str(e).split())
        logger.warning("%s: unreadable after %d samples (%s); counting those", path, len(keys), why)
    return len(keys)


def shard_sizes(urls: list[str]) -> list[int]:
    """Samples per shard from the ``sizes.json`` beside each shard (tar headers are counted when missing)."""
    cache: dict[str, dict] = {}
    out = []
    for url in urls:
        folder = os.path.dirname(url)
        if folder not in cache:
            p = os.path.join(folder, "sizes.json")
            cache[folder] = json.loads(Path(p).read_text()) if os.path.isfile(p) else {}
        name = os.path.basename(url)
        if name in cache[folder]:
            out.append(int(cache[folder][name]))
        else:
            warn_once(logger, f"{folder}: no sizes.json entry for {name}; counting tar members")
            out.append(_count_tar_samples(url))
    return out


def manifest_info(urls: list[str]) -> dict:
    """``kind``, ``window``, ``num_frames``, ``feature_dim`` of the ``manifest.json`` beside the shards (or ``{}``)."""
    p = os.path.join(os.path.dirname(urls[0]), "manifest.json")
    if not os.path.isfile(p):
        return {}
    m = json.loads(Path(p).read_text())
    opts = m.get("options", {})
    return {
        "kind": m.get("kind"),
        "window": opts.get("window"),
        "num_frames": opts.get("num_frames"),
        "feature_dim": m.get("feature_dim"),
    }
