"""Annotation readers: MAD JSON (v1/v2, named or not) and AutoAD-style CSV.

Both formats land in one :class:`AnnotationSet` of :class:`AD` records, so the shard builder, the
evaluation harness and SynthMAD never care where an AD came from.

Real annotation files carry a few invalid UTF-8 bytes (the MAD-Eval CSV has four ``0x80`` bytes in
``3034_IDES_OF_MARCH``). Crashing with a ``UnicodeDecodeError`` traceback does not say where the problem is, and
a silent replacement would change ground-truth text without anyone noticing. So the policy is explicit,
``bad_utf8``: ``"error"`` (a one-line ``ValueError`` naming file and line), ``"repair"`` (each bad byte becomes
U+FFFD) or ``"drop"`` (the row is removed). Every repaired or dropped row is logged with its file:line and
recorded in ``AnnotationSet.issues`` (and from there in the shard manifest).

Every entry point uses the same default, :data:`DEFAULT_BAD_UTF8` = ``"repair"`` (the reasons are in
:data:`BAD_UTF8_HELP`), and the same column-mapping syntax, :func:`parse_columns`; the CLIs take their
``choices=``, defaults and help texts from the constants here.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

BAD_UTF8_POLICIES = ("error", "repair", "drop")
"""What to do with invalid UTF-8 bytes: fail with file:line, replace each by U+FFFD, or drop the row."""
DEFAULT_BAD_UTF8 = "repair"
"""The one default of every reader and CLI (shard builder, evaluation, reconstruction): see ``BAD_UTF8_HELP``."""
BAD_UTF8_HELP = (
    "Invalid UTF-8 bytes in the annotation file: 'error' stops with file:line, 'repair' replaces each bad byte by "
    "U+FFFD, 'drop' removes the row. Default 'repair': every AD is kept, so ad_index numbering (and the 6,520 "
    "MAD-Eval ADs) stay the same in shards, evaluation and reconstruction; each repair is logged with its "
    "file:line (and listed in a shard set's manifest.json)."
)
FORMATS = ("csv", "mad-json")
"""Annotation formats :func:`read_annotations` reads (``None`` picks one by the file suffix)."""
TIMESTAMP_FIELDS = ("timestamps", "ext_timestamps")
"""MAD JSON fields that can give an AD's ``[start, end]``."""
DEFAULT_COLUMNS = {
    "movie": "movie",
    "sentence": "sentence",
    "start": "start",
    "end": "end",
    "movie_duration": "movie_duration",
}
"""CSV column of each field (``movie_duration`` is optional); override with a mapping, see :func:`parse_columns`."""
REQUIRED_COLUMNS = ("movie", "sentence", "start", "end")
COLUMNS_HELP = (
    "CSV column mapping FIELD=COLUMN for fields the file names differently, space- or comma-separated "
    "(e.g. movie=film sentence=text, or movie=film,sentence=text); fields: " + ", ".join(DEFAULT_COLUMNS) + "."
)
# Undecodable bytes survive ``errors="surrogateescape"`` as lone surrogates U+DC80..U+DCFF, one per byte.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class AD:
    """One audio description.

    Attributes:
        movie: movie id as in the source, e.g. ``"1005_Signs"`` or the MAD id ``"3001"``.
        ad_index: 0-based position within its movie after a stable sort by (start, end).
        start: start time in seconds.
        end: end time in seconds.
        sentence: the AD text.
        movie_duration: the movie's length in seconds, when the source gives it.
        source_line: 1-based line of the record in the source (CSV), for error messages.
    """

    movie: str
    ad_index: int
    start: float
    end: float
    sentence: str
    movie_duration: float | None = None
    source_line: int | None = None


class Issue(NamedTuple):
    """A problem found while reading: where, what, and what was done about it."""

    file: str
    line: int | None
    problem: str
    action: str  # "repaired" | "dropped"


