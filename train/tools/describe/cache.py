"""Phase cache of ``distinctad-describe``: a re-run reuses every finished phase.

Each phase's result is stored under ``DIR/.describe-cache/`` in a file named by the sha256 of what it depends on
(the film's bytes, the options of that phase and of the phases before it, the models' weights), written atomically,
so a killed run leaves only whole entries and a changed input or option simply misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from distinctad.common import atomic_path, atomic_write_json

CACHE_DIR = ".describe-cache"
VERSION = 1
"""Part of every key: bumped when what a phase stores changes, so an old cache is never misread."""


def key(*parts: Any) -> str:
    """sha256 (first 24 hex digits) of the JSON of ``parts``."""
    return hashlib.sha256(json.dumps([VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:24]


class PhaseCache:
    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir) / CACHE_DIR

    def path(self, phase: str, k: str, ext: str = "json") -> Path:
        return self.root / f"{phase}-{k}.{ext}"

    def get_json(self, phase: str, k: str) -> Any | None:
        p = self.path(phase, k)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # cannot happen with atomic writes; recompute if it does

    def put_json(self, phase: str, k: str, value: Any) -> Any:
        atomic_write_json(self.path(phase, k), value)
        return value

    def get_npy(self, phase: str, k: str) -> np.ndarray | None:
        p = self.path(phase, k, "npy")
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError):
            return None

    def put_npy(self, phase: str, k: str, arr: np.ndarray) -> np.ndarray:
        with atomic_path(self.path(phase, k, "npy")) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        return arr
