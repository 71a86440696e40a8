"""Tar expansion of the streaming reader: webdataset's stages with a lean member parser for plain local tars.

``wds.tarfile_to_samples`` is ``url_opener -> tar_file_expander -> group_by_keys``; its expander walks each shard
with Python's ``tarfile`` in stream mode, whose per-member header handling cost ~75% of the reader at MAD size (the
reader ran at 0.44x of a raw ``tarfile`` read: it did that walk and then the decoding on top). :func:`tar_samples`
keeps webdataset's opener and grouping and replaces only the member walk, for uncompressed local tars, by
:func:`plain_tar_members`: one 512-byte header read, its checksum, name and size, then one read of the data (~4x
fewer CPU cycles per member than ``tarfile``). Everything else (``.tar.gz``, ``pipe:``/remote URLs, a first header
that is not plain ustar/GNU/PAX) goes through webdataset's own ``tar_file_iterator`` unchanged.

Member filtering and grouping are webdataset's: regular files only, ``__*__`` metadata skipped, members grouped by
key into samples, an end-of-shard marker after each shard. A corrupt header or a truncated member raises (naming
the shard) into the pipeline's handler, which counts it; the shard ends there and the next one starts, as with
webdataset's walk.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterable, Iterator

import webdataset as wds

from distinctad.data.shardlist import is_remote

BLOCK = tarfile.BLOCKSIZE
_ZERO = bytes(BLOCK)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_SKIP_META = re.compile(r"__[^/]*__($|/)")
_COMPRESSED = (".gz", ".tgz", ".bz2", ".xz", ".zst", ".lz4")


def _number(field: bytes, url: str) -> int:
    """A tar numeric field: octal ASCII, or base-256 when its first byte has the high bit set (GNU, big files)."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] & 0x40 else value
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise tarfile.ReadError(f"invalid header @ {url} (numeric field {field!r})") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """``key=value`` records of a PAX extended header (``"%d %s=%s\\n"``)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def plain_tar_members(stream, url: str = "") -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of the regular files of an uncompressed tar stream (ustar, GNU or PAX headers), in order.

    Raises:
        tarfile.ReadError: a header whose checksum does not match (``bad checksum``), or a header or member cut
            short (``unexpected end of data``), naming ``url`` as ``tarfile``'s messages do in webdataset's walk.
    """
    read = stream.read
    long_name, pax = None, {}
    while True:
        header = read(BLOCK)
        if not header or header == _ZERO:
            return
        if len(header) < BLOCK:
            raise tarfile.ReadError(f"unexpected end of data @ {url} (a header cut short)")
        stored = _number(header[148:156], url)
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.ReadError(f"bad checksum @ {url}")
        size = int(pax["size"]) if "size" in pax else _number(header[124:136], url)
        data = read(size)
        if len(data) < size:
            raise tarfile.ReadError(f"unexpected end of data @ {url} ({len(data)} of {size} bytes of a member)")
        if size % BLOCK:
            read(BLOCK - size % BLOCK)
        kind = header[156:157]
        if kind == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode(tarfile.ENCODING, "surrogateescape")
            continue
        if kind == tarfile.XHDTYPE:
            pax = _pax_records(data)
            continue
        if kind in (tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            continue
        name = pax.get("path") or long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")
            if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix field holds the start of long names
                prefix = header[345:500].split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")
                name = f"{prefix}/{name}" if prefix else name
        long_name, pax = None, {}
        if kind in _REGULAR and not (kind == tarfile.AREGTYPE and name.endswith("/")):
            yield name, data


def _lean_ok(url: str, stream) -> bool:
    """Whether a shard can take the lean walk: a local, uncompressed tar whose first header is plain."""
    if is_remote(url) or url.endswith(_COMPRESSED) or not hasattr(stream, "peek"):
        return False
    head = stream.peek(BLOCK)[:BLOCK]
    if len(head) < BLOCK:
        return len(head) == 0
    return head == _ZERO or _number(head[148:156], url) == sum(head[:148]) + 256 + sum(head[156:])


def _files(stream, url: str, handler) -> Iterator[dict]:
    """webdataset's ``tar_file_iterator`` output (``fname``, ``data``), metadata members skipped as it does."""
    try:
        ok = _lean_ok(url, stream)
    except (ValueError, tarfile.ReadError):
        ok = False
    if not ok:
        yield from wds.tariterators.tar_file_iterator(stream, handler=handler)
        return
    for name, data in plain_tar_members(stream, url):
        if "/" not in name and name.startswith("__") and name.endswith("__"):
            continue
        if _SKIP_META.match(name):
            continue
        yield {"fname": name, "data": data}


def tar_samples(handler: Callable[[Exception], bool]) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """Pipeline stage: ``{"url"}`` dicts in, samples (``__key__``, ``__url__``, one entry per member) out, as
    ``wds.tarfile_to_samples(handler=handler)`` yields them."""

    def expand(sources: Iterable[dict]) -> Iterator[dict]:
        for source in sources:
            url, stream = source["url"], source["stream"]
            try:
                for f in _files(stream, url, handler):
                    f["__url__"] = url
                    yield f
                yield {}  # end of shard: samples of two shards never merge
            except Exception as exn:  # noqa: BLE001 - the handler decides (counted skip of the rest of the shard)
                if not handler(exn):
                    break
                yield {}  # as webdataset's walk: the samples read so far end with the shard
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        streams = wds.tariterators.url_opener(src, handler=handler)
        return wds.tariterators.group_by_keys(expand(streams), handler=handler)

    return stage
