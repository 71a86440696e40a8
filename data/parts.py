"""Builds split across machines: ``--part i/n``, the movie -> part assignment, and ``merge``.

Every part reads the same annotations and curation options, so every part computes the same assignment of the
curated movies to ``n`` parts (:func:`assign_parts`) and builds its own movies only, into the same folder (shared
file system) or into folders gathered afterwards. A part's files carry its tag (``p003of008``):

- shards ``{split}-p003of008-{k:06d}.tar``, so parts never overwrite each other;
- its manifest ``manifest.p003of008.json`` (and hash cache ``input-hashes.p003of008.json``).

``distinctad-shards merge DIR`` (:func:`merge_parts`) then checks that all ``n`` part manifests are there, complete,
built with the same options from the same shared inputs and disjoint movies, and writes the ``manifest.json`` and
``sizes.json`` every reader, ``verify``, ``inspect`` and the eval harness already use: the parts become one dataset
in which each sample appears exactly once. Part shards are never renamed or rewritten by ``merge``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from distinctad.common import atomic_write_json
from distinctad.data.identity import content_identity

logger = logging.getLogger(__name__)

PART_HELP = (
    "Build only part I of N (0 <= I < N) of the curated movies, e.g. 3/8; 'auto' reads the array-job environment "
    "(SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, SGE_TASK_ID/SGE_TASK_FIRST/SGE_TASK_LAST, or DISTINCTAD_PART=I/N). "
    "Then run `distinctad-shards merge OUT` once every part is done."
)
_TAG = re.compile(r"^manifest\.p(\d+)of(\d+)\.json$")


@dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--part I/N needs 0 <= I < N and N >= 1, got {self.index}/{self.count}")

    @property
    def tag(self) -> str:
        """``p003of008``: in the part's shard and manifest names (3 digits, more when N > 999)."""
        width = max(3, len(str(self.count)))
        return f"p{self.index:0{width}d}of{self.count:0{width}d}"


def _env_int(env: dict, name: str) -> int | None:
    value = env.get(name, "")
    return int(value) if value.strip().lstrip("-").isdigit() else None


