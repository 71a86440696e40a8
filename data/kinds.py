"""Sample kinds: what one shard sample is, from planning it to collating it into a batch, behind one registry.

The shard builder (``shards.py``), the streaming reader (``wds_pipeline.py``) and ``distinctad-shards`` look a
kind up with :func:`get_kind` and call its hooks; none of them branches on a kind's name (open_clip's
``get_dataset_fn(data_path, dataset_type)`` pattern). Adding a kind is one :class:`SampleKind` and one
:func:`register_kind` call (here for a built-in kind), plus its tests.

Built-in kinds (the data contract of the README):

- ``frames`` (Stage-I): one AD per sample, T JPEG frames decoded from its video; batch ``images`` (B, T, 3, H, W).
- ``window`` (Stage-II, eval): N consecutive ADs of a movie per sample, their sentences, times and K previous ADs
  as context, plus (with a feature file) ``feats.npy`` (N, T, D) and ``mask.npy`` (N, T); batch ``feats``
  (B, N, T, D), ``frame_mask``, ``clip_mask``, ``sentences``, ``context``.

The module stays whole at ~450 lines: a kind's build half (select, units, encode) and read half (decode, collate)
must agree on one sample format, so each built-in kind is kept side by side with the :class:`SampleKind` contract.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import string
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from distinctad.data.annotations import AD

if TYPE_CHECKING:
    import torch

    from distinctad.data.features import FeatureReader
    from distinctad.data.shards import BuildOptions

INPUTS = {"features": "FILE", "videos": "DIR"}
"""Build inputs a kind can read (``BuildInputs`` fields, ``distinctad-shards build --NAME VALUE``)."""


# ---------------------------------------------------------------- what every kind works with


@dataclass
class Unit:
    """One sample to write: an AD (frames) or a window of ADs (window)."""

    key: str
    movie: str
    ads: list[tuple[int, float, float, str]]  # (ad_index, start, end, sentence)
    context: list[str] = field(default_factory=list)
    window_index: int = 0


@dataclass
class BuildInputs:
    """The sources a kind's samples are made from (``None``: not given)."""

    features: FeatureReader | None = None
    """MAD-layout HDF5 frame features."""
    videos: str | None = None
    """Folder of ``{movie}.mp4`` (``.mkv``, ...) videos."""


@dataclass(frozen=True)
class ReadOptions:
    """What decoding and collating a kind's samples needs to know (from the loader arguments and the manifest)."""

    window: int
    """N: ADs per window."""
    num_frames: int
    """T: frames per AD."""
    feature_dim: int | None = None
    """D of the shards' features (``None``: text-only or unknown)."""
    preprocess: Callable | None = None
    """Frames: callable applied to each PIL frame (default :func:`to_tensor`)."""
    jpeg_bytes: bool = False
    """Frames: leave the JPEGs undecoded; the batch carries their bytes (``jpeg_data``, ``jpeg_offsets``) for
    :func:`distinctad.data.jpeg.decode_frames` on the rank's device, and no ``images``."""


EmptyTensor = Callable[[tuple[int, ...], "torch.dtype"], "torch.Tensor"]
# torch is imported inside the read-side hooks only: the shard builder's worker processes import this module, and
# importing torch costs each of them ~2.5 s and ~0.4 GB (benchmarks/build_scale.py).


