"""Reading predictions and ground truth, and matching one to the other.

The harness scores any system's output, so it trusts nothing: every prediction is matched to exactly one
ground-truth AD by key (``movie`` + ``ad_index``, or ``movie`` + ``start``/``end`` within a tolerance), and
every way that can go wrong (a GT AD without prediction, two predictions for one AD, a prediction for an AD or
movie the GT does not have, an empty prediction) is counted and reported with its first examples. A silent
mismatch would shift scores without anyone noticing, so problems fail the run unless the caller allows them.

``ad_index`` is the AD's 0-based position in its movie after a stable sort of the movie's ground-truth ADs by
(start, end), ties in file order, as ``distinctad.data.annotations`` numbers them; not the row number in a file.
A prediction that gives both ``ad_index`` and ``start``/``end`` pointing to different ADs is reported. Exact
duplicate ground-truth rows (same movie, start, end, text) are reported as a property of the ground truth and
matched one-to-one in order, or dropped (:func:`match`'s ``gt_duplicates``).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distinctad.data.annotations import DEFAULT_BAD_UTF8, MissingColumnError, read_annotations
from distinctad.eval.errors import EvalInputError

logger = logging.getLogger(__name__)

DEFAULT_TIME_TOLERANCE = 0.05  # seconds; generators copy start/end from the shards, so they agree far closer
NUM_EXAMPLES = 3  # examples shown per problem kind


@dataclass(frozen=True)
class Prediction:
    """One predicted AD, as read from a predictions JSONL line or a dict."""

    movie: str
    text: str
    ad_index: int | None = None
    start: float | None = None
    end: float | None = None
    where: str = ""  # "file:line" or "predictions[i]", for messages


@dataclass(frozen=True)
class Reference:
    """One ground-truth AD (the fields of ``distinctad.data.annotations.AD`` the harness needs)."""

    movie: str
    ad_index: int
    sentence: str
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class Pair:
    """A ground-truth AD and the prediction matched to it."""

    movie: str
    ad_index: int
    reference: str
    prediction: str


GT_DUPLICATE_POLICIES = ("match", "drop")
MATCH_BY = ("ad_index", "time")
AD_INDEX_DEFINITION = (
    "ad_index is the AD's 0-based position in its movie after a stable sort of the movie's ground-truth ADs by "
    "(start, end), ties in file order; not its row number in the file"
)


def _pred_example(p: Prediction) -> str:
    key = f"ad_index={p.ad_index}" if p.ad_index is not None else f"start={p.start} end={p.end}"
    return f"{p.where} {p.movie!r} {key}".strip()


def _first(items: Sequence[Any], fmt: Any) -> str:
    more = ", ..." if len(items) > NUM_EXAMPLES else ""
    return "; ".join(fmt(x) for x in items[:NUM_EXAMPLES]) + more


@dataclass
class MatchResult:
    """Matched pairs (sorted by movie, ad_index), every problem found while matching, and what was noticed.

    Attributes:
        pairs: one per GT AD that has a prediction.
        missing, duplicate, unknown_movie, unknown_ad, empty: the problems (they fail a strict run).
        references: the ground truth that was matched against (after ``gt_duplicates="drop"``), in order.
        gt_duplicates: groups of exact duplicate GT rows (same movie, start, end and text), each in ad_index
            order; a property of the ground truth, reported whatever the policy.
        gt_duplicates_policy: ``"match"`` (each row kept, matched one-to-one in order) or ``"drop"`` (each group
            scored once, as its first row).
        ignored_for_dropped: predictions for a dropped duplicate GT row (``"drop"``), ignored.
        key_conflicts: (prediction, GT AD its ad_index names or None, GT AD its start/end match or None) for
            predictions that carry both keys when they point to different GT ADs.
        match_by: which key paired those predictions.
        shared_time: predictions keyed by start/end that landed on a time shared by GT ADs with different texts
            (paired in order, which may be the wrong way round).
    """

    pairs: list[Pair]
    missing: list[Reference] = field(default_factory=list)
    duplicate: list[Prediction] = field(default_factory=list)
    unknown_movie: list[Prediction] = field(default_factory=list)
    unknown_ad: list[Prediction] = field(default_factory=list)
    empty: list[Prediction] = field(default_factory=list)
    num_predictions: int = 0
    num_references: int = 0
    references: list[Reference] = field(default_factory=list)
    gt_duplicates: list[list[Reference]] = field(default_factory=list)
    gt_duplicates_policy: str = "match"
    ignored_for_dropped: list[Prediction] = field(default_factory=list)
    key_conflicts: list[tuple[Prediction, Reference | None, Reference | None]] = field(default_factory=list)
    match_by: str = "ad_index"
    shared_time: list[Prediction] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicate or self.unknown_movie or self.unknown_ad or self.empty)

    @property
    def gt_duplicate_rows(self) -> int:
        """GT rows beyond the first of each duplicate group."""
        return sum(len(g) - 1 for g in self.gt_duplicates)

    def problems(self) -> list[str]:
        """One short phrase per kind of problem, with its count and first examples."""
        out = []
        kinds: list[tuple[str, list, Any]] = [
            ("missing (GT ADs without prediction)", self.missing, lambda r: f"{r.movie!r} ad_index={r.ad_index}"),
            ("duplicate (a second prediction for one GT AD)", self.duplicate, _pred_example),
            ("unknown movie", self.unknown_movie, _pred_example),
            ("unknown AD (no GT AD with that index/time)", self.unknown_ad, _pred_example),
            ("empty prediction text", self.empty, _pred_example),
        ]
        for name, items, fmt in kinds:
            if items:
                line = f"{len(items)} {name}, first: {_first(items, fmt)}"
                if items is self.missing and self.gt_duplicates_policy == "match":
                    twins = {(r.movie, r.ad_index) for g in self.gt_duplicates for r in g}
                    n = sum((r.movie, r.ad_index) in twins for r in self.missing)
                    if n:
                        line += (
                            f" ({n} of them exact duplicate GT rows; --gt-duplicates drop scores each duplicated "
                            "AD once)"
                        )
                out.append(line)
        return out

    def notices(self) -> list[str]:
        """One line per noteworthy property of the matching that is not a problem of the predictions."""
        out = []
        if self.gt_duplicates:
            g = self.gt_duplicates[0]
            first = (
                f"{g[0].movie!r} start={g[0].start} end={g[0].end} {g[0].sentence[:40]!r} "
                f"(ad_index {', '.join(str(r.ad_index) for r in g)})"
            )
            line = (
                f"ground truth: {self.gt_duplicate_rows} exact duplicate row(s) (same movie, start, end and text) in "
                f"{len(self.gt_duplicates)} group(s), first: {first}; "
            )
            if self.gt_duplicates_policy == "drop":
                line += (
                    f"dropped, each group scored once (--gt-duplicates drop); {len(self.ignored_for_dropped)} "
                    "prediction(s) for the dropped rows ignored"
                )
            else:
                line += "each row kept and matched one-to-one in order (--gt-duplicates match)"
            out.append(line)
        if self.key_conflicts:

            def conflict(c: tuple[Prediction, Reference | None, Reference | None]) -> str:
                p, by_index, by_time = c
                idx = "no such AD" if by_index is None else f"GT {by_index.start}-{by_index.end}"
                tm = "no GT AD" if by_time is None else f"ad_index {by_time.ad_index}"
                return (
                    f"{p.where} {p.movie!r} ad_index={p.ad_index} ({idx}) but start={p.start} end={p.end} ({tm})"
                ).strip()

            other = "time" if self.match_by == "ad_index" else "ad_index"
            used = "ad_index" if self.match_by == "ad_index" else "start/end"
            out.append(
                f"{len(self.key_conflicts)} prediction(s) carry both ad_index and start/end pointing to different "
                f"ground-truth ADs; {used} was used (--match-by {self.match_by}), first: "
                f"{_first(self.key_conflicts, conflict)}. {AD_INDEX_DEFINITION}; --match-by {other} pairs by "
                f"{'start/end' if other == 'time' else 'ad_index'} instead"
            )
        if self.shared_time:
            out.append(
                f"{len(self.shared_time)} prediction(s) keyed by start/end matched a time shared by ground-truth ADs "
                f"with different texts, paired in file order, first: {_first(self.shared_time, _pred_example)}; "
                "give ad_index to pair them exactly"
            )
        return out

    def summary(self) -> dict:
        """Counts and first examples as plain data, for the report."""
        return {
            "predictions": self.num_predictions,
            "references": self.num_references,
            "matched": len(self.pairs),
            "missing": len(self.missing),
            "duplicate": len(self.duplicate),
            "unknown_movie": len(self.unknown_movie),
            "unknown_ad": len(self.unknown_ad),
            "empty": len(self.empty),
            "match_by": self.match_by,
            "key_conflicts": len(self.key_conflicts),
            "shared_time": len(self.shared_time),
            "gt_duplicates": {
                "rows": self.gt_duplicate_rows,
                "groups": len(self.gt_duplicates),
                "first": None
                if not self.gt_duplicates
                else {
                    "movie": self.gt_duplicates[0][0].movie,
                    "ad_index": [r.ad_index for r in self.gt_duplicates[0]],
                    "start": self.gt_duplicates[0][0].start,
                    "end": self.gt_duplicates[0][0].end,
                },
                "policy": self.gt_duplicates_policy,
                "ignored_predictions": len(self.ignored_for_dropped),
            },
            "problems": self.problems(),
        }


# --------------------------------------------------------------------------------------------------------------
# predictions


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def parse_prediction(obj: Any, where: str) -> Prediction:
    """Validate one prediction object ``{"movie", "ad_index" | "start"+"end", "text"}``.

    Raises:
        EvalInputError: naming ``where`` (e.g. ``"preds.jsonl:12"``) and what is wrong.
    """
    if not isinstance(obj, dict):
        raise EvalInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    movie = obj.get("movie")
    if not isinstance(movie, str) or not movie:
        raise EvalInputError(f"{where}: 'movie' must be a non-empty string, got {movie!r}")
    text = obj.get("text")
    if not isinstance(text, str):
        raise EvalInputError(f"{where}: 'text' must be a string, got {text!r}")
    ad_index = obj.get("ad_index")
    if ad_index is not None and (not _is_int(ad_index) or ad_index < 0):
        raise EvalInputError(f"{where}: 'ad_index' must be a non-negative integer, got {ad_index!r}")
    start, end = obj.get("start"), obj.get("end")
    if ad_index is None:
        if start is None or end is None:
            raise EvalInputError(f"{where}: needs 'ad_index', or 'start' and 'end', to find its ground truth")
    for name, v in (("start", start), ("end", end)):
        if v is not None and not _is_number(v):
            raise EvalInputError(f"{where}: '{name}' must be a finite number of seconds, got {v!r}")
    return Prediction(
        movie=movie,
        text=text,
        ad_index=ad_index,
        start=float(start) if start is not None else None,
        end=float(end) if end is not None else None,
        where=where,
    )


def read_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Read a predictions JSONL file (one object a line; blank lines are skipped).

    Raises:
        EvalInputError: on a missing file, a line that is not UTF-8 or not JSON, or a bad field, naming the line.
    """
    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read predictions ({e.strerror})") from None
    preds = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        where = f"{path}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EvalInputError(
                f"{where}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                "write predictions as UTF-8"
            ) from None
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        preds.append(parse_prediction(obj, where))
    if not preds:
        raise EvalInputError(f"{path}: no predictions in the file")
    return preds


