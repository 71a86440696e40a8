"""MAD CLIP frame features (HDF5, one dataset per movie id, (frames, D) at 5 fps) and clip frame sampling."""

from __future__ import annotations

import math
import os

import h5py
import numpy as np

FEATURE_FPS = 5.0  # MAD features are extracted at 5 frames per second
SPAN_MAX_ROWS = 256
"""An AD whose sampled frames span more rows than this reads just those rows (our default: 512 KiB at D=512 float32);
shorter spans are read whole, which costs less CPU than selecting rows (measured: benchmarks/build_scale.py)."""


def clip_frame_range(start: float, end: float, num_frames: int, fps: float = FEATURE_FPS) -> tuple[int, int]:
    """The feature frames ``[s, e)`` an AD covers: ``s = floor(start·fps)``, ``e = min(ceil(end·fps), frames)``.

    ``e`` is raised to ``s + 1`` so that an AD shorter than one frame still gets its frame.
    """
    s = math.floor(start * fps)
    e = min(math.ceil(end * fps), num_frames)
    return s, max(e, s + 1)


def sample_frame_indices(
    start: float,
    end: float,
    num_frames: int,
    t: int = 8,
    *,
    fps: float = FEATURE_FPS,
    shift: int = 0,
) -> np.ndarray:
    """Indices of the ``t`` feature frames of an AD, sampled as AutoAD-II does.

    ``linspace(s, e-1, t, endpoint=False)`` rounded down, plus an optional ``shift`` (the training jitter of
    0-4 frames), clipped to the movie. Short ADs repeat frames rather than reading their neighbours.

    Args:
        start: AD start in seconds.
        end: AD end in seconds.
        num_frames: number of feature frames of the movie.
        t: number of frames to sample.
        fps: feature frame rate.
        shift: frames added to every index (training jitter).

    Returns:
        int64 array (t,).

    Raises:
        ValueError: if the AD starts past the end of the features (the builder drops and counts those).
    """
    s, e = clip_frame_range(start, end, num_frames, fps)
    if s >= num_frames:
        raise ValueError(f"AD [{start:.3f}, {end:.3f}] s starts at frame {s}, past the {num_frames} feature frames")
    idx = np.floor(np.linspace(s, e - 1, t, endpoint=False)).astype(np.int64) + shift
    return np.clip(idx, 0, num_frames - 1)


def ad_in_features(start: float, num_frames: int, fps: float = FEATURE_FPS) -> bool:
    """Whether an AD starting at ``start`` has at least one feature frame."""
    return math.floor(start * fps) < num_frames


class FeatureReader:
    """Lazy reader of a MAD-layout HDF5 feature file.

    The file is opened on first use in each process, so a reader can be handed to multiprocessing workers
    (h5py handles must not cross a fork). The dataset of the movie last read is held open: a movie's ADs are read
    one after another, and looking the dataset up again for every AD cost ~4x the read itself (and dropped HDF5's
    sieve buffer, so neighbouring ADs re-read the same 64 KiB block).
    """

    def __init__(self, path: str | os.PathLike, fps: float = FEATURE_FPS):
        self.path = str(path)
        self.fps = fps
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._held: tuple[str, h5py.Dataset] | None = None
        if not os.path.isfile(self.path):
            raise ValueError(f"{self.path}: no such feature file")

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._held = None
        return self._h5

    def dataset(self, movie: str) -> h5py.Dataset:
        """The (held open) frame features of ``movie``, (frames, D)."""
        f = self._file()
        if self._held is None or self._held[0] != movie:
            self._held = (movie, f[movie])
        return self._held[1]

    def __getstate__(self) -> dict:
        return {"path": self.path, "fps": self.fps, "_h5": None, "_pid": None, "_held": None}

    def __contains__(self, movie: str) -> bool:
        return movie in self._file()

    def num_frames(self, movie: str) -> int:
        """Number of feature frames of ``movie``."""
        return int(self.dataset(movie).shape[0])

    def dim(self) -> int:
        """Feature width D (the same for every movie)."""
        f = self._file()
        first = next(iter(f.keys()))
        return int(f[first].shape[1])

    def clip(self, movie: str, start: float, end: float, t: int = 8, shift: int = 0) -> np.ndarray:
        """The ``t`` sampled frame features of one AD, float32 (t, D)."""
        ds = self.dataset(movie)
        idx = sample_frame_indices(start, end, ds.shape[0], t, fps=self.fps, shift=shift)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= SPAN_MAX_ROWS:  # read the span once and gather
            return np.asarray(ds[lo:hi], dtype=np.float32)[idx - lo]
        rows = np.unique(idx)  # h5py fancy indexing needs increasing unique indices
        return np.asarray(ds[rows], dtype=np.float32)[np.searchsorted(rows, idx)]

    def close(self) -> None:
        self._held = None
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
