"""SynthMAD: a procedural, offline stand-in for MAD that goes through the same builder as real data.

A SynthMAD "movie" is a sequence of scenes. A scene is a recurring location (background colour + pattern) that
lasts several consecutive ADs, so neighbouring clips share most of their content, as in real movies: this is the
redundancy Contextual EMA is meant to remove. Inside a scene every clip shows one named character (own colour and
glyph) doing one action with one coloured object, so each AD also has distinctive words:
"Ana opens the red door in the kitchen."

Outputs, all deterministic for a seed (``write_synthmad``):
- ``annotations.json``: MAD annotation JSON (``timestamps`` = ``ext_timestamps``, ``movie_duration``).
- ``splits.json``: ``{"TRAIN": [...], "EVAL": [...]}`` (the same keys as MAD's ``mad_split.json``).
- ``videos/{movie}.mp4`` (optional): tiny H.264 videos (default 64x64 at 5 fps) rendering each clip.
- ``features.h5`` (optional): MAD-layout "CLIP features", one (frames, D) float32 dataset per movie at 5 fps.
  Each frame is the sum of fixed random embeddings of the visible scene, character, action and object plus
  noise, so a model can actually learn the AD words from the features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distinctad.common import atomic_path, atomic_write_json
from distinctad.data.annotations import AD, write_mad_json

logger = logging.getLogger(__name__)

FPS = 5
CHARACTERS = {  # name: (RGB colour, glyph)
    "Ana": ((230, 60, 60), "square"),
    "Ben": ((60, 90, 230), "cross"),
    "Cleo": ((240, 200, 40), "diamond"),
    "Dev": ((40, 200, 90), "bar"),
    "Eva": ((200, 80, 220), "ring"),
    "Finn": ((250, 140, 30), "tee"),
}
SCENES = {  # location: (background RGB, pattern)
    "kitchen": ((200, 190, 160), "stripes"),
    "garden": ((90, 160, 80), "dots"),
    "office": ((150, 150, 170), "grid"),
    "street": ((110, 110, 110), "hband"),
    "bedroom": ((170, 120, 140), "checker"),
    "harbour": ((70, 120, 180), "waves"),
}
ACTIONS = ["opens", "closes", "picks up", "drops", "paints", "carries", "throws", "cleans"]
OBJECTS = ["door", "box", "letter", "cup", "lamp", "ball", "book", "key"]
COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 60, 220),
    "green": (30, 180, 60),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}


@dataclass(frozen=True)
class SynthClip:
    """What one AD clip shows; the AD sentence is generated from it."""

    scene: str
    character: str
    action: str
    colour: str
    obj: str
    start: float
    end: float

    @property
    def sentence(self) -> str:
        return f"{self.character} {self.action} the {self.colour} {self.obj} in the {self.scene}."


def _rng(seed: int, *parts: object) -> np.random.Generator:
    """An RNG derived from the seed and names, so each movie/embedding is stable whatever else is generated."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def make_movie(movie: str, num_ads: int, seed: int) -> tuple[list[SynthClip], float]:
    """The clips of one movie and its duration in seconds.

    Scenes last 3-6 ADs and recur; each movie has its own cast of 3 characters and 4 locations.
    """
    rng = _rng(seed, "movie", movie)
    cast = list(rng.choice(list(CHARACTERS), size=3, replace=False))
    places = list(rng.choice(list(SCENES), size=4, replace=False))
    clips: list[SynthClip] = []
    t = float(rng.uniform(1.0, 3.0))
    scene = places[0]
    remaining = 0
    while len(clips) < num_ads:
        if remaining == 0:
            scene = places[int(rng.integers(len(places)))]
            remaining = int(rng.integers(3, 7))
        dur = round(float(rng.uniform(1.6, 3.6)), 1)
        clips.append(
            SynthClip(
                scene=scene,
                character=cast[int(rng.integers(len(cast)))],
                action=ACTIONS[int(rng.integers(len(ACTIONS)))],
                colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
                obj=OBJECTS[int(rng.integers(len(OBJECTS)))],
                start=round(t, 1),
                end=round(t + dur, 1),
            )
        )
        t += dur + float(rng.uniform(0.4, 1.6))
        remaining -= 1
    return clips, round(t + 1.0, 1)


# ---------------------------------------------------------------- rendering