# --------------------------------------------------------------------------------------------------------------
# ground truth


def as_references(items: Iterable[Any]) -> list[Reference]:
    """Turn ``AD`` records (or an ``AnnotationSet``) or AD-like dicts into :class:`Reference` s, sorted by movie
    then ad_index.

    Dicts need ``movie`` and ``sentence`` plus ``ad_index`` or ``start``/``end``; without ``ad_index`` the ADs of
    a movie are numbered by a stable (start, end) sort, as the annotation reader does. The same
    (movie, ad_index) given twice with the same text is kept once (overlapping windows); with different text
    it is an error.
    """
    items = getattr(items, "ads", items)  # an AnnotationSet
    raw: list[dict] = []
    for i, item in enumerate(items):
        where = f"references[{i}]"
        rec = dict(item) if isinstance(item, dict) else {k: getattr(item, k, None) for k in Reference.__annotations__}
        if not isinstance(rec.get("movie"), str) or not rec["movie"]:
            raise EvalInputError(f"{where}: 'movie' must be a non-empty string, got {rec.get('movie')!r}")
        if not isinstance(rec.get("sentence"), str):
            raise EvalInputError(f"{where}: 'sentence' must be a string, got {rec.get('sentence')!r}")
        ai = rec.get("ad_index")
        if ai is not None and (not _is_int(ai) or ai < 0):
            raise EvalInputError(f"{where}: 'ad_index' must be a non-negative integer, got {ai!r}")
        for name in ("start", "end"):
            if rec.get(name) is not None and not _is_number(rec[name]):
                raise EvalInputError(f"{where}: '{name}' must be a finite number, got {rec[name]!r}")
        if ai is None and (rec.get("start") is None or rec.get("end") is None):
            raise EvalInputError(f"{where}: needs 'ad_index', or 'start' and 'end'")
        raw.append(rec)

    by_movie: dict[str, list[dict]] = defaultdict(list)
    for rec in raw:
        by_movie[rec["movie"]].append(rec)
    refs: list[Reference] = []
    for movie in sorted(by_movie):
        recs = by_movie[movie]
        if any(r.get("ad_index") is None for r in recs):
            if any(r.get("ad_index") is not None for r in recs):
                raise EvalInputError(f"movie {movie!r}: some references have 'ad_index' and some do not")
            recs = sorted(recs, key=lambda r: (r["start"], r["end"]))
            recs = [{**r, "ad_index": i} for i, r in enumerate(recs)]
        seen: dict[int, Reference] = {}
        for r in recs:
            ref = Reference(
                movie=movie,
                ad_index=r["ad_index"],
                sentence=r["sentence"],
                start=float(r["start"]) if r.get("start") is not None else None,
                end=float(r["end"]) if r.get("end") is not None else None,
            )
            old = seen.get(ref.ad_index)
            if old is not None and old.sentence != ref.sentence:
                raise EvalInputError(
                    f"ground truth has two different ADs for {movie!r} ad_index={ref.ad_index}: "
                    f"{old.sentence!r} vs {ref.sentence!r}"
                )
            seen[ref.ad_index] = ref
        refs.extend(seen[i] for i in sorted(seen))
    if not refs:
        raise EvalInputError("no ground-truth ADs")
    return refs