def part_from_env(env: dict | None = None) -> Part:
    """The part of this array task, from the scheduler's environment.

    SLURM (``--array=A-B[:S]``): index ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP``,
    count ``SLURM_ARRAY_TASK_COUNT``. SGE/UGE (``-t A-B:S``): ``(SGE_TASK_ID - SGE_TASK_FIRST) / SGE_TASK_STEPSIZE``
    of ``(SGE_TASK_LAST - SGE_TASK_FIRST) / SGE_TASK_STEPSIZE + 1``. Anything else: ``DISTINCTAD_PART=I/N``.

    Raises:
        ValueError: one line when no array-job variables are set.
    """
    env = os.environ if env is None else env
    task, count = _env_int(env, "SLURM_ARRAY_TASK_ID"), _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None:
        lo = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        return Part((task - lo) // step, count)
    task, first, last = (_env_int(env, f"SGE_TASK_{k}") for k in ("ID", "FIRST", "LAST"))
    if task is not None and first is not None and last is not None:
        step = _env_int(env, "SGE_TASK_STEPSIZE") or 1
        return Part((task - first) // step, (last - first) // step + 1)
    if env.get("DISTINCTAD_PART"):
        return parse_part(env["DISTINCTAD_PART"], allow_auto=False)
    raise ValueError(
        "--part auto: no array-job environment (SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, "
        "SGE_TASK_ID/SGE_TASK_FIRST/SGE_TASK_LAST or DISTINCTAD_PART=I/N)"
    )


def parse_part(spec: str, *, allow_auto: bool = True, env: dict | None = None) -> Part:
    """``"I/N"`` -> ``Part(I, N)``; ``"auto"`` -> :func:`part_from_env`.

    Raises:
        ValueError: one line on anything else.
    """
    if allow_auto and spec.strip() == "auto":
        return part_from_env(env)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if m is None:
        raise ValueError(f"--part must be I/N (e.g. 0/8) or auto, got {spec!r}")
    return Part(int(m.group(1)), int(m.group(2)))


def assign_parts(ads_per_movie: dict[str, int], count: int) -> dict[str, int]:
    """movie -> part: longest-processing-time-first by AD count (a movie's build cost grows with its ADs).

    Movies go in order of decreasing AD count (ties by id) to the part with the fewest ADs so far (ties by the
    lowest part index). Deterministic: the same movies and counts give the same assignment on every machine; the
    busiest part holds at most ``total/n + max ADs of one movie``.
    """
    heap = [(0, p) for p in range(count)]
    out: dict[str, int] = {}
    for movie in sorted(ads_per_movie, key=lambda m: (-ads_per_movie[m], m)):
        load, p = heapq.heappop(heap)
        out[movie] = p
        heapq.heappush(heap, (load + ads_per_movie[movie], p))
    return out


def assignment_hash(assignment: dict[str, int], count: int) -> str:
    """sha256 of the whole assignment: every part of one dataset records the same one (checked by ``merge``)."""
    return hashlib.sha256(json.dumps([count, sorted(assignment.items())]).encode()).hexdigest()


def part_manifests(out_dir: str | os.PathLike) -> dict[tuple[int, int], Path]:
    """``{(index, count): path}`` of the part manifests in a folder."""
    found = {}
    for p in Path(out_dir).glob("manifest.p*of*.json"):
        m = _TAG.match(p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    return found


def _shared_sources(manifest: dict) -> dict[str, list]:
    """Content identity of the inputs every part reads (all but its own films)."""
    return {s["role"]: content_identity(s) for s in manifest.get("sources", []) if not s["role"].startswith("video:")}


def merge_parts(out_dir: str | os.PathLike) -> dict:
    """Merge the part manifests of ``out_dir`` into ``manifest.json`` + ``sizes.json``; returns the manifest.

    Raises:
        ValueError: one line naming what is wrong: no parts, parts of different counts, a missing or unfinished
            part, parts built with other options or inputs, or two parts holding one movie.
    """
    out = Path(out_dir)
    found = part_manifests(out)
    if not found:
        raise ValueError(f"{out}: no part manifests (manifest.pIIIofNNN.json); build with --part I/N first")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise ValueError(f"{out}: parts of different builds ({', '.join(f'of {n}' for n in counts)}); keep one")
    n = counts[0]
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise ValueError(f"{out}: {len(missing)} of {n} parts missing: {', '.join(map(str, missing[:20]))}")
    parts = []
    for i in range(n):
        try:
            parts.append(json.loads(found[(i, n)].read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise ValueError(f"{found[(i, n)]}: unreadable part manifest ({e})") from None
    first = parts[0]
    for i, m in enumerate(parts):
        name = found[(i, n)].name
        if not m.get("complete"):
            raise ValueError(f"{name}: part {i}/{n} is unfinished (re-run its build to resume)")
        for field in ("builder_version", "kind", "split", "options", "feature_dim"):
            if m.get(field) != first.get(field) and not (field == "feature_dim" and None in (m[field], first[field])):
                raise ValueError(f"{name}: {field} differs from part 0 ({m.get(field)!r} vs {first.get(field)!r})")
        if m["part"]["assignment"] != first["part"]["assignment"]:
            raise ValueError(f"{name}: movies were assigned to parts from other annotations or curation than part 0")
        if _shared_sources(m) != _shared_sources(first):
            raise ValueError(f"{name}: built from other inputs than part 0 (annotations, features or lists differ)")
    owner: dict[str, int] = {}
    for i, m in enumerate(parts):
        for movie in m.get("movies", []):
            if owner.setdefault(movie, i) != i:
                raise ValueError(f"movie {movie!r} is in parts {owner[movie]} and {i}; rebuild them")
    shards = [rec for m in parts for rec in m["shards"]]
    sources, seen = [], set()
    for m in parts:
        for s in m.get("sources", []):
            if s["role"] not in seen:
                seen.add(s["role"])
                sources.append(s)
    stats = {"dropped": {}}
    for m in parts:
        for k, v in m.get("stats", {}).items():
            if k == "dropped":
                for reason, (movies, ads) in v.items():
                    old = stats["dropped"].get(reason, [0, 0])
                    stats["dropped"][reason] = [old[0] + movies, old[1] + ads]
            else:
                stats[k] = stats.get(k, 0) + v
    manifest = {
        "builder_version": first["builder_version"],
        "kind": first["kind"],
        "split": first["split"],
        "options": first["options"],
        "feature_dim": next((m["feature_dim"] for m in parts if m.get("feature_dim") is not None), None),
        "text_only": all(m.get("text_only") for m in parts),
        "sources": sources,
        "plan_hash": hashlib.sha256("|".join(m["plan_hash"] for m in parts).encode()).hexdigest(),
        "movies": sorted(owner),
        "curation": first.get("curation", {}),
        "parts": {
            "count": n,
            "assignment": first["part"]["assignment"],
            "manifests": [found[(i, n)].name for i in range(n)],
        },
        "shards": shards,
        "totals": {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "movies": len({mv for s in shards for mv in s["movies"]}),
            "ads": sum(s["ads"] for s in shards),
        },
        "stats": stats,
        "complete": True,
    }
    atomic_write_json(out / "sizes.json", {s["file"]: s["samples"] for s in shards})
    atomic_write_json(out / "manifest.json", manifest)
    for meta_file in ("manifest.json", "sizes.json"):
        os.chmod(out / meta_file, 0o644)
    return manifest
