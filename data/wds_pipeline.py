"""Streaming readers of DistinctAD shards, modelled on open_clip's ``get_wds_dataset``.

Pipeline (training, non-resampled)::

    SimpleShardList → detshuffle(seed, epoch) → split_by_node → split_by_worker → repeat
        → tar expansion (``tarstream.py``; nothrow, logged + counted) → shuffle(seed, epoch, rank, worker) → safe decode
        → batched(B) → take(batches per worker, skip)

- **Same batch count on every rank.** In training each worker repeats its shard list, so it never runs dry, and
  yields exactly ``ceil(ceil(num_samples / (B·world)) / workers)`` batches (open_clip's ``with_epoch``
  arithmetic). ``resampled=True`` draws shards with replacement instead (``ResampledShards``, seeded per epoch).
- **Eval sees every sample exactly once.** Non-resampled eval mode uses ``sizes.json`` to know how many samples
  each (rank, worker) gets, and pads every worker to the largest batch count of any rank for that worker index.
  Padding entries are marked: ``valid`` is False, ``ad_index`` is -1, ``key``/``movie`` are ``""`` and (windows)
  ``clip_mask`` is all False. Drop rows with ``batch["valid"]`` before scoring.
- **Resuming mid-epoch.** ``DataInfo.set_epoch(epoch, skip_batches=n)`` makes the next pass start at batch ``n``
  of that epoch, yielding exactly the batches (same content, same order) an uninterrupted run would have yielded
  from there: worker ``w`` plays worker ``(w + n) mod W`` of the full epoch and skips its first batches. Skipped
  batches are still read and decoded by the workers (nothing is sent to the main process).
- **No pickle, ever.** Samples are decoded member by member (``decode.py``): ``.npy`` with ``allow_pickle=False``,
  ``.json``, ``.txt``, ``.jpg``. Anything else (``.pyd``, ``.pickle``, ``.pth``...) is ignored, counted, and never
  touched. Corrupt samples and unreadable tars are logged (rate-limited) and counted, never fatal.

Shard lists and sizes (``sizes.json``, ``manifest.json``) are read by ``shardlist.py``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import webdataset as wds

from distinctad import common
from distinctad.common import worker_threads
from distinctad.data.decode import SampleDecoder
from distinctad.data.kinds import ReadOptions, SampleKind, get_kind
from distinctad.data.shardlist import expand_shards, manifest_info, shard_sizes
from distinctad.data.tarstream import tar_samples

logger = logging.getLogger(__name__)

# Buffer sizes, overridable by environment (tests use tiny buffers), as open_clip's constants.
_SAMPLE_SHUFFLE_SIZE = int(os.environ.get("DISTINCTAD_SAMPLE_SHUFFLE_SIZE", 1000))
_SAMPLE_SHUFFLE_INITIAL = int(os.environ.get("DISTINCTAD_SAMPLE_SHUFFLE_INITIAL", 200))
_LOG_FIRST, _LOG_EVERY = 10, 1000
_GOPEN_BUFFER = 1 << 20


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class SharedValue:
    """An integer shared with DataLoader worker processes (open_clip's ``SharedEpoch``)."""

    def __init__(self, value: int = 0):
        self.value = mp.Value("q", value)

    def set_value(self, value: int) -> None:
        self.value.value = value

    def get_value(self) -> int:
        return self.value.value

    def add(self, n: int = 1) -> None:
        with self.value.get_lock():
            self.value.value += n


class CountingHandler:
    """``log_and_continue`` that also counts: the pipeline skips the bad sample/shard and goes on."""

    def __init__(self, counter: SharedValue, what: str):
        self.counter = counter
        self.what = what

    def __call__(self, exn: Exception) -> bool:
        self.counter.add(1)
        n = self.counter.get_value()
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            logger.warning("skipped %s #%d: %s: %s", self.what, n, type(exn).__name__, exn)
        return True


# ---------------------------------------------------------------- collation


PAD = {"__pad__": True}


# Batch arrays at least this big cross from a loader worker as shared memory (a tensor), smaller ones as pickled
# numpy. Each shared tensor costs the main process a file-descriptor hand-over (~1 ms on 2 cores), but piping 1 MB
# (a window batch of 8 at D=512) through a 64 KiB pipe costs more once the cores are busy: on the MAD-size set
# (benchmarks/loader_throughput.py --mad-size 0.25, load ~5 on 2 cores) 1 and 2 workers read 1,066 and 1,030
# windows/s pickled against 1,838-2,626 and 2,712-2,973 in shared memory. Masks and ids stay pickled.
_SHM_MIN_BYTES = _env_int("DISTINCTAD_SHM_MIN_BYTES", 256 << 10)

# A new shared-memory segment per batch costs the worker a page fault and a zeroed page per 4 KiB and the main
# process a fresh mapping: more than the decode itself for window batches (benchmarks/loader_throughput.py, 2 quiet
# cores: 1 worker read 0.59x and 2 workers 0.73x of 0 workers). So each worker reuses a ring of _SHM_RING segments
# per big tensor of its batches, and the main process copies each one out (_to_torch) before it asks for more.
# Safe because the DataLoader paces every worker: a worker is handed batch k only once the main process has received
# batch k - PREFETCH * workers, and every earlier batch was already copied, so at most PREFETCH of a worker's
# batches are ever unread and the ring never overwrites one (PREFETCH + 1 would do; one more as margin).
PREFETCH = 2  # DataLoader prefetch_factor: batches queued per worker
_SHM_RING = PREFETCH + 2
_SHM_POOL: dict[tuple[int, int], list[torch.UntypedStorage]] = {}  # (slot in batch, bytes) -> ring (worker only)
_SHM_AT = {"batch": 0, "slot": 0}


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch; a big one in a DataLoader worker lives in shared memory from the start.

    As torch's ``default_collate`` does: a worker's tensors reach the main process through shared memory anyway,
    and allocating them there saves copying every batch once more. Put it in the batch with :func:`_sendable`.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if torch.utils.data.get_worker_info() is None or nbytes < _SHM_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    ring = _SHM_POOL.setdefault((_SHM_AT["slot"], nbytes), [])
    _SHM_AT["slot"] += 1
    at = _SHM_AT["batch"] % _SHM_RING
    while len(ring) <= at:
        ring.append(torch.UntypedStorage._new_shared(nbytes))
    return torch.empty(0, dtype=dtype).set_(ring[at], 0, shape)


def _init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (the workers share the rank's cores), and batch
    segments shared by name (``file_system``): a ring segment sent again is then found in the main process's
    mapping cache, where the default strategy hands over a file descriptor per tensor through a socket."""
    worker_threads(worker_id)
    if _env_int("DISTINCTAD_SHM_BY_NAME", 1):
        torch.multiprocessing.set_sharing_strategy("file_system")


def _next_batch() -> None:
    """Start a worker's next batch: its big tensors take the next segments of their rings (:func:`_batch_tensor`)."""
    _SHM_AT["batch"] += 1
    _SHM_AT["slot"] = 0


def _sendable(t: torch.Tensor) -> torch.Tensor | np.ndarray:
    """How a batch tensor from :func:`_batch_tensor` crosses to the main process: shared, or as numpy."""
    return t if t.is_shared() else t.numpy()


def _as_is(batch: dict) -> dict:
    """DataLoader ``collate_fn`` for batches collated by the pipeline (the default walks every nested list)."""
    return batch


def _to_torch(batches: Iterator[dict]) -> Iterator[dict]:
    """Wrap each batch's numpy arrays as tensors (in the main process, without copying).

    Workers send small arrays as pickled numpy: every *tensor* that crosses is a shared memory segment of its own,
    handed over as a file descriptor, which costs far more than pickling them (see ``_SHM_MIN_BYTES``).
    """
    mapped: deque = deque(maxlen=256)  # the workers' ring segments stay mapped: torch reuses a live mapping
    for batch in batches:
        out = {}
        for k, v in batch.items():
            if isinstance(v, np.ndarray):
                v = torch.from_numpy(v)
            elif isinstance(v, torch.Tensor) and v.is_shared():  # a worker's ring segment: it will be reused
                mapped.append(v)
                v = v.clone()
            out[k] = v
        yield out


@dataclass
class _Collate:
    """Collates decoded samples (and padding markers) into the batch dicts of the data contract.

    Runs in the loader workers: the kind builds the batch, padding rows given as ``None``; its tensors then cross
    as shared memory or numpy (:func:`_sendable`), and the small arrays stay numpy until :func:`_to_torch`.
    """

    kind: SampleKind
    read: ReadOptions
    state: dict = field(default_factory=dict)  # the kind's, kept across this worker's batches

    def __call__(self, samples: list[dict]) -> dict:
        _next_batch()
        rows = [None if "__pad__" in s else s for s in samples]
        batch = self.kind.collate(rows, self.read, self.state, _batch_tensor)
        batch = {k: _sendable(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch["valid"] = np.array([s is not None for s in rows])
        return batch


# ---------------------------------------------------------------- shard lists, splitting, epochs


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


@dataclass
class _Position:
    """Where this loader worker is: its (virtual) worker id, rank, and batches to skip."""

    rank: int
    world: int
    worker: int
    num_workers: int
    skip: int
    epoch: int


class _Placement:
    """Computes a worker's position at the start of each epoch pass (inside the worker process)."""

    def __init__(self, rank: int, world: int, epoch: SharedValue, skip: SharedValue):
        self.rank, self.world, self.epoch, self.skip = rank, world, epoch, skip

    def get(self) -> _Position:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        n = self.skip.get_value()
        # Resume rotation: the DataLoader always starts with worker 0, and batch j of a full epoch comes from
        # worker j mod W; playing worker (w + n) mod W keeps the order of an uninterrupted epoch.
        virtual = (worker + n) % num_workers
        skip = n // num_workers + (1 if virtual < n % num_workers else 0)
        return _Position(self.rank, self.world, virtual, num_workers, skip, self.epoch.get_value())


def _shard_stream(urls: list[str], placement: _Placement, *, shuffle: bool, repeat: bool, seed: int):
    """SimpleShardList → detshuffle(seed, epoch) → split_by_node → split_by_worker (→ repeat), as open_clip."""

    def stage(_src=None):
        pos = placement.get()
        order = list(urls)
        if shuffle:  # detshuffle: the same permutation on every rank and worker for a given (seed, epoch)
            random.Random(_seed(seed, pos.epoch)).shuffle(order)
        mine = order[pos.rank :: pos.world][pos.worker :: pos.num_workers]
        while True:
            for url in mine:
                yield {"url": url}
            if not repeat or not mine:
                return

    return stage


def _resampled_stream(urls: list[str], placement: _Placement, seed: int):
    """ResampledShards with a deterministic seed per (seed, epoch, rank, worker)."""

    def stage(_src=None):
        pos = placement.get()
        rng = random.Random(_seed(seed, pos.epoch, pos.rank, pos.worker, "resample"))
        while True:
            yield {"url": urls[rng.randrange(len(urls))]}

    return stage


def _seeded_shuffle(placement: _Placement, seed: int, bufsize: int, initial: int):
    """wds.shuffle with an rng seeded by (seed, epoch, rank, worker), so an epoch can be replayed exactly."""

    def stage(src):
        pos = placement.get()
        rng = random.Random(_seed(seed, pos.epoch, pos.rank, pos.worker, "samples"))
        return wds.filters._shuffle(src, bufsize, initial, rng=rng)

    return stage


def _take_batches(placement: _Placement, per_worker: int):
    """with_epoch(per_worker) that first drops this worker's share of the resumed batches."""

    def stage(src):
        pos = placement.get()
        for i, batch in enumerate(src):
            if i >= per_worker:
                return
            if i >= pos.skip:
                yield batch

    return stage


def _pad_samples(placement: _Placement, targets: list[int], batch_size: int):
    """Eval: after the real samples, add padding markers up to this worker's target count (a multiple of B)."""

    def stage(src):
        pos = placement.get()
        target = targets[pos.worker] * batch_size
        n = 0
        for sample in src:
            if n >= target:
                logger.error("more samples than sizes.json says; extra sample %s dropped", sample.get("key"))
                continue
            n += 1
            yield sample
        for _ in range(target - n):
            yield dict(PAD)

    return stage


# ---------------------------------------------------------------- the public entry point


def world_info() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else the RANK/WORLD_SIZE environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class DataInfo:
    """A loader and what the training loop needs to know about it (open_clip's ``DataInfo``).

    ``num_batches`` is per rank and per epoch (the same on every rank); ``num_samples`` is the global count
    of samples per epoch (training: rounded up to full batches; eval: real samples, padding excluded).
    """

    dataloader: torch.utils.data.DataLoader
    num_batches: int
    num_samples: int
    shared_epoch: SharedValue
    shared_skip: SharedValue
    skipped_samples: SharedValue
    unsafe_members: SharedValue

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch (reshuffles) and, to resume mid-epoch, how many of its batches to skip."""
        if not 0 <= skip_batches <= self.num_batches:
            raise ValueError(f"skip_batches must be in [0, {self.num_batches}], got {skip_batches}")
        self.shared_epoch.set_value(epoch)
        self.shared_skip.set_value(skip_batches)

    @property
    def num_skipped(self) -> int:
        """Corrupt samples / unreadable shards skipped so far (all workers)."""
        return self.skipped_samples.get_value()

    @property
    def num_unsafe(self) -> int:
        """Pickle-like members ignored so far (never unpickled)."""
        return self.unsafe_members.get_value()


def get_wds_loader(
    shards: str | list[str],
    kind: str,
    batch_size: int,
    *,
    is_train: bool,
    num_workers: int = 0,
    resampled: bool = False,
    seed: int = 0,
    epoch: int = 0,
    preprocess: Callable | None = None,
    jpeg_bytes: bool = False,
    num_samples: int | None = None,
    pad_eval: bool = True,
    window: int | None = None,
    num_frames: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
) -> DataInfo:
    """Build the streaming loader of window or frames shards (or any kind registered in ``kinds.KINDS``).

    Args:
        shards: shard paths, a folder of shards, or a brace pattern.
        kind: ``"window"`` (Stage-II / eval), ``"frames"`` (Stage-I), or another registered kind.
        batch_size: per-rank batch size.
        is_train: training (shuffled, repeated, full batches, same count per rank) or eval (in order, each
            sample once).
        num_workers: DataLoader workers per rank, one torch thread each. Unless ``OMP_NUM_THREADS`` is set, the
            rank keeps ``max(1, thread_budget() - num_workers)`` intra-op threads (set here), so that its threads
            and its workers add up to its cores: beside a 2-thread step, 1 worker on 2 cores read at 0.9x of none;
            beside a 1-thread step at 1.16x (``benchmarks/loader_throughput.py --step-ms 5``).
        pin_memory: page-locked batches, so ``.to(cuda, non_blocking=True)`` copies overlap compute (CUDA only).
        resampled: training only: draw shards with replacement (``ResampledShards``).
        seed: shuffling seed; epochs and resumption are deterministic functions of (seed, epoch).
        epoch: the first epoch (``DataInfo.set_epoch`` changes it).
        preprocess: frames only: callable applied to each PIL frame (e.g. open_clip's preprocess); default
            ``kinds.to_tensor``, a float tensor in [0, 1].
        jpeg_bytes: frames only: leave the JPEGs undecoded (checked whole, :func:`decode.check_jpeg`); batches carry
            ``jpeg_data`` (uint8, all bytes) and ``jpeg_offsets`` (B*T+1,) instead of ``images``, for
            :func:`distinctad.data.jpeg.decode_frames` on the rank's GPU (``preprocess`` is then not used).
        num_samples: training epoch size in samples (default: sum of ``sizes.json`` of the shards).
        pad_eval: eval only: pad so every rank gets the same number of full batches (padding marked by
            ``valid=False``); ``False`` yields partial batches and unequal counts (single-process eval).
        window: N of window shards (default from ``manifest.json``, else 16).
        num_frames: T (default from ``manifest.json``, else 8).
        rank: override the rank (default: torch.distributed, else ``RANK``).
        world_size: override the world size (default: torch.distributed, else ``WORLD_SIZE``).

    Returns:
        A :class:`DataInfo`.
    """
    sample_kind = get_kind(kind)  # unknown: one line listing the known kinds
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    urls = expand_shards(shards)
    if not os.environ.get("OMP_NUM_THREADS", "").strip():  # else the user's word stands (thread_budget)
        common.set_threads(max(1, common.thread_budget() - max(0, num_workers)))
    # webdataset opens local shards with Python's default 8 KiB buffer, and tarfile's stream mode reads 10 KiB at a
    # time: a syscall per 10 KiB. Its own knob, GOPEN_BUFFER, makes that a memcpy (~10% more samples/s).
    os.environ.setdefault("GOPEN_BUFFER", str(_GOPEN_BUFFER))
    env_rank, env_world = world_info()
    rank = env_rank if rank is None else rank
    world = env_world if world_size is None else world_size
    info = manifest_info(urls)
    if info.get("kind") not in (None, kind):
        raise ValueError(f"{os.path.dirname(urls[0])}: shards are {info['kind']!r}, not {kind!r}")
    window = window or info.get("window") or 16
    num_frames = num_frames or info.get("num_frames") or 8
    workers = max(1, num_workers)

    shared_epoch, shared_skip = SharedValue(epoch), SharedValue(0)
    skipped, unsafe = SharedValue(0), SharedValue(0)
    placement = _Placement(rank, world, shared_epoch, shared_skip)
    handler = CountingHandler(skipped, "sample")
    read = ReadOptions(
        window=window,
        num_frames=num_frames,
        feature_dim=info.get("feature_dim"),
        preprocess=None if jpeg_bytes else preprocess,
        jpeg_bytes=jpeg_bytes,
    )
    decoder = SampleDecoder(sample_kind, read, unsafe, skip_empty_ads=is_train)
    collate = _Collate(sample_kind, read)

    if is_train:
        if not resampled and len(urls) < workers * world:
            raise ValueError(
                f"{len(urls)} shards < {workers} workers x {world} ranks: every worker needs a shard "
                "(rebuild with a smaller --maxcount, use fewer workers, or resampled=True)"
            )
        if num_samples is None:
            num_samples = sum(shard_sizes(urls))
        source = (
            _resampled_stream(urls, placement, seed)
            if resampled
            else _shard_stream(urls, placement, shuffle=True, repeat=True, seed=seed)
        )
        global_batch = batch_size * world
        num_batches = math.ceil(num_samples / global_batch)
        per_worker = math.ceil(num_batches / workers)
        num_batches = per_worker * workers
        num_samples = num_batches * global_batch
        stages = [
            source,
            tar_samples(handler),
            _seeded_shuffle(
                placement,
                seed,
                _env_int("DISTINCTAD_SAMPLE_SHUFFLE_SIZE", _SAMPLE_SHUFFLE_SIZE),
                _env_int("DISTINCTAD_SAMPLE_SHUFFLE_INITIAL", _SAMPLE_SHUFFLE_INITIAL),
            ),
            wds.map(decoder, handler=handler),
            wds.batched(batch_size, collation_fn=collate, partial=False),
            _take_batches(placement, per_worker),
        ]
    else:
        if resampled:
            raise ValueError("resampled=True is for training; eval must see every sample once")
        source = _shard_stream(urls, placement, shuffle=False, repeat=False, seed=seed)
        stages = [source, tar_samples(handler), wds.map(decoder, handler=handler)]
        sizes = dict(zip(urls, shard_sizes(urls)))
        num_samples = sum(sizes.values()) if num_samples is None else num_samples
        if pad_eval:
            # Samples of (rank r, worker w): the same split as _shard_stream; pad worker w to the max over ranks.
            targets = []
            for w in range(workers):
                per_rank = [sum(sizes[u] for u in urls[r::world][w::workers]) for r in range(world)]
                targets.append(max(math.ceil(c / batch_size) for c in per_rank))
            stages += [_pad_samples(placement, targets, batch_size), wds.batched(batch_size, collation_fn=collate)]
            num_batches = sum(targets)
        else:
            stages.append(wds.batched(batch_size, collation_fn=collate, partial=True))
            num_batches = sum(
                math.ceil(sum(sizes[u] for u in urls[rank::world][w::workers]) / batch_size) for w in range(workers)
            )
    dataset = wds.DataPipeline(*stages)
    dataloader = wds.WebLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=PREFETCH if num_workers > 0 else None,
        collate_fn=_as_is,
        pin_memory=pin_memory,
        worker_init_fn=_init_worker,
        # the loader draws its workers' base seed from this generator, never from the global RNG: a resumed run's
        # model (dropout) sees the same random stream as the uninterrupted one
        generator=torch.Generator().manual_seed(_seed(seed, rank, "loader")),
    ).compose(_to_torch)
    dataloader.num_batches = num_batches
    dataloader.num_samples = num_samples
    return DataInfo(dataloader, num_batches, num_samples, shared_epoch, shared_skip, skipped, unsafe)