def _shard_paths(spec: str) -> list[str]:
    if os.path.isdir(spec):
        paths = sorted(glob.glob(os.path.join(spec, "*.tar")) + glob.glob(os.path.join(spec, "*.tar.gz")))
    elif any(c in spec for c in "*?["):
        paths = sorted(glob.glob(spec))
    else:
        paths = [spec]
    if not paths:
        raise EvalInputError(f"{spec}: no .tar shards found")
    return paths


def _one_line(e: BaseException) -> str:
    """An exception's text on one line (tarfile lists every compression it tried on its own line)."""
    return " ".join(str(e).split())


def read_shard_references(spec: str, *, skipped: list[str] | None = None) -> list[Reference]:
    """Ground truth from the ``json`` members of window (or frames) shards: a directory, a glob or one tar.

    Only JSON is decoded: features and images are skipped unread, and nothing is ever unpickled.

    Args:
        spec: a shard directory, a glob or one ``.tar``.
        skipped: strict when ``None`` (the default, what ``distinctad-eval`` uses): a truncated or corrupt shard or
            sample is an :class:`EvalInputError`. A list makes the read lenient, as the training jobs' own
            evaluation is: an unreadable sample, or the unreadable rest of a truncated shard, is skipped and one
            line naming it appended to the list; everything readable is kept.
    """
    recs: list[dict] = []

    def fail(message: str) -> None:
        if skipped is None:
            raise EvalInputError(message)
        skipped.append(message)

    for path in _shard_paths(spec):
        try:
            tar = tarfile.open(path, "r:*")
        except (OSError, tarfile.TarError) as e:
            fail(f"{path}: not a readable tar shard ({_one_line(e)})")
            continue
        with tar:
            members = iter(tar)
            while True:
                try:
                    member = next(members)
                except StopIteration:
                    break
                except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
                    fail(f"{path}: truncated or corrupt tar shard ({_one_line(e)})")
                    break
                base = os.path.basename(member.name)
                # WebDataset splits the member name at the first dot: "key.json" is the sample's json field.
                if not member.isfile() or base.split(".", 1)[-1] != "json":
                    continue
                where = f"{path}: {member.name}"
                try:
                    raw = tar.extractfile(member).read()
                except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
                    fail(f"{where}: truncated or corrupt tar shard ({_one_line(e)})")
                    break
                try:
                    meta = json.loads(raw.decode("utf-8"))
                    recs.extend(_shard_records(meta, where))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    fail(f"{where}: not valid UTF-8 JSON ({e})")
                except EvalInputError as e:
                    fail(str(e))
    return as_references(recs)


