"""The shard builder's worker processes: light to start, never orphaned, sending back ready tar bytes.

- **Light.** Workers come from a ``forkserver`` (POSIX) that has imported this module and nothing else: no torch
  (``kinds.py`` and ``shardlist.py`` import it on use only), so a worker starts in milliseconds and costs tens of MB
  of its own, against ~3.5 s and ~0.5 GB when every spawned worker re-imported torch through ``webdataset``.
- **Never orphaned.** A worker dies with the build: on Linux the kernel signals it when its parent goes
  (``PR_SET_PDEATHSIG``), and everywhere a watchdog thread exits it once the build's process is gone.
- **Cheap to send back.** A job (one chunk of one movie) lays its samples out as tar members
  (:func:`sample_tar_bytes`, byte-identical to ``webdataset.TarWriter(encoder=False, mtime=0)``), writes them to a
  file in the build's spool folder and returns its path plus the counts: the main process only appends the file to
  the shard and feeds its running sha256; nothing is unpickled sample by sample, and no shard is read back to hash
  it. (Returning the bytes through the pool's result pipe cost the main process more CPU than the encoding itself,
  measured by ``benchmarks/build_scale.py --only workers``: 1 worker ran at 0.4x of none.)
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import tarfile
import threading
import time
from collections import Counter

from distinctad.data.features import FeatureReader
from distinctad.data.kinds import BuildInputs

logger = logging.getLogger(__name__)

TAR_USER = TAR_GROUP = "distinctad"
"""Owner and group of every shard member (fixed, as the mtime 0: the same inputs give the same bytes)."""
_WORKER: dict = {}


# ---------------------------------------------------------------- tar bytes


def tar_member_bytes(name: str, data: bytes) -> bytes:
    """One tar member (header + data + padding to 512 bytes) as ``tarfile.TarFile.addfile`` writes it in a
    ``"w|"`` stream: PAX format, mode 0444, mtime 0, owner/group ``distinctad``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uname, info.gname = TAR_USER, TAR_GROUP
    header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    return header + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def sample_tar_bytes(sample: dict) -> bytes:
    """The members of one sample, in the order and bytes of ``webdataset.TarWriter(encoder=False).write``:
    ``{key}.{field}`` for every field in sorted order, fields starting with ``_`` left out."""
    key = sample["__key__"]
    parts = []
    for field in sorted(sample):
        if field.startswith("_"):
            continue
        value = sample[field]
        parts.append(tar_member_bytes(f"{key}.{field}", value.encode("utf-8") if isinstance(value, str) else value))
    return b"".join(parts)


def tar_end(offset: int) -> bytes:
    """The end of a tar stream of ``offset`` bytes: two zero blocks, then zeros up to a multiple of 10 KiB (what
    ``TarFile.close`` writes)."""
    end = 2 * tarfile.BLOCKSIZE
    return b"\0" * (end + (-(offset + end) % tarfile.RECORDSIZE))


# ---------------------------------------------------------------- worker life


def _die_with(build_pid: int) -> None:
    """Exit this worker when the build process is gone (Linux: at once, by signal; elsewhere within a second)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: our parent (the forkserver or the build) exits
        except (OSError, AttributeError):  # no prctl: the watchdog alone
            pass
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(build_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            if os.getppid() != parent:  # re-parented: whoever started us is gone
                os._exit(1)

    threading.Thread(target=watch, name="distinctad-orphan-watchdog", daemon=True).start()


def init_worker(
    features_path, video_dir, opts, kind, build_pid: int | None = None, workers: int = 0, spool: str | None = None
) -> None:
    """Pool initializer (and the in-process setup when ``--workers 0``): the inputs of one build.

    With ``workers`` processes each film decoder gets ``cores // workers`` threads (at least one), so that the
    decoders of all workers add up to the cores; in-process (``workers`` 0) FFmpeg uses every core. ``spool`` is
    the folder a worker writes each job's tar bytes to (``None``: returned as bytes, in-process).
    """
    # The kind travels with the job (not by name): a kind registered at run time is unknown to a spawned worker.
    if build_pid is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the build, which stops its workers
        _die_with(build_pid)
    if video_dir:
        from distinctad.data.video import set_decoder_threads, usable_cores

        set_decoder_threads(max(1, usable_cores() // workers) if workers else 0)
    _WORKER.clear()
    _WORKER["inputs"] = BuildInputs(features=FeatureReader(features_path) if features_path else None, videos=video_dir)
    _WORKER["opts"] = opts
    _WORKER["kind"] = kind
    _WORKER["spool"] = spool


def encode_job(job: tuple) -> tuple[int, bytes | str, int, int, list[str], Counter, int]:
    """Encode one chunk of one movie into tar member bytes.

    Returns:
        ``(shard_index, tar bytes, samples, ADs, movies, drops, units)``, the bytes as the path of a spooled file
        in a worker (``init_worker(spool=...)``); clips that fail to encode are dropped
        and counted under ``"decode error"``, never fatal.
    """
    shard_index, units = job
    kind = _WORKER["kind"]
    blobs, drops, ads, movies = [], Counter(), 0, []
    with kind.encoder(units[0].movie, _WORKER["opts"], _WORKER["inputs"]) as encode:
        for unit in units:
            try:
                sample = encode(unit)
            except Exception as e:  # a broken clip must not kill a multi-hour build
                logger.warning("%s: cannot encode sample (%s: %s); dropped", unit.key, type(e).__name__, e)
                drops["decode error"] += len(unit.ads)
                continue
            blobs.append(sample_tar_bytes(sample))
            meta = json.loads(sample["json"])
            ads += kind.num_ads(meta)
            if meta["movie"] not in movies:
                movies.append(meta["movie"])
    blob = b"".join(blobs)
    spool = _WORKER.get("spool")
    if spool is not None:  # a worker: the bytes go through a file, not the result pipe (see module docstring)
        _WORKER["jobs"] = _WORKER.get("jobs", 0) + 1
        path = os.path.join(spool, f"{os.getpid()}-{_WORKER['jobs']}.tar")
        with open(path, "wb") as f:
            f.write(blob)
        blob = path
    return shard_index, blob, len(blobs), ads, movies, drops, len(units)