@dataclass(frozen=True)
class SampleKind:
    """Everything the builder, the reader and the CLI need to know about one kind of sample.

    Building (``shards.py``, in the build's worker processes for ``encoder``):

    - ``select(movie, ads, opts, inputs) -> (kept | None, reason)``: the ADs of a movie that can become samples.
      ``None`` drops the whole movie for ``reason``; otherwise ADs not kept are counted under ``reason``.
    - ``units(movie, kept, opts) -> list[Unit]``: the samples of a movie, in order.
    - ``estimate_bytes(opts, feature_dim) -> int``: rough bytes per sample (turns ``shard_size_mb`` into
      ``maxcount``).
    - ``encoder(movie, opts, inputs)``: a context manager giving ``encode(unit) -> {"__key__", "json", ...}``
      for the units of one movie (it may hold the movie's video open meanwhile).
    - ``num_ads(meta) -> int``: ADs held by a sample, from its ``json`` member.

    The kind itself is sent to the build's worker processes (``--workers``), so its hooks are module-level
    functions (picklable), not lambdas.

    Reading (``decode.py`` and ``wds_pipeline.py``, in the loader workers):

    - ``decode(sample, meta, key, read) -> dict``: validate one decoded sample (``decode_sample`` output) and
      return its fields; raise ``ValueError`` naming ``key`` on a bad one (it is skipped and counted).
    - ``collate(samples, read, state, empty) -> dict``: the batch of a list of ``decode`` outputs, ``None`` for
      padding rows (eval), without ``valid`` (added by the reader). ``state`` is a dict kept across batches of
      one worker; ``empty(shape, dtype)`` gives an uninitialised tensor that crosses to the main process cheaply.
    """

    name: str
    help: str
    """One line for ``--kind`` help: what a sample holds and who uses it."""
    inputs: tuple[str, ...]
    """Build inputs it reads, among :data:`INPUTS`; the CLI rejects the others."""
    required_inputs: tuple[str, ...]
    """Build inputs it cannot do without."""
    select: Callable[[str, list[AD], BuildOptions, BuildInputs], tuple[list[AD] | None, str]]
    units: Callable[[str, list[AD], BuildOptions], list[Unit]]
    estimate_bytes: Callable[[BuildOptions, int | None], int]
    encoder: Callable[[str, BuildOptions, BuildInputs], AbstractContextManager[Callable[[Unit], dict]]]
    num_ads: Callable[[dict], int]
    decode: Callable[[dict, dict, str, ReadOptions], dict]
    collate: Callable[[list[dict | None], ReadOptions, dict, EmptyTensor], dict]

    def __post_init__(self):
        unknown = set(self.inputs) - set(INPUTS)
        if unknown or not set(self.required_inputs) <= set(self.inputs):
            raise ValueError(f"kind {self.name!r}: inputs must be among {sorted(INPUTS)} and include the required ones")


KINDS: dict[str, SampleKind] = {}
"""Every sample kind by name; add one with :func:`register_kind`."""


def register_kind(kind: SampleKind) -> SampleKind:
    """Add ``kind`` to :data:`KINDS` (a name already taken is an error) and return it."""
    if kind.name in KINDS:
        raise ValueError(f"sample kind {kind.name!r} is already registered")
    if not kind.name or not kind.name.replace("_", "").isalnum():
        raise ValueError(f"sample kind names are letters, digits and '_', got {kind.name!r}")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> SampleKind:
    """The registered kind called ``name``.

    Raises:
        ValueError: one line listing the known kinds when there is none.
    """
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown sample kind {name!r}; known kinds: {', '.join(sorted(KINDS))}")
    return kind


def kinds_help() -> str:
    """``NAME: help`` of every kind, for the ``--kind`` flag."""
    return "; ".join(f"{k.name}: {k.help}" for _, k in sorted(KINDS.items()))


# ---------------------------------------------------------------- helpers shared by kinds


_KEY_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
"""Movie-id characters a sample key keeps as they are; every other one is escaped (:func:`escape_movie`)."""


def escape_movie(movie: str) -> str:
    """The movie-id part of a sample key: ``[A-Za-z0-9_-]`` kept, any other character as ``%XX`` per UTF-8 byte.

    WebDataset splits a member name at the first dot of its last path component and treats ``/`` as a folder, so
    neither may appear in a key; spaces and non-ASCII are escaped too, so keys stay plain ASCII. ``%`` itself is
    escaped, which makes the mapping injective (``m.1`` -> ``m%2E1``, ``m_1`` -> ``m_1``, ``m%2E1`` -> ``m%252E1``)
    and reversible (:func:`unescape_movie`). Ids made of the safe characters alone (MAD's numbers, IMDb ids,
    ``3034_IDES_OF_MARCH``) are unchanged. The sample's ``json`` member always carries the raw id.
    """
    return "".join(
        c if c in _KEY_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in movie
    )


def unescape_movie(escaped: str) -> str:
    """The movie id :func:`escape_movie` escaped."""
    return urllib.parse.unquote(escaped, errors="surrogatepass")


def sample_key(movie: str, ad_index: int) -> str:
    """``{escape_movie(movie)}__{ad_index:06d}``: distinct (movie, ad_index) pairs always get distinct keys."""
    return f"{escape_movie(movie)}__{ad_index:06d}"