@dataclass
class AnnotationSet:
    """ADs read from one file, sorted by movie then ``ad_index``, plus the issues met while reading."""

    ads: list[AD]
    issues: list[Issue] = field(default_factory=list)
    path: str | None = None

    def by_movie(self) -> dict[str, list[AD]]:
        """Group the ADs by movie (movies in sorted order, ADs in ``ad_index`` order)."""
        groups: dict[str, list[AD]] = defaultdict(list)
        for ad in self.ads:
            groups[ad.movie].append(ad)
        return dict(groups)

    def __len__(self) -> int:
        return len(self.ads)


class MissingColumnError(ValueError):
    """A CSV header lacks a column the reader needs; the message names the columns it has and the fix.

    Attributes:
        path: the CSV file.
        missing: ``{field: column looked for}`` of each missing required field.
        header: the columns the file has.
    """

    def __init__(self, path: str, missing: dict[str, str], header: list[str]):
        self.path, self.missing, self.header = path, dict(missing), list(header)
        super().__init__(self.message())

    def message(self, option: str | None = None) -> str:
        """The one-line message; ``option`` is the setting that maps columns (e.g. ``"--columns"``).

        Without ``option`` the fix is given as the ``columns=`` argument of :func:`read_annotations`.
        """
        names = ", ".join(repr(col) if col == key else f"{col!r} (for {key})" for key, col in self.missing.items())
        plural = len(self.missing) > 1
        if option is None:
            fix = "pass columns={" + ", ".join(f"'{key}': '<name>'" for key in self.missing) + "}"
        else:
            fix = f"map {'them' if plural else 'it'} with {option} " + " ".join(f"{k}=<name>" for k in self.missing)
        has = ", ".join(self.header[:20]) + (", ..." if len(self.header) > 20 else "")
        return f"missing column{'s' if plural else ''} {names} in {self.path} (columns: {has}); {fix}"


