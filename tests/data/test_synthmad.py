"""SynthMAD: deterministic, MAD-shaped, redundant between neighbours, and learnable from its features."""

from __future__ import annotations

import json
import math

import av
import h5py
import numpy as np

from distinctad.data.annotations import read_annotations
from distinctad.data.cli import main
from distinctad.data.synthmad import embedding_table, make_movie, movie_features


def test_deterministic_for_a_seed(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        main(
            [
                "synth",
                "--out",
                str(tmp_path / name),
                "--movies",
                "2",
                "--ads-per-movie",
                "6",
                "--seed",
                str(seed),
                "--features",
                "--feature-dim",
                "16",
            ]
        )
    same = [(tmp_path / n / "annotations.json").read_bytes() for n in "abc"]
    assert same[0] == same[1] != same[2]
    feats = [(tmp_path / n / "features.h5").read_bytes() for n in "ab"]
    assert feats[0] == feats[1]
    assert json.loads((tmp_path / "a" / "splits.json").read_text()) == {"TRAIN": ["synth0000"], "EVAL": ["synth0001"]}


def test_shape_redundancy_and_learnable_features(synth_dir):
    anns = read_annotations(synth_dir / "annotations.json")
    by_movie = anns.by_movie()
    assert sorted(by_movie) == ["synth0000", "synth0001", "synth0002"] and len(anns) == 60
    # neighbouring clips share the scene most of the time, but the sentences differ
    same_scene = [
        a.sentence.split(" in the ")[1] == b.sentence.split(" in the ")[1]
        for ads in by_movie.values()
        for a, b in zip(ads, ads[1:])
    ]
    assert np.mean(same_scene) > 0.6
    assert len({a.sentence for a in anns.ads}) > 50
    with h5py.File(synth_dir / "features.h5") as f:
        assert all(f[m].shape == (math.ceil(ads[0].movie_duration * 5), 32) for m, ads in by_movie.items())


def test_features_encode_the_ad_words():
    """Character, action and object of each AD are the nearest embeddings of its mean frame feature (D=256)."""
    table = embedding_table(256, seed=3)
    hits, total = {"char": 0, "action": 0, "obj": 0}, 0
    for movie in ("m0", "m1"):
        clips, duration = make_movie(movie, 30, seed=3)
        feats = movie_features(clips, duration, table, seed=3, movie=movie)
        assert feats.shape == (math.ceil(duration * 5), 256)
        for c in clips:
            x = feats[math.ceil(c.start * 5) : math.floor(c.end * 5)].mean(0)
            for group, truth in (("char", c.character), ("action", c.action), ("obj", c.obj)):
                names = [k for k in table if k.startswith(group + ":")]
                best = names[int(np.argmax(np.stack([table[k] for k in names]) @ x))]
                hits[group] += best == f"{group}:{truth}"
            total += 1
    assert all(h >= 0.95 * total for h in hits.values()), hits


def test_videos_have_one_frame_per_fifth_second(synth_dir):
    anns = read_annotations(synth_dir / "annotations.json")
    duration = anns.by_movie()["synth0001"][0].movie_duration
    with av.open(str(synth_dir / "videos" / "synth0001.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == math.ceil(duration * 5) and frames[0].shape == (32, 32, 3)
    # during a clip the frame differs from the plain scene background of the gap before the first AD
    first = anns.by_movie()["synth0001"][0]
    inside = frames[int((first.start + first.end) / 2 * 5)].astype(int)
    assert np.abs(inside - frames[0].astype(int)).max() > 40