def parse_key(key: str) -> tuple[str, int]:
    """(movie, ad_index) of a :func:`sample_key`: the index holds digits only, so the last ``__`` separates the two
    even when the id itself holds ``__`` (``a__000001`` of AD 2 is ``a__000001__000002``)."""
    escaped, _, index = key.rpartition("__")
    return unescape_movie(escaped), int(index)


def npy_bytes(arr: np.ndarray) -> bytes:
    """An ``.npy`` member (never pickled)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def json_bytes(meta: dict) -> bytes:
    """A ``json`` member, UTF-8 without escapes."""
    return json.dumps(meta, ensure_ascii=False).encode("utf-8")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """Default frame preprocess: centre square crop (short side) → float tensor (3, S, S) in [0, 1].

    The crop makes frames of differently shaped videos stackable; real training passes open_clip's preprocess.
    """
    import torch

    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- window: N consecutive ADs (Stage-II, eval)


def window_units(movie: str, ads: list[AD], opts: BuildOptions) -> list[Unit]:
    """Windows of ``opts.window`` ADs (stride N, the last one short), each with the K previous sentences."""
    units = []
    for w, lo in enumerate(range(0, len(ads), opts.window)):
        chunk = ads[lo : lo + opts.window]
        context = [a.sentence for a in ads[max(0, lo - opts.context) : lo]] if opts.context else []
        units.append(
            Unit(
                key=sample_key(movie, chunk[0].ad_index),
                movie=movie,
                ads=[(a.ad_index, a.start, a.end, a.sentence) for a in chunk],
                context=context,
                window_index=w,
            )
        )
    return units


def window_meta(unit: Unit, split: str) -> dict:
    """The ``json`` member of a window sample (data contract: N sentences, times, K previous ADs as context)."""
    return {
        "movie": unit.movie,
        "split": split,
        "window_index": unit.window_index,
        "ad_index": [a[0] for a in unit.ads],
        "sentence": [a[3] for a in unit.ads],
        "start": [a[1] for a in unit.ads],
        "end": [a[2] for a in unit.ads],
        "context": unit.context,
        "num_valid": len(unit.ads),
    }


def _ad_shift(opts: BuildOptions, movie: str, ad_index: int) -> int:
    """The deterministic training jitter of one AD's frames: 0..max_shift."""
    if opts.max_shift <= 0:
        return 0
    digest = hashlib.sha256(f"{opts.shift_seed}|{movie}|{ad_index}".encode()).digest()
    return digest[0] % (opts.max_shift + 1)


def _window_select(movie: str, ads: list[AD], opts: BuildOptions, inputs: BuildInputs):
    if inputs.features is None:  # text-only windows: every AD
        return list(ads), ""
    from distinctad.data.features import ad_in_features

    if movie not in inputs.features:
        return None, "no features"
    n = inputs.features.num_frames(movie)
    return [a for a in ads if ad_in_features(a.start, n, opts.feature_fps)], "past end of features"


def _window_bytes(opts: BuildOptions, feature_dim: int | None) -> int:
    feats = opts.window * opts.num_frames * (feature_dim * 2 + 1) if feature_dim else 0
    return feats + opts.window * 120 + 2048  # npy arrays + sentences/times + tar headers


def _encode_window(unit: Unit, opts: BuildOptions, features: FeatureReader | None) -> dict:
    sample = {"__key__": unit.key, "json": json_bytes(window_meta(unit, opts.split))}
    if features is not None:
        feats = np.zeros((opts.window, opts.num_frames, features.dim()), np.float16)  # (N, T, D)
        mask = np.zeros((opts.window, opts.num_frames), bool)  # (N, T)
        for i, (ad_index, start, end, _) in enumerate(unit.ads):
            shift = _ad_shift(opts, unit.movie, ad_index)
            feats[i] = features.clip(unit.movie, start, end, opts.num_frames, shift=shift)
            mask[i] = True
        sample["feats.npy"] = npy_bytes(feats)
        sample["mask.npy"] = npy_bytes(mask)
    return sample


def _window_encoder(movie: str, opts: BuildOptions, inputs: BuildInputs):
    return contextlib.nullcontext(functools.partial(_encode_window, opts=opts, features=inputs.features))


def _window_num_ads(meta: dict) -> int:
    return len(meta["sentence"])


