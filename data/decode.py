"""Safe decoding of shard samples: member by member, never pickle.

Used by the streaming reader (``wds_pipeline.py``, in the loader workers), ``distinctad-shards inspect`` and the
tests. ``.npy`` members are loaded with ``allow_pickle=False`` (parsed headers memoised), ``.json`` / ``.txt`` /
``.jpg`` with their plain decoders; anything else (``.pyd``, ``.pickle``, ``.pth``...) is ignored unread, and the
pickle-like ones are counted. :class:`SampleDecoder` then hands a decoded sample to its kind's ``decode`` hook.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import webdataset as wds
from PIL import Image

from distinctad.common import warn_once
from distinctad.data.kinds import ReadOptions, SampleKind

if TYPE_CHECKING:
    from distinctad.data.wds_pipeline import SharedValue

logger = logging.getLogger(__name__)

UNSAFE_EXTENSIONS = ("pyd", "pickle", "pkl", "pth", "pt", "ckpt", "npz", "mp", "msgpack")
"""Pickle-like member extensions: never decoded, counted when seen (``DataInfo.num_unsafe``)."""


# .npy header bytes -> (dtype, shape, Fortran order, data offset). Every window of a shard set has the same few
# headers, and parsing one (np.load runs ast.literal_eval on it) costs more than reading the 128 KB behind it.
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}
_NPY_HEADERS_MAX = 256


def _npy_header_end(data: bytes) -> int:
    """Offset of the array data in an ``.npy`` file (magic, version, header length, header); 0 when malformed."""
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        return 0
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little") if len(data) >= 12 else 0


def _load_npy(data: bytes) -> np.ndarray:
    """``np.load(..., allow_pickle=False)`` of one member, with the parsed header memoised.

    A header seen before (same bytes, so the same dtype, shape and order) is not parsed again: the array is a
    read-only view of ``data``. Object dtypes are never cached (np.load refuses them without pickle anyway).
    """
    end = _npy_header_end(data)
    hit = _NPY_HEADERS.get(data[:end]) if end else None
    if hit is None:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if end and not arr.dtype.hasobject and len(_NPY_HEADERS) < _NPY_HEADERS_MAX:
            _NPY_HEADERS[data[:end]] = (arr.dtype, arr.shape, not arr.flags.c_contiguous, end)
        return arr
    dtype, shape, fortran, offset = hit
    count = math.prod(shape)
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(f"truncated .npy: {len(data) - offset} data bytes for shape {shape} {dtype}")
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")


def _load_jpg(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now, so a truncated JPEG fails here (and is counted) rather than in collate
    return img.convert("RGB")


def check_jpeg(data: bytes) -> bytes:
    """``data`` unchanged if it looks like one whole JPEG: the SOI marker, a header PIL can parse, the EOI marker.

    For JPEGs passed on undecoded (``jpeg_bytes``): a truncated or corrupt frame is caught here, in the loader
    worker, where it is counted and skipped, rather than in a batched GPU decode. Cheap: PIL reads the header only.

    Raises:
        ValueError: not a whole JPEG.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        raise ValueError("truncated JPEG (no EOI marker)")
    with Image.open(io.BytesIO(data)) as img:  # parses the header (size, mode) without decoding
        if img.format != "JPEG":
            raise ValueError(f"not a JPEG ({img.format})")
    return data


def decode_sample(raw: dict, unsafe_counter: SharedValue | None = None, jpeg_bytes: bool = False) -> dict:
    """Decode one raw WebDataset sample using only safe decoders.

    Members whose last extension is not ``json``/``txt``/``npy``/``jpg`` are dropped unread; pickle-like ones
    (``.pyd``, ``.pth``...) are counted and warned about once. Returns ``__key__``/``__url__`` plus the
    decoded members (``json`` → object, ``txt`` → str, ``*.npy`` → ndarray, ``*.jpg`` → RGB PIL image, or with
    ``jpeg_bytes`` the checked JPEG bytes, :func:`check_jpeg`, for decoding on the GPU).
    """
    out = {k: v for k, v in raw.items() if k in ("__key__", "__url__")}
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        ext = name.rsplit(".", 1)[-1].lower()
        if ext == "json":
            out[name] = json.loads(value)
        elif ext == "txt":
            out[name] = value.decode("utf-8")
        elif ext == "npy":
            out[name] = _load_npy(value)
        elif ext == "jpg":
            out[name] = check_jpeg(value) if jpeg_bytes else _load_jpg(value)
        else:
            if ext in UNSAFE_EXTENSIONS and unsafe_counter is not None:
                unsafe_counter.add(1)
            warn_once(logger, f"ignoring shard member type .{ext} (only json/txt/npy/jpg are decoded; never pickle)")
    return out


def iter_tar_samples(path: str, handler: Callable[[Exception], bool] | None = None) -> Iterator[dict]:
    """Raw samples of one tar, in file order (for ``inspect`` and tests)."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList([path]), wds.tarfile_to_samples(handler=handler or wds.reraise_exception)
    )
    return iter(pipeline)


@dataclass
class SampleDecoder:
    """Decodes and validates one sample of a kind (runs in the loader workers)."""

    kind: SampleKind
    read: ReadOptions
    unsafe: SharedValue
    skip_empty_ads: bool = False

    def __call__(self, raw: dict) -> dict:
        try:
            s = decode_sample(raw, self.unsafe, self.read.jpeg_bytes)
        except Exception as e:  # noqa: BLE001 - name the sample in the skip warning
            raise ValueError(f"{raw.get('__key__')}: {type(e).__name__}: {e}") from e
        if "json" not in s:
            raise ValueError(f"{raw.get('__key__')}: no json member")
        meta = s["json"]
        key = s["__key__"]
        if self.skip_empty_ads:
            # Training never learns an empty AD. A window is skipped whole: its clips are each other's context
            # and distinctive-word negatives, so dropping one clip would change what the others learn.
            sentences = meta.get("sentence")
            if any(not str(x).strip() for x in (sentences if isinstance(sentences, list) else [sentences])):
                raise ValueError(f"{key}: empty AD sentence (sample skipped in training)")
        return {"key": key, "meta": meta, **self.kind.decode(s, meta, key, self.read)}