def _shard_records(meta: Any, where: str) -> list[dict]:
    if not isinstance(meta, dict) or "movie" not in meta or "sentence" not in meta or "ad_index" not in meta:
        raise EvalInputError(f"{where}: expected a sample json with 'movie', 'ad_index' and 'sentence'")
    if not isinstance(meta["ad_index"], list):  # frames sample: one AD
        return [{k: meta.get(k) for k in ("movie", "ad_index", "sentence", "start", "end")}]
    n = meta.get("num_valid", len(meta["ad_index"]))
    fields = {k: meta.get(k) for k in ("ad_index", "sentence", "start", "end")}
    for k, v in fields.items():
        if v is not None and (not isinstance(v, list) or len(v) < n):
            raise EvalInputError(f"{where}: '{k}' must be a list of at least num_valid={n} entries")
    return [
        {
            "movie": meta["movie"],
            **{k: (v[i] if v is not None else None) for k, v in fields.items()},
        }
        for i in range(n)
    ]


def read_references(
    spec: str,
    *,
    fmt: str | None = None,
    columns: dict[str, str] | None = None,
    bad_utf8: str = DEFAULT_BAD_UTF8,
    timestamp_field: str = "timestamps",
    columns_option: str | None = None,
) -> list[Reference]:
    """Ground truth from an annotation CSV / MAD JSON (via ``distinctad.data.annotations``) or window shards.

    Args:
        spec: an annotation file, a shard directory, a shard glob or one ``.tar``.
        fmt: ``"csv"``, ``"mad-json"``, ``"shards"``; ``None`` guesses from the path.
        columns: CSV column mapping (see ``read_annotations``).
        bad_utf8: the annotation reader's invalid-UTF-8 policy, one of ``annotations.BAD_UTF8_POLICIES``
            (default ``annotations.DEFAULT_BAD_UTF8``).
        timestamp_field: MAD JSON timestamp field.
        columns_option: the setting that maps columns (e.g. ``"--gt-columns"``), named when a column is missing.
    """
    if fmt is None:
        is_tar = spec.endswith((".tar", ".tar.gz")) or os.path.isdir(spec) or any(c in spec for c in "*?[")
        fmt = "shards" if is_tar else None
    if fmt == "shards":
        return read_shard_references(spec)
    try:
        anns = read_annotations(spec, fmt=fmt, columns=columns, bad_utf8=bad_utf8, timestamp_field=timestamp_field)
    except MissingColumnError as e:
        raise EvalInputError(e.message(columns_option)) from None
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    for issue in anns.issues:
        logger.warning("ground truth %s:%s: %s (%s)", issue.file, issue.line, issue.problem, issue.action)
    return as_references(anns.ads)