def _window_decode(s: dict, meta: dict, key: str, read: ReadOptions) -> dict:
    n = int(meta["num_valid"])
    if not (1 <= n <= read.window) or len(meta["sentence"]) != n or len(meta["ad_index"]) != n:
        raise ValueError(f"{key}: window json inconsistent (num_valid={n}, window={read.window})")
    out = {"feats": None, "mask": None}
    if "feats.npy" in s:
        feats, mask = s["feats.npy"], s.get("mask.npy")
        if feats.ndim != 3 or feats.shape[0] != read.window or mask is None or mask.shape != feats.shape[:2]:
            raise ValueError(f"{key}: feats/mask shapes {feats.shape} / {getattr(mask, 'shape', None)}")
        out["feats"], out["mask"] = feats, mask.astype(bool)
    return out


def _window_collate(samples: list[dict | None], read: ReadOptions, state: dict, empty: EmptyTensor) -> dict:
    import torch

    B, N = len(samples), read.window
    real = [s for s in samples if s is not None]
    with_feats = [s for s in real if s["feats"] is not None]
    if with_feats:
        T, D = with_feats[0]["feats"].shape[1:]
    elif not real and read.feature_dim:
        T, D = read.num_frames, read.feature_dim
    else:
        T, D = 0, 0
    # Filled in numpy through a view (per-row torch indexing costs more than the copy itself); uninitialised,
    # so rows without features are zeroed below. float16 as stored; the model casts on its device.
    feats_t = empty((B, N, T, D), torch.float16) if D else None  # (B, N, T, D)
    feats = feats_t.numpy() if D else None
    frame_mask = np.zeros((B, N, T), bool)  # (B, N, T)
    clip_mask = np.zeros((B, N), bool)  # (B, N)
    ad_index = np.full((B, N), -1, np.int64)  # (B, N)
    sentences, context, movie, key = [], [], [], []
    for b, s in enumerate(samples):
        if feats is not None and (s is None or s["feats"] is None):
            feats[b] = 0
        if s is None:
            sentences.append([""] * N)
            context.append([])
            movie.append("")
            key.append("")
            continue
        meta = s["meta"]
        n = int(meta["num_valid"])
        clip_mask[b, :n] = True
        ad_index[b, :n] = meta["ad_index"]
        sentences.append(list(meta["sentence"]) + [""] * (N - n))
        context.append(list(meta.get("context", [])))
        movie.append(meta["movie"])
        key.append(s["key"])
        if feats is not None and s["feats"] is not None:
            feats[b] = s["feats"]
            frame_mask[b] = s["mask"]
    return {
        "feats": feats_t,
        "frame_mask": frame_mask,
        "clip_mask": clip_mask,
        "sentences": sentences,
        "context": context,
        "movie": movie,
        "ad_index": ad_index,
        "key": key,
    }


register_kind(
    SampleKind(
        name="window",
        help="N consecutive ADs (Stage-II/eval), with their features from --features or text only",
        inputs=("features",),
        required_inputs=(),
        select=_window_select,
        units=window_units,
        estimate_bytes=_window_bytes,
        encoder=_window_encoder,
        num_ads=_window_num_ads,
        decode=_window_decode,
        collate=_window_collate,
    )
)


# ---------------------------------------------------------------- frames: T JPEG frames of one AD (Stage-I)


def _frames_select(movie: str, ads: list[AD], opts: BuildOptions, inputs: BuildInputs):
    from distinctad.data.video import find_video, video_duration

    video = find_video(inputs.videos, movie)
    if video is None:
        return None, "no video file"
    duration = video_duration(video)
    return [a for a in ads if a.start < duration], "past end of video"


def _frames_units(movie: str, ads: list[AD], opts: BuildOptions) -> list[Unit]:
    return [Unit(sample_key(movie, a.ad_index), movie, [(a.ad_index, a.start, a.end, a.sentence)]) for a in ads]


def _frames_bytes(opts: BuildOptions, feature_dim: int | None) -> int:
    side = opts.short_side or 224
    return opts.num_frames * int(side * side * 16 / 9 * 0.25 + 512) + 2048  # q90 JPEG ≈ 2 bits/pixel, 16:9