def parse_columns(items: str | Iterable[str] | None, option: str = "--columns") -> dict[str, str] | None:
    """Parse a CSV column mapping: ``FIELD=COLUMN`` pairs, space- or comma-separated, the syntax of every CLI.

    ``["movie=film", "sentence=text"]`` (what ``nargs="+"`` gives), ``"movie=film,sentence=text"`` and any mixture
    give the same mapping. A column name may hold ``=`` (split at the first one) but not ``,``.

    Args:
        items: the pairs as given on the command line, or ``None``.
        option: the flag they came from, for error messages.

    Returns:
        ``{field: column}``, or ``None`` when nothing was given.

    Raises:
        ValueError: one line naming ``option`` on a malformed pair, an unknown field or a field mapped twice.
    """
    if items is None:
        return None
    out: dict[str, str] = {}
    for part in (p.strip() for item in ([items] if isinstance(items, str) else items) for p in item.split(",")):
        if not part:
            continue
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"{option} expects FIELD=COLUMN pairs, space- or comma-separated, got {part!r}")
        if key not in DEFAULT_COLUMNS:
            raise ValueError(f"{option}: unknown field {key!r} in {part!r}; fields: {', '.join(DEFAULT_COLUMNS)}")
        if out.get(key, value) != value:
            raise ValueError(f"{option}: field {key!r} mapped twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out or None


def _describe_bad_bytes(text: str) -> str:
    found = sorted({f"0x{ord(c) - 0xDC00:02x}" for c in _ESCAPED_BYTE.findall(text)})
    return f"invalid UTF-8 byte(s) {', '.join(found)}"


def _repair(text: str) -> str:
    return _ESCAPED_BYTE.sub("\ufffd", text)


def _finalise(records: list[dict], path: str, issues: list[Issue]) -> AnnotationSet:
    """Number each movie's ADs by a stable (start, end) sort and build the set."""
    by_movie: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_movie[rec["movie"]].append(rec)
    ads = []
    for movie in sorted(by_movie):
        ordered = sorted(by_movie[movie], key=lambda r: (r["start"], r["end"]))  # sorted() is stable
        ads.extend(AD(ad_index=i, **rec) for i, rec in enumerate(ordered))
    return AnnotationSet(ads=ads, issues=issues, path=path)


def _handle_bad_utf8(
    fields: dict[str, str], path: str, line: int | None, bad_utf8: str, issues: list[Issue]
) -> dict[str, str] | None:
    """Apply the ``bad_utf8`` policy to one record's text fields; ``None`` means drop the record."""
    bad = {k: v for k, v in fields.items() if isinstance(v, str) and _ESCAPED_BYTE.search(v)}
    if not bad:
        return fields
    where = f"{path}:{line}" if line is not None else path
    problem = "; ".join(f"{_describe_bad_bytes(v)} in field '{k}'" for k, v in bad.items())
    if bad_utf8 == "error":
        raise ValueError(f"{where}: {problem} (bad-UTF-8 policy 'error'; 'repair' or 'drop' reads it)")
    if bad_utf8 == "drop":
        logger.warning("%s: %s; row dropped", where, problem)
        issues.append(Issue(path, line, problem, "dropped"))
        return None
    repaired = {k: _repair(v) if k in bad else v for k, v in fields.items()}
    logger.warning("%s: %s; replaced by U+FFFD: %r", where, problem, repaired.get("sentence", ""))
    issues.append(Issue(path, line, problem, "repaired"))
    return repaired


def _to_float(value, what: str, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} is not a number: {value!r}") from None
    if math.isnan(out):
        raise ValueError(f"{where}: {what} is NaN")
    return out


def _check_times(rec: dict, path: str, line: int | None, issues: list[Issue]) -> bool:
    if rec["end"] >= rec["start"] and rec["start"] >= 0:
        return True
    where = f"{path}:{line}" if line is not None else path
    problem = f"bad timestamps start={rec['start']} end={rec['end']}"
    logger.warning("%s: %s; row dropped", where, problem)
    issues.append(Issue(path, line, problem, "dropped"))
    return False


def _read_csv(path: str, columns: dict[str, str], bad_utf8: str) -> AnnotationSet:
    text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: empty CSV file") from None
    missing = {k: columns[k] for k in REQUIRED_COLUMNS if columns[k] not in header}
    if missing:
        raise MissingColumnError(path, missing, header)
    index = {k: header.index(v) for k, v in columns.items() if v in header}
    records, issues = [], []
    prev_line = reader.line_num
    for row in reader:
        line, prev_line = prev_line + 1, reader.line_num  # a quoted field may span lines: report the first
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{line}"
        if len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} columns, found {len(row)}")
        fields = {k: row[i] for k, i in index.items()}
        fields = _handle_bad_utf8(fields, path, line, bad_utf8, issues)
        if fields is None:
            continue
        duration = fields.get("movie_duration")
        rec = {
            "movie": fields["movie"].strip(),
            "sentence": fields["sentence"].strip(),
            "start": _to_float(fields["start"], "start", where),
            "end": _to_float(fields["end"], "end", where),
            "movie_duration": _to_float(duration, "movie_duration", where) if duration not in (None, "") else None,
            "source_line": line,
        }
        if _check_times(rec, path, line, issues):
            records.append(rec)
    return _finalise(records, path, issues)


def _bad_byte_lines(raw: bytes) -> list[int]:
    """1-based line numbers of ``raw`` that are not valid UTF-8."""
    out = []
    for i, line in enumerate(raw.split(b"\n"), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
    return out


def _read_mad_json(path: str, bad_utf8: str, timestamp_field: str) -> AnnotationSet:
    if timestamp_field not in TIMESTAMP_FIELDS:
        raise ValueError(f"timestamp_field must be one of {TIMESTAMP_FIELDS}, got {timestamp_field!r}")
    raw = Path(path).read_bytes()
    try:
        data = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{ann_id: {{movie, sentence, timestamps, ...}}}}")
    # JSON keeps no line numbers after parsing: find the bad lines from the bytes and attach them in order.
    bad_lines = iter(_bad_byte_lines(raw)) if _ESCAPED_BYTE.search(raw.decode("utf-8", "surrogateescape")) else None
    records, issues = [], []
    for ann_id, entry in data.items():
        where = f"{path}: annotation {ann_id!r}"
        if not isinstance(entry, dict) or "movie" not in entry or "sentence" not in entry:
            raise ValueError(f"{where}: expected an object with 'movie', 'sentence' and '{timestamp_field}'")
        times = entry.get(timestamp_field)
        if not isinstance(times, (list, tuple)) or len(times) != 2:
            raise ValueError(f"{where}: '{timestamp_field}' must be [start, end], got {times!r}")
        fields = {"movie": str(entry["movie"]), "sentence": str(entry["sentence"])}
        line = None
        if bad_lines is not None and any(_ESCAPED_BYTE.search(v) for v in fields.values()):
            line = next(bad_lines, None)
        fields = _handle_bad_utf8(fields, path, line, bad_utf8, issues)
        if fields is None:
            continue
        duration = entry.get("movie_duration")
        rec = {
            "movie": fields["movie"].strip(),
            "sentence": fields["sentence"].strip(),
            "start": _to_float(times[0], f"{timestamp_field}[0]", where),
            "end": _to_float(times[1], f"{timestamp_field}[1]", where),
            "movie_duration": _to_float(duration, "movie_duration", where) if duration is not None else None,
            "source_line": line,
        }
        if _check_times(rec, path, line, issues):
            records.append(rec)
    return _finalise(records, path, issues)


