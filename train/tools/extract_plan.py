"""Planning of ``distinctad-extract``: which clips the frames shards hold, which window shards to write, which rank.

Pure functions of the frames shards' json members and the options (no model, no torch): every rank computes the
same plan. The windows themselves come from the shard builder's ``window_units``, so extracted shards hold exactly
the windows ``distinctad-shards build --kind window`` would.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass

from distinctad.data.annotations import AD
from distinctad.data.shards import BuildOptions, Unit, shard_name, window_units


def scan_frames(urls: list[str]) -> tuple[dict[str, list[AD]], dict[str, list[str]], int]:
    """Every clip of a frames shard set from the json members alone (JPEG data is seeked over, not read).

    Returns:
        (ADs per movie sorted by ad_index, shard urls holding each movie in order, T frames per clip).
    """
    by_movie: dict[str, list[AD]] = {}
    where: dict[str, list[str]] = {}
    frames_per_clip = 0
    for url in urls:
        with tarfile.open(url) as tf:
            jpgs: dict[str, int] = {}
            for member in tf:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if ext.endswith("jpg"):
                    jpgs[key] = jpgs.get(key, 0) + 1
                elif ext == "json":
                    meta = json.loads(tf.extractfile(member).read())
                    movie = meta["movie"]
                    by_movie.setdefault(movie, []).append(
                        AD(movie, int(meta["ad_index"]), float(meta["start"]), float(meta["end"]), meta["sentence"])
                    )
                    if url not in where.setdefault(movie, []):
                        where[movie].append(url)
            if jpgs:
                frames_per_clip = max(frames_per_clip, max(jpgs.values()))
    for movie, ads in by_movie.items():
        ads.sort(key=lambda a: a.ad_index)
        dup = len(ads) - len({a.ad_index for a in ads})
        if dup:
            raise ValueError(f"movie {movie}: {dup} duplicate ad_index values in the frames shards")
    return by_movie, where, frames_per_clip


@dataclass
class ShardPlan:
    """One output shard: windows of a single movie."""

    name: str
    movie: str
    units: list[Unit]

    @property
    def ads(self) -> int:
        return sum(len(u.ads) for u in self.units)


def plan_shards(by_movie: dict[str, list[AD]], opts: BuildOptions) -> list[ShardPlan]:
    """Windows per movie (the builder's ``window_units``: stride N, K text context), ``maxcount`` per shard.

    Movies in sorted order, a shard never spans two movies (each rank writes whole movies).
    """
    shards: list[ShardPlan] = []
    for movie in sorted(by_movie):
        units = window_units(movie, by_movie[movie], opts)
        for lo in range(0, len(units), opts.maxcount):
            shards.append(ShardPlan(shard_name(opts.split, len(shards)), movie, units[lo : lo + opts.maxcount]))
    return shards


def assign_movies(ad_counts: dict[str, int], world: int) -> dict[str, int]:
    """movie -> rank, balancing ADs per rank (largest movie first onto the least loaded rank; deterministic)."""
    load = [0] * world
    out: dict[str, int] = {}
    for movie in sorted(ad_counts, key=lambda m: (-ad_counts[m], m)):
        rank = min(range(world), key=lambda r: (load[r], r))
        out[movie] = rank
        load[rank] += ad_counts[movie]
    return out