def _encode_frames(unit: Unit, opts: BuildOptions, reader) -> dict:
    from distinctad.data.video import encode_jpeg

    ad_index, start, end, sentence = unit.ads[0]
    images = reader.clip(start, end, opts.num_frames)
    meta = {
        "movie": unit.movie,
        "ad_index": ad_index,
        "start": start,
        "end": end,
        "sentence": sentence,
        "split": opts.split,
    }
    sample = {"__key__": unit.key, "json": json_bytes(meta), "txt": sentence.encode("utf-8")}
    for i, img in enumerate(images):
        sample[f"{i:02d}.jpg"] = encode_jpeg(img, opts.jpeg_quality)
    return sample


@contextlib.contextmanager
def _frames_encoder(movie: str, opts: BuildOptions, inputs: BuildInputs) -> Iterator[Callable[[Unit], dict]]:
    from distinctad.data.video import VideoClipReader, find_video

    # One open container per movie chunk: its ADs come in time order, so decoding is about one pass.
    with VideoClipReader(find_video(inputs.videos, movie), opts.short_side) as reader:
        yield functools.partial(_encode_frames, opts=opts, reader=reader)


def _frames_num_ads(meta: dict) -> int:
    return 1


def _frames_decode(s: dict, meta: dict, key: str, read: ReadOptions) -> dict:
    import torch

    frames = [s.get(f"{i:02d}.jpg") for i in range(read.num_frames)]
    if any(f is None for f in frames):
        raise ValueError(f"{key}: expected {read.num_frames} frames 00.jpg..{read.num_frames - 1:02d}.jpg")
    if read.jpeg_bytes:
        return {"jpeg": frames}  # T checked JPEGs (decode.check_jpeg), decoded on the rank's device
    pre = read.preprocess or to_tensor
    return {"images": torch.stack([pre(f) for f in frames])}  # (T, 3, H, W)


def _frames_collate_bytes(samples: list[dict | None], read: ReadOptions, empty: EmptyTensor) -> dict:
    """The B x T JPEGs of a batch as one flat uint8 tensor and its offsets; a padding row is T empty JPEGs."""
    import torch

    blobs = [b for s in samples for b in (s["jpeg"] if s is not None else [b""] * read.num_frames)]
    offsets = np.zeros(len(blobs) + 1, np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    n = int(offsets[-1])
    # In a loader worker, ``empty`` hands out shared-memory ring segments kept per size: a power-of-two capacity
    # keeps the varying byte counts of batches to a couple of sizes (a bounded number of segments).
    data = empty((1 << max(n - 1, 0).bit_length(),), torch.uint8)[:n]
    if n:
        data.numpy()[:] = np.frombuffer(b"".join(blobs), np.uint8)
    return {"jpeg_data": data, "jpeg_offsets": offsets}


def _frames_collate(samples: list[dict | None], read: ReadOptions, state: dict, empty: EmptyTensor) -> dict:

    if read.jpeg_bytes:
        out = _frames_collate_bytes(samples, read, empty)
    else:
        out = {"images": _frames_images(samples, read, state, empty)}

    def field_of(name: str, pad: Any) -> list:
        return [pad if s is None else s["meta"][name] for s in samples]

    return {
        **out,
        "sentence": field_of("sentence", ""),
        "movie": field_of("movie", ""),
        "ad_index": np.array([int(i) for i in field_of("ad_index", -1)], np.int64),
        "key": ["" if s is None else s["key"] for s in samples],
    }


def _frames_images(samples: list[dict | None], read: ReadOptions, state: dict, empty: EmptyTensor):
    import torch

    real = [s for s in samples if s is not None]
    if real:  # padding rows copy the shape of real ones
        state["pad_image"] = torch.zeros_like(real[0]["images"])  # (T, 3, H, W)
    # Padding before any real sample (eval, when this worker's shards were unreadable so far): the image size is
    # unknown, so the rows are empty images (T, 3, 0, 0); every row is marked invalid and never reaches a model.
    pad = state.get("pad_image", torch.zeros((read.num_frames, 3, 0, 0)))
    rows = [pad if s is None else s["images"] for s in samples]
    return torch.stack(rows, out=empty((len(rows), *rows[0].shape), rows[0].dtype))  # (B, T, 3, H, W)


register_kind(
    SampleKind(
        name="frames",
        help="T JPEG frames of one AD (Stage-I), decoded from --videos",
        inputs=("videos",),
        required_inputs=("videos",),
        select=_frames_select,
        units=_frames_units,
        estimate_bytes=_frames_bytes,
        encoder=_frames_encoder,
        num_ads=_frames_num_ads,
        decode=_frames_decode,
        collate=_frames_collate,
    )
)