def _background(scene: str, size: int) -> np.ndarray:
    colour, pattern = SCENES[scene]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = colour
    yy, xx = np.mgrid[0:size, 0:size]
    mark = {
        "stripes": (xx // 4) % 2 == 0,
        "dots": ((xx % 8) - 4) ** 2 + ((yy % 8) - 4) ** 2 < 3,
        "grid": (xx % 10 == 0) | (yy % 10 == 0),
        "hband": (yy > size * 0.7),
        "checker": ((xx // 8) + (yy // 8)) % 2 == 0,
        "waves": (yy + (3 * np.sin(xx / 3)).astype(int)) % 9 < 2,
    }[pattern]
    img[mark] = (np.asarray(colour) * 0.6).astype(np.uint8)
    return img


def _glyph(img: np.ndarray, glyph: str, cx: int, cy: int, r: int, colour) -> None:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    dx, dy = np.abs(xx - cx), np.abs(yy - cy)
    mask = {
        "square": (dx <= r) & (dy <= r),
        "cross": ((dx <= r // 3) & (dy <= r)) | ((dy <= r // 3) & (dx <= r)),
        "diamond": dx + dy <= r,
        "bar": (dx <= r // 2) & (dy <= r),
        "ring": (np.hypot(dx, dy) <= r) & (np.hypot(dx, dy) >= r - 2),
        "tee": ((dy <= r // 3) & (dx <= r) & (yy <= cy)) | ((dx <= r // 3) & (dy <= r)),
    }[glyph]
    img[mask] = colour


def render_frame(clip: SynthClip | None, scene: str, phase: float, size: int = 64) -> np.ndarray:
    """One RGB frame (size, size, 3): the scene background, and during a clip its character and object.

    The action sets the motion (the character moves along a direction that depends on the verb, ``phase`` in
    [0, 1] is the time inside the clip) and the object's shape depends on its noun.
    """
    img = _background(scene, size)
    if clip is None:
        return img
    a = ACTIONS.index(clip.action)
    angle = 2 * math.pi * a / len(ACTIONS)
    cx = int(size / 2 + math.cos(angle) * (phase - 0.5) * size * 0.5)
    cy = int(size / 2 + math.sin(angle) * (phase - 0.5) * size * 0.5)
    colour, glyph = CHARACTERS[clip.character]
    _glyph(img, glyph, cx, cy, max(3, size // 8), colour)
    o = OBJECTS.index(clip.obj)
    ox, oy = size // 8 + (o % 4) * size // 4, size - size // 6 if o < 4 else size // 6
    _glyph(img, ["square", "diamond", "ring", "bar"][o % 4], ox, oy, max(2, size // 12), COLOURS[clip.colour])
    return img


def _timeline(clips: list[SynthClip], duration: float):
    """For each 5 fps frame: (clip or None, scene, phase inside the clip)."""
    n = math.ceil(duration * FPS)
    out = []
    j = 0
    scene = clips[0].scene
    for f in range(n):
        t = (f + 0.5) / FPS
        while j < len(clips) and clips[j].end <= t:
            scene = clips[j].scene  # a gap keeps the scene of the clip before it
            j += 1
        clip = clips[j] if j < len(clips) and clips[j].start <= t < clips[j].end else None
        if clip is not None:
            scene = clip.scene
        phase = (t - clip.start) / (clip.end - clip.start) if clip else 0.0
        out.append((clip, scene, phase))
    return out


def write_video(
    path: str | os.PathLike,
    clips: list[SynthClip],
    duration: float,
    size: int = 64,
    soundtrack: np.ndarray | None = None,
) -> None:
    """Render one movie to an H.264 mp4 at 5 fps (written to a temporary file, then renamed).

    Args:
        soundtrack: float32 mono samples at :data:`~distinctad.data.synth_audio.SAMPLE_RATE` Hz; when given, the
            mp4 also gets an AAC audio stream, muxed one second at a time beside the frames.
    """
    import av

    from distinctad.data.synth_audio import SAMPLE_RATE

    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=FPS)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            # Fixed encoder settings and one thread keep the bytes identical across runs.
            stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
            audio = None
            if soundtrack is not None:
                audio = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            sent = 0  # audio samples encoded so far

            def encode_audio(upto: int) -> int:
                for lo in range(sent, min(upto, len(soundtrack)), SAMPLE_RATE):
                    hi = min(lo + SAMPLE_RATE, upto, len(soundtrack))
                    frame = av.AudioFrame.from_ndarray(soundtrack[None, lo:hi], format="fltp", layout="mono")
                    frame.sample_rate, frame.pts = SAMPLE_RATE, lo
                    for packet in audio.encode(frame):
                        out.mux(packet)
                return max(sent, min(upto, len(soundtrack)))

            for f, (clip, scene, phase) in enumerate(_timeline(clips, duration)):
                frame = av.VideoFrame.from_ndarray(render_frame(clip, scene, phase, size), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
                if audio is not None and f % FPS == 0:
                    sent = encode_audio((f // FPS + 1) * SAMPLE_RATE)
            for packet in stream.encode():
                out.mux(packet)
            if audio is not None:
                sent = encode_audio(len(soundtrack))
                for packet in audio.encode():
                    out.mux(packet)


def embedding_table(dim: int, seed: int) -> dict[str, np.ndarray]:
    """A fixed unit-norm random embedding per scene, character, action, object noun and colour."""
    names = [f"scene:{s}" for s in SCENES] + [f"char:{c}" for c in CHARACTERS] + [f"action:{a}" for a in ACTIONS]
    names += [f"obj:{o}" for o in OBJECTS] + [f"colour:{c}" for c in COLOURS]
    table = {}
    for name in names:
        v = _rng(seed, "embedding", name).standard_normal(dim).astype(np.float32)
        table[name] = v / np.linalg.norm(v)
    return table


def movie_features(
    clips: list[SynthClip], duration: float, table: dict[str, np.ndarray], seed: int, movie: str, noise: float = 0.1
) -> np.ndarray:
    """Synthetic CLIP frame features of one movie, float32 (ceil(duration·5), D)."""
    timeline = _timeline(clips, duration)
    dim = next(iter(table.values())).shape[0]
    feats = _rng(seed, "noise", movie).standard_normal((len(timeline), dim)).astype(np.float32) * noise
    for f, (clip, scene, _) in enumerate(timeline):
        feats[f] += table[f"scene:{scene}"]
        if clip is not None:
            feats[f] += table[f"char:{clip.character}"] + table[f"action:{clip.action}"]
            feats[f] += table[f"obj:{clip.obj}"] + 0.5 * table[f"colour:{clip.colour}"]
    return feats


def write_synthmad(
    out_dir: str | os.PathLike,
    *,
    movies: int = 4,
    ads_per_movie: int = 48,
    seed: int = 0,
    videos: bool = False,
    features: bool = True,
    feature_dim: int = 512,
    video_size: int = 64,
    eval_movies: int = 1,
    audio: bool = False,
) -> dict:
    """Generate a SynthMAD dataset in ``out_dir``.

    Args:
        out_dir: output folder (created).
        movies: number of movies (ids ``synth0000`` ...).
        ads_per_movie: ADs per movie.
        seed: everything is a deterministic function of the seed.
        videos: write ``videos/{movie}.mp4``.
        features: write ``features.h5`` in MAD layout.
        feature_dim: width D of the synthetic features.
        video_size: frame side in pixels.
        eval_movies: how many of the last movies go to the EVAL split (at least one TRAIN movie is kept).
        audio: with ``videos``, give each video a soundtrack: characters' lines spoken by espeak-ng in the silences
            between AD clips (:mod:`distinctad.data.synth_audio`), their times written to ``dialogue.json``.

    Returns:
        A summary dict: paths written, movies, ADs.
    """
    if movies < 1 or ads_per_movie < 1:
        raise ValueError("movies and ads_per_movie must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = [f"synth{i:04d}" for i in range(movies)]
    ads: list[AD] = []
    plans = {}
    for movie in ids:
        clips, duration = make_movie(movie, ads_per_movie, seed)
        plans[movie] = (clips, duration)
        ads.extend(AD(movie, i, c.start, c.end, c.sentence, duration) for i, c in enumerate(clips))
    write_mad_json(ads, out / "annotations.json")
    n_eval = min(max(eval_movies, 0), movies - 1) if movies > 1 else 0
    splits = {"TRAIN": ids[: movies - n_eval], "EVAL": ids[movies - n_eval :]}
    atomic_write_json(out / "splits.json", splits)
    written = {"annotations": str(out / "annotations.json"), "splits": str(out / "splits.json")}
    if videos:
        dialogue = {}
        for movie in ids:
            soundtrack = None
            if audio:
                from distinctad.data import synth_audio

                clips, duration = plans[movie]
                cast = sorted({c.character for c in clips})
                dialogue[movie] = synth_audio.plan_dialogue(clips, duration, cast, _rng(seed, "dialogue", movie))
                soundtrack = synth_audio.render_soundtrack(dialogue[movie], duration)
            write_video(out / "videos" / f"{movie}.mp4", *plans[movie], size=video_size, soundtrack=soundtrack)
        written["videos"] = str(out / "videos")
        if audio:
            from distinctad.data.synth_audio import dialogue_record

            atomic_write_json(out / "dialogue.json", {m: dialogue_record(lines) for m, lines in dialogue.items()})
            written["dialogue"] = str(out / "dialogue.json")
    if features:
        import h5py

        table = embedding_table(feature_dim, seed)
        with atomic_path(out / "features.h5") as tmp:
            with h5py.File(tmp, "w") as f:
                for movie in ids:
                    f.create_dataset(movie, data=movie_features(*plans[movie], table, seed, movie))
        written["features"] = str(out / "features.h5")
    meta = {"seed": seed, "movies": ids, "ads": len(ads), "feature_dim": feature_dim if features else None, **written}
    (out / "synthmad.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("SynthMAD: %d movies, %d ADs written to %s", movies, len(ads), out)
    return meta