# --------------------------------------------------------------------------------------------------------------
# matching


def find_gt_duplicates(references: Iterable[Reference]) -> list[list[Reference]]:
    """Groups of exact duplicate GT rows: same movie, start, end and text under different ad_index.

    Real AD annotations hold such rows (one public set has five in one movie). Rows without start/end are never
    grouped. Each group is in ad_index order; groups are in (movie, first ad_index) order.
    """
    groups: dict[tuple, list[Reference]] = defaultdict(list)
    for r in references:
        if r.start is not None and r.end is not None:
            groups[(r.movie, r.start, r.end, r.sentence)].append(r)
    found = [sorted(g, key=lambda r: r.ad_index) for g in groups.values() if len(g) > 1]
    return sorted(found, key=lambda g: (g[0].movie, g[0].ad_index))


def match(
    predictions: Sequence[Prediction],
    references: Sequence[Reference],
    *,
    time_tolerance: float = DEFAULT_TIME_TOLERANCE,
    gt_duplicates: str = "match",
    match_by: str = "ad_index",
) -> MatchResult:
    """Pair each GT AD with its prediction.

    A prediction with ``ad_index`` is matched by (movie, ad_index) (:data:`AD_INDEX_DEFINITION`); one with only
    ``start``/``end`` goes to the GT AD of its movie whose start and end both lie within ``time_tolerance``
    seconds, the closest by |Δstart| + |Δend|. When several GT ADs share that exact time, predictions take them
    one-to-one in file order. A prediction that carries both keys is paired by ``match_by`` and, when the two keys
    point to different GT ADs, listed in ``key_conflicts``. The first prediction for a GT AD wins; later ones are
    duplicates. Empty predictions are reported and still paired (they score as an empty hypothesis when the caller
    allows problems).

    Args:
        predictions: parsed predictions.
        references: the ground truth.
        time_tolerance: seconds, for start/end keys.
        gt_duplicates: exact duplicate GT rows (:func:`find_gt_duplicates`) are ``"match"``: each kept and matched
            one-to-one in order (the default: the GT scored as published); or ``"drop"``: each group scored once,
            as its first row, and predictions for the other rows (by their ad_index, or a second one at that time)
            ignored.
        match_by: ``"ad_index"`` (default) or ``"time"``: the key used for predictions that carry both.
    """
    if gt_duplicates not in GT_DUPLICATE_POLICIES:
        raise ValueError(f"gt_duplicates must be one of {GT_DUPLICATE_POLICIES}, got {gt_duplicates!r}")
    if match_by not in MATCH_BY:
        raise ValueError(f"match_by must be one of {MATCH_BY}, got {match_by!r}")
    references = sorted(references, key=lambda r: (r.movie, r.ad_index))
    dup_groups = find_gt_duplicates(references)
    alias: dict[tuple[str, int], tuple[str, int]] = {}  # a dropped twin's key -> its group's first key
    spare: dict[tuple[str, int], int] = {}  # a kept key -> how many twins were dropped
    if gt_duplicates == "drop":
        for g in dup_groups:
            kept = (g[0].movie, g[0].ad_index)
            spare[kept] = len(g) - 1
            alias.update({(r.movie, r.ad_index): kept for r in g[1:]})
        references = [r for r in references if (r.movie, r.ad_index) not in alias]
    by_key = {(r.movie, r.ad_index): r for r in references}
    by_movie: dict[str, list[Reference]] = defaultdict(list)
    for r in references:
        by_movie[r.movie].append(r)
    times: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    result = MatchResult(
        pairs=[],
        num_predictions=len(predictions),
        num_references=len(references),
        references=references,
        gt_duplicates=dup_groups,
        gt_duplicates_policy=gt_duplicates,
        match_by=match_by,
    )
    chosen: dict[tuple[str, int], Prediction] = {}
    absorbed: dict[tuple[str, int], int] = defaultdict(int)

    def by_time(p: Prediction) -> tuple[Reference | None, bool]:
        """The GT AD for p's start/end (the first free one among ADs at that exact time), and whether the ADs
        at that time have different texts."""
        if p.movie not in times:
            ads = by_movie[p.movie]
            times[p.movie] = (
                np.array([np.nan if r.start is None else r.start for r in ads]),
                np.array([np.nan if r.end is None else r.end for r in ads]),
            )
        starts, ends = times[p.movie]
        ds, de = np.abs(starts - p.start), np.abs(ends - p.end)
        ok = (ds <= time_tolerance) & (de <= time_tolerance)  # NaN (no GT time) compares False
        if not ok.any():
            return None, False
        best = int(np.argmin(np.where(ok, ds + de, np.inf)))
        ads = by_movie[p.movie]
        slot = [ads[j] for j in np.flatnonzero((starts == starts[best]) & (ends == ends[best]))]
        free = [r for r in slot if (r.movie, r.ad_index) not in chosen]
        return (free[0] if free else ads[best]), len({r.sentence for r in slot}) > 1

    for p in predictions:
        if p.movie not in by_movie:
            result.unknown_movie.append(p)
            continue
        has_time = p.start is not None and p.end is not None
        ref_index = None
        if p.ad_index is not None:
            ref_index = by_key.get(alias.get((p.movie, p.ad_index), (p.movie, p.ad_index)))
        ref_time, ambiguous = by_time(p) if has_time else (None, False)
        if p.ad_index is not None and has_time:
            if ref_index is not None and ref_index.start is not None and ref_index.end is not None:
                ds, de = abs(ref_index.start - p.start), abs(ref_index.end - p.end)
                conflict = ds > time_tolerance or de > time_tolerance
            else:  # an unknown ad_index whose times name an AD; a GT AD without times cannot be checked
                conflict = ref_index is None and ref_time is not None
            if conflict:
                result.key_conflicts.append((p, ref_index, ref_time))
        if p.ad_index is None or (match_by == "time" and has_time):
            ref = ref_time
            if ambiguous and ref is not None:
                result.shared_time.append(p)
        else:
            ref = ref_index
        if ref is None:
            result.unknown_ad.append(p)
            continue
        key = (ref.movie, ref.ad_index)
        if key in chosen:
            if absorbed[key] < spare.get(key, 0):
                absorbed[key] += 1
                result.ignored_for_dropped.append(p)
            else:
                result.duplicate.append(p)
            continue
        chosen[key] = p
        if not p.text.strip():
            result.empty.append(p)
    for r in references:
        p = chosen.get((r.movie, r.ad_index))
        if p is None:
            result.missing.append(r)
        else:
            result.pairs.append(Pair(movie=r.movie, ad_index=r.ad_index, reference=r.sentence, prediction=p.text))
    return result
