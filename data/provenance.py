"""What a shard set is: its manifest, as an MLflow dataset record, and whether its features are synthetic.

SynthMAD's feature mode writes window features that are exact sums of factor embeddings (scene, character,
action...), so subtracting the shared context is trivially right there and results on them flatter the method.
Tables built on such shards say "synthetic features" (:func:`synthetic_features`); the frames -> Stage-I ->
``distinctad-extract`` path gives real CLIP features of SynthMAD's rendered frames.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from distinctad.data.shardlist import expand_shards, is_remote

SYNTHETIC_LABEL = "synthetic features"
"""The words every table built on SynthMAD feature-mode windows carries."""


def find_manifest(shards: str) -> Path | None:
    """The ``manifest.json`` beside the shards of a folder, a shard, a glob or a brace pattern; None if absent."""
    if not shards:
        return None
    if os.path.isdir(shards):
        p = Path(shards) / "manifest.json"
        return p if p.is_file() else None
    try:
        urls = expand_shards(shards)
    except ValueError:
        return None
    if is_remote(urls[0]):
        return None
    p = Path(os.path.dirname(urls[0])) / "manifest.json"
    return p if p.is_file() else None


def _read(shards: str) -> tuple[Path | None, dict]:
    p = find_manifest(shards)
    if p is None:
        return None, {}
    try:
        return p, json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return p, {}


def synthetic_features(shards: str) -> bool:
    """Whether window shards hold SynthMAD feature-mode features: their manifest's ``features`` source is a SynthMAD
    ``features.h5`` (the folder that holds it has SynthMAD's ``synthmad.json``). Extracted features (frames ->
    CLIP) and real MAD features are not."""
    _, m = _read(shards)
    for src in m.get("sources", []):
        if src.get("role") == "features" and (Path(src.get("path", "")).parent / "synthmad.json").is_file():
            return True
    return False


SYNTHETIC_NOTE = (
    f"{SYNTHETIC_LABEL}: these windows are SynthMAD feature-mode windows, exact sums of factor embeddings, on which "
    "subtracting the shared context is trivially right; not numbers to report (use frames -> Stage-I -> "
    "distinctad-extract features)"
)
"""The notice a report scored on such windows carries."""


def dataset_record(shards: str, context: str) -> dict | None:
    """An MLflow dataset description of a shard set (None without a manifest).

    Returns:
        ``{"name", "source", "digest", "context", "profile", "schema"}``: ``source`` is the shard folder, ``digest``
        the first 16 hex digits of the sha256 of the manifest file (it lists every shard's sha256, so it names the
        exact data), ``profile`` the sample, AD, movie and shard counts, ``schema`` the kind and its shapes.
    """
    p, m = _read(shards)
    if p is None or not m:
        return None
    totals = m.get("totals", {})
    opts = m.get("options", {})
    name = f"{m.get('kind', 'shards')}-{m.get('split', '?')}"
    if synthetic_features(shards):
        name += f" ({SYNTHETIC_LABEL})"
    elif "extraction" in m:  # written by distinctad-extract
        name += " (CLIP-AD features)" if m["extraction"].get("adapted") else " (vanilla CLIP features)"
    return {
        "name": name,
        "source": str(p.parent.resolve()),
        "digest": hashlib.sha256(p.read_bytes()).hexdigest()[:16],
        "context": context,
        "profile": {
            "samples": totals.get("samples"),
            "ads": totals.get("ads"),
            "movies": totals.get("movies"),
            "shards": totals.get("shards"),
            "bytes": totals.get("bytes"),
        },
        "schema": {
            "kind": m.get("kind"),
            "window": opts.get("window"),
            "num_frames": opts.get("num_frames"),
            "feature_dim": m.get("feature_dim"),
            "text_only": m.get("text_only"),
        },
    }