def read_annotations(
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    columns: dict[str, str] | None = None,
    bad_utf8: str = DEFAULT_BAD_UTF8,
    timestamp_field: str = "timestamps",
) -> AnnotationSet:
    """Read MAD JSON or AutoAD-style CSV annotations.

    Args:
        path: the annotation file.
        fmt: ``"csv"`` or ``"mad-json"``; ``None`` picks by suffix (``.csv`` / ``.json``).
        columns: CSV column mapping with keys ``movie``, ``sentence``, ``start``, ``end``, ``movie_duration``
            (values: the header names in the file); missing keys keep their default names. CLIs build it with
            :func:`parse_columns`.
        bad_utf8: one of :data:`BAD_UTF8_POLICIES`: ``"error"`` raises a one-line ``ValueError`` naming file and
            line; ``"repair"`` (the default, :data:`DEFAULT_BAD_UTF8`) replaces each invalid byte by U+FFFD;
            ``"drop"`` drops the row. Repairs and drops are logged and in ``.issues``.
        timestamp_field: MAD JSON only: ``"timestamps"`` or ``"ext_timestamps"``.

    Returns:
        An :class:`AnnotationSet` with ADs sorted by movie then ``ad_index``.

    Raises:
        MissingColumnError: a CSV lacks a required column (a ``ValueError``; ``.message(option)`` names a flag).
        ValueError: on unreadable input (one line naming the file and, where known, the line).
    """
    path = str(path)
    if bad_utf8 not in BAD_UTF8_POLICIES:
        raise ValueError(f"bad_utf8 must be one of {BAD_UTF8_POLICIES}, got {bad_utf8!r}")
    if fmt is None:
        suffix = Path(path).suffix.lower()
        fmt = {".csv": "csv", ".json": "mad-json"}.get(suffix)
        if fmt is None:
            raise ValueError(f"{path}: cannot tell the format from suffix {suffix!r}; pass fmt='csv' or 'mad-json'")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such annotation file")
    if fmt == "csv":
        unknown = set(columns or {}) - set(DEFAULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown column mapping key(s) {sorted(unknown)}; allowed: {sorted(DEFAULT_COLUMNS)}")
        return _read_csv(path, {**DEFAULT_COLUMNS, **(columns or {})}, bad_utf8)
    return _read_mad_json(path, bad_utf8, timestamp_field)


def write_mad_json(ads: list[AD], path: str | os.PathLike) -> None:
    """Write ADs as MAD annotation JSON (``ext_timestamps`` = ``timestamps``), atomically.

    Used by SynthMAD and tests, so generated data goes through the same reader as real MAD.
    """
    from distinctad.common import atomic_write_text

    out = {}
    for i, ad in enumerate(ads):
        out[str(i)] = {
            "movie": ad.movie,
            "sentence": ad.sentence,
            "timestamps": [ad.start, ad.end],
            "ext_timestamps": [ad.start, ad.end],
            "movie_duration": ad.movie_duration,
        }
    # Not atomic_write_json: that sorts keys as strings ("10" < "2"), and insertion order breaks (start, end) ties.
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
