"""Captioning metrics with pycocoevalcap's scorers and jars, as its README uses them.

Sentences go through the Stanford PTB tokenizer (Java: lower-cases, splits, drops punctuation), then
``Bleu(4)``, METEOR 1.5, ``Rouge()``, ``Cider()`` and SPICE score them. Scores are ×100, as AD papers
report them. Each AD has one reference (its own ground truth), as in AutoAD / DistinctAD on MAD-Eval.

The three Java programs (PTB tokenizer, METEOR, SPICE) run from pycocoevalcap's jars with pycocoevalcap's exact
arguments and protocol, but through :mod:`distinctad.eval.java` instead of pycocoevalcap's Python wrappers: every
Java call has a deadline and any failure ends in one line carrying Java's own message (pycocoevalcap's
``Meteor`` can wait forever on its lock after the JVM died, and never reads stderr).

Per-group (per-movie) scores: BLEU and METEOR are corpus-level statistics, so they are recomputed on each
group's ADs; ROUGE-L, CIDEr and SPICE are means of per-AD scores, so a group's score is the mean over its ADs
(CIDEr keeps the document frequencies of the whole set, so per-movie CIDEr averages back to the overall one).

Scores that are undefined on the input are ``None`` with a notice, never a number that looks like a result:
BLEU-n where the predictions hold no n-gram (pycocoevalcap's smoothing would print e.g. 3.16 for BLEU-4 of a
perfect 3-word AD), CIDEr-D on a single AD (every idf is log(1/1) = 0), SPICE on ADs without scene-graph tuples.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from distinctad.eval.errors import EvalEnvironmentError
from distinctad.eval.java import DEFAULT_TIMEOUT_S, JAVA_HINT, JavaSession, check_java, find_java, run_java
from distinctad.eval.normalize import collapse_whitespace

logger = logging.getLogger(__name__)

__all__ = [
    "CAPTION_METRICS",
    "JAVA_HINT",
    "MAX_TOKENS",
    "METRIC_NAMES",
    "caption_metrics",
    "check_java",
    "keep_meteor",
    "ptb_tokenize",
    "score_tokenized",
    "spice_unavailable_reason",
]

CAPTION_METRICS = ("bleu", "meteor", "rouge", "cider", "spice")
METRIC_NAMES = {
    "bleu": ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"],
    "meteor": ["METEOR"],
    "rouge": ["ROUGE-L"],
    "cider": ["CIDEr"],
    "spice": ["SPICE"],
}
# Tokens kept per sentence for scoring. The longest MAD-Eval AD has 36 words; METEOR (-Xmx2G) scores 2,000
# tokens in well under a second but dies of OutOfMemoryError on 40,000.
MAX_TOKENS = 1000
NUM_EXAMPLES = 3


def _package_dir(sub: str) -> str:
    import pycocoevalcap

    return os.path.join(list(pycocoevalcap.__path__)[0], sub)  # a namespace package: no __file__


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here, or ``None`` when it can.

    ``Spice()`` downloads Stanford CoreNLP 3.6.0 on first use; this harness never downloads, so it looks for the
    jars that ``python -m pycocoevalcap.spice.get_stanford_models`` would have put in place.
    """
    lib = os.path.join(_package_dir("spice"), "lib")
    needed = [os.path.join(lib, f"stanford-corenlp-3.6.0{s}.jar") for s in ("", "-models")]
    missing = [p for p in needed if not os.path.isfile(p)]
    if missing:
        return (
            f"Stanford CoreNLP 3.6.0 models not found ({missing[0]}); fetch them once with "
            "`python -m pycocoevalcap.spice.get_stanford_models` on a machine with internet"
        )
    return None


def _examples(labels: Sequence[str], idx: Sequence[int]) -> str:
    shown = ", ".join(labels[i] for i in idx[:NUM_EXAMPLES])
    return shown + (", ..." if len(idx) > NUM_EXAMPLES else "")


def _timeout(java_timeout: float | None, per_item: float, n: int) -> float:
    """The user's ``java_timeout`` as given; by default ``DEFAULT_TIMEOUT_S`` plus ``per_item`` s per item."""
    return float(java_timeout) if java_timeout is not None else DEFAULT_TIMEOUT_S + per_item * n


def ptb_tokenize(sentences: Sequence[str], *, java_timeout: float | None = None) -> list[str]:
    """PTB-tokenize sentences as pycocoevalcap's ``PTBTokenizer`` does (one Java call for all of them).

    Same jar, arguments (``-preserveLines -lowerCase``) and punctuation filter; the input file goes to a temporary
    directory (not into the installed package), the call has a deadline, and the output must have one line per
    sentence (a misaligned output is an error, never a silent shift). Empty sentences bypass the tokenizer.

    Args:
        sentences: raw text; whitespace (newlines, Unicode line separators) is collapsed first.
        java_timeout: seconds for the Java call (default: 300 s + 10 ms per sentence).
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    clean = [collapse_whitespace(s) for s in sentences]
    todo = [i for i, s in enumerate(clean) if s]
    out = [""] * len(clean)
    if not todo:
        return out
    with tempfile.TemporaryDirectory(prefix="distinctad-ptb-") as tmp:
        path = os.path.join(tmp, "sentences.txt")
        with open(path, "wb") as f:
            f.write("".join(clean[i] + "\n" for i in todo).encode("utf-8"))  # each line ends: so does its output
        raw = run_java(
            "the PTB tokenizer",
            ["-cp", STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
             "-lowerCase", path],
            cwd=_package_dir("tokenizer"),
            timeout=_timeout(java_timeout, 0.01, len(todo)),
        )  # fmt: skip
    text = raw.decode("utf-8", errors="replace")
    lines = text.removesuffix("\n").split("\n")
    if len(lines) != len(todo) or not text.endswith("\n"):
        raise EvalEnvironmentError(
            f"the PTB tokenizer returned {text.count(chr(10))} lines for {len(todo)} sentences, so tokens cannot be "
            "paired with their ADs; please report the input that does this"
        )
    for i, line in zip(todo, lines):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
    return out


def _meteor_text(text: str) -> str:
    # pycocoevalcap removes '|||' (METEOR's field separator) from the hypothesis; the same for the reference,
    # and no newline may reach the line protocol
    return " ".join(text.replace("|||", "").split())


def _numbers(line: str) -> bool:
    try:
        return bool([float(x) for x in line.split()])
    except ValueError:
        return False


_kept_meteor: dict[tuple, JavaSession] | None = None
"""METEOR processes kept for reuse inside :func:`keep_meteor` (None outside it), keyed by what starts them."""


@contextlib.contextmanager
def keep_meteor() -> Iterator[None]:
    """Inside the block, every METEOR score comes from ONE METEOR 1.5 process, started by the first and then reused.

    METEOR spends ~10 s of CPU loading its paraphrase table (``paraphrase-en.gz``, 60 MB) each time its JVM starts,
    far more than scoring a few thousand ADs takes. pycocoevalcap's ``Meteor`` object keeps its process for all its
    ``compute_score`` calls in the same way; the protocol has no state between calls, so the scores are the same.
    A process is reused only with the same ``java``, arguments and Java options (``_JAVA_OPTIONS``,
    ``JAVA_TOOL_OPTIONS``); one that failed is never reused. The processes (~1 GB of memory each while alive) are
    closed when the block ends. Nested blocks share the outermost one's. Used by ``distinctad-ablate`` around its
    grid of Stage-II runs, each of which evaluates.
    """
    global _kept_meteor
    if _kept_meteor is not None:
        yield
        return
    _kept_meteor = {}
    try:
        yield
    finally:
        sessions, _kept_meteor = _kept_meteor, None
        for java in sessions.values():
            java.close()


def _meteor(
    refs: Sequence[str],
    hyps: Sequence[str],
    members: dict[str, list[int]],
    java_timeout: float | None,
    progress: bool | None,
) -> tuple[float, dict[str, float]]:
    """Corpus METEOR over all ADs and over each group's ADs, from one METEOR 1.5 process.

    The protocol of pycocoevalcap's ``Meteor``: ``SCORE ||| ref ||| hyp`` gives an AD's statistics line;
    ``EVAL ||| stats ||| stats ...`` gives one segment score per AD, then the corpus score. Each group is one more
    ``EVAL`` over its ADs' statistics (pycocoevalcap would re-send the same ``SCORE`` lines: same result). Inside
    :func:`keep_meteor` the process is one kept from an earlier call, when there is one.
    """
    from pycocoevalcap.meteor.meteor import METEOR_JAR

    timeout = _timeout(java_timeout, 0.0, 0)
    args = ["-jar", "-Xmx2G", METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
    key = (find_java(), *args, os.environ.get("_JAVA_OPTIONS"), os.environ.get("JAVA_TOOL_OPTIONS"))
    kept = _kept_meteor
    java = kept.pop(key, None) if kept is not None else None
    if java is None or java.proc.poll() is not None:
        if java is not None:
            java.close()
        java = JavaSession("METEOR", args, cwd=_package_dir("meteor"), timeout=timeout)
    java.timeout = timeout
    if kept is None:
        with java:  # closed when done; killed on an error
            return _meteor_scores(java, refs, hyps, members, progress)
    try:
        result = _meteor_scores(java, refs, hyps, members, progress)
    except BaseException:
        java.__exit__(*sys.exc_info())  # killed: a process that failed, or was left mid-answer, is not reused
        raise
    kept[key] = java
    return result


def _meteor_scores(
    java: JavaSession,
    refs: Sequence[str],
    hyps: Sequence[str],
    members: dict[str, list[int]],
    progress: bool | None,
) -> tuple[float, dict[str, float]]:
    """:func:`_meteor`'s exchange with a running METEOR process."""

    def number(line: str) -> float:
        try:
            return float(line.strip())
        except ValueError:
            raise EvalEnvironmentError(f"METEOR answered {line[:80]!r} where a score was expected") from None

    stats = []
    for r, h in zip(refs, hyps):
        java.send(f"SCORE ||| {_meteor_text(r)} ||| {_meteor_text(h)}")
        line = java.readline().strip()
        if not _numbers(line):
            raise EvalEnvironmentError(f"METEOR answered {line[:80]!r} where statistics were expected")
        stats.append(line)

    def corpus(ids: Sequence[int]) -> float:
        java.send("EVAL ||| " + " ||| ".join(stats[i] for i in ids))
        for _ in ids:
            number(java.readline())  # segment scores
        return number(java.readline())

    overall = corpus(range(len(stats)))
    per_group = {
        g: corpus(ids) for g, ids in tqdm(members.items(), desc="METEOR per movie", disable=_disable(progress))
    }
    return overall, per_group


def _spice(refs: Sequence[str], hyps: Sequence[str], java_timeout: float | None) -> np.ndarray:
    """SPICE F-score per AD (NaN where SPICE gives none), from pycocoevalcap's jar with its arguments."""
    from pycocoevalcap.spice.spice import SPICE_JAR

    spice_dir = _package_dir("spice")
    with tempfile.TemporaryDirectory(prefix="distinctad-spice-") as tmp:
        in_path, out_path = os.path.join(tmp, "input.json"), os.path.join(tmp, "output.json")
        with open(in_path, "w", encoding="utf-8") as f:
            json.dump([{"image_id": i, "test": h, "refs": [r]} for i, (r, h) in enumerate(zip(refs, hyps))], f)
        args = ["-jar", "-Xmx8G", SPICE_JAR, in_path]
        if os.access(spice_dir, os.W_OK):  # its parse cache, as pycocoevalcap keeps it; optional
            args += ["-cache", os.path.join(spice_dir, "cache")]
        args += ["-out", out_path, "-subset", "-silent"]
        run_java("SPICE", args, cwd=spice_dir, timeout=_timeout(java_timeout, 1.0, len(refs)))
        try:
            with open(out_path, encoding="utf-8") as f:
                results = {item["image_id"]: item["scores"]["All"]["f"] for item in json.load(f)}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EvalEnvironmentError(f"SPICE's Java process wrote no readable result ({e})") from None

    def f_score(x: object) -> float:
        try:
            return float(x)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return math.nan

    return np.array([f_score(results.get(i)) for i in range(len(refs))], dtype=np.float64)


def _ngram_counts(hyps: Sequence[str]) -> list[list[int]]:
    """Number of n-grams (n = 1..4) in each hypothesis: BLEU-n's denominator summed over the corpus."""
    return [[max(len(h.split()) - n + 1, 0) for n in range(1, 5)] for h in hyps]


def _first_undefined_bleu(counts: list[list[int]], ids: Sequence[int]) -> int | None:
    """The smallest n whose BLEU-n is undefined on the ADs ``ids`` (no n-gram in their predictions), or None."""
    for n in range(4):
        if sum(counts[i][n] for i in ids) == 0:
            return n + 1
    return None


def score_tokenized(
    refs: Sequence[str],
    hyps: Sequence[str],
    metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider"),
    groups: Sequence[str] | None = None,
    progress: bool | None = None,
    *,
    labels: Sequence[str] | None = None,
    max_tokens: int | None = MAX_TOKENS,
    java_timeout: float | None = None,
    item_scores_out: dict[str, list[float]] | None = None,
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]], dict[str, float], list[str]]:
    """Score already tokenized text (one reference per hypothesis).

    Args:
        refs: tokenized references, one per AD.
        hyps: tokenized predictions, aligned with ``refs``.
        metrics: names from :data:`CAPTION_METRICS`.
        groups: a group (movie) name per AD, for the per-group breakdown; ``None`` for no breakdown.
        progress: show a tqdm bar over groups (``None``: only on a terminal).
        labels: a label per AD for notices (e.g. ``"'film' ad_index=3"``); default ``"#i"``.
        max_tokens: sentences longer than this many tokens are cut to it (with a notice); ``None`` or 0: never.
        java_timeout: seconds per METEOR request/answer and for the SPICE run (default: 300 s; SPICE + 1 s/AD).
        item_scores_out: when given, receives the per-AD scores (×100, aligned with ``refs``) of the metrics that
            are means of per-AD scores (ROUGE-L, CIDEr, SPICE), keyed like ``"CIDEr"``: what a paired bootstrap
            over ADs resamples. BLEU and METEOR are corpus statistics and have none.

    Returns:
        ``(overall, per_group, timings_s, notices)``: overall scores ×100 keyed like ``"BLEU-4"`` (``None``
        where undefined, see the module doc); the same per group; seconds spent per metric; one-line notices.

    Raises:
        EvalEnvironmentError: METEOR's Java process failed or ran past its deadline (one line, Java's message).
            A SPICE failure is a notice instead (SPICE is optional).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    unknown = set(metrics) - set(CAPTION_METRICS)
    if unknown:
        raise ValueError(f"unknown caption metric(s) {sorted(unknown)}; choose from {CAPTION_METRICS}")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    labels = list(labels) if labels is not None else [f"#{i}" for i in range(len(refs))]
    notices: list[str] = []
    refs, hyps = list(refs), list(hyps)
    if max_tokens:
        for side, texts in (("prediction", hyps), ("ground-truth AD", refs)):
            long = [i for i, t in enumerate(texts) if len(t.split()) > max_tokens]
            if long:
                longest = max(len(texts[i].split()) for i in long)
                for i in long:
                    texts[i] = " ".join(texts[i].split()[:max_tokens])
                notices.append(
                    f"{len(long)} {side}(s) longer than {max_tokens} tokens cut to their first {max_tokens} tokens "
                    f"before scoring (longest: {longest} tokens), first: {_examples(labels, long)}; "
                    "--max-tokens 0 scores them whole"
                )
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups or []):
        members[g].append(i)

    def subset(d: dict, ids: list[int]) -> dict:
        return {i: d[i] for i in ids}

    overall: dict[str, float | None] = {}
    per_group: dict[str, dict[str, float | None]] = {g: {} for g in members}
    timings: dict[str, float] = {}
    for metric in metrics:
        t0 = time.perf_counter()
        if metric == "bleu":
            counts = _ngram_counts(hyps)

            def bleu(ids: list[int]) -> dict[str, float | None]:
                score, _ = Bleu(4).compute_score(subset(gts, ids), subset(res, ids), verbose=0)
                bad = _first_undefined_bleu(counts, ids) or 5
                names = METRIC_NAMES["bleu"]
                return {name: (100 * v if n < bad else None) for n, (name, v) in enumerate(zip(names, score), 1)}

            overall.update(bleu(list(range(len(hyps)))))
            bad = _first_undefined_bleu(counts, range(len(hyps)))
            if bad is not None:
                notices.append(
                    f"{_bleu_range(bad)} undefined (reported as null): no prediction has {bad} or more tokens, so "
                    f"there is no {bad}-gram to take a precision over"
                )
            undefined: dict[int, list[str]] = defaultdict(list)
            for g, ids in members.items():
                per_group[g].update(bleu(ids))
                n = _first_undefined_bleu(counts, ids)
                if n is not None and (bad is None or n < bad):
                    undefined[n].append(g)
            if undefined:
                parts = [f"{_bleu_range(n)} in {len(gs)}" for n, gs in sorted(undefined.items(), reverse=True)]
                firsts = [g for _, gs in sorted(undefined.items()) for g in gs]
                notices.append(
                    f"BLEU per movie undefined (shown as –) where no prediction of the movie has n or more tokens: "
                    f"{', '.join(parts)} of {len(members)} movies, first: "
                    + ", ".join(repr(g) for g in firsts[:NUM_EXAMPLES])
                    + (", ..." if len(firsts) > NUM_EXAMPLES else "")
                )
        elif metric == "meteor":
            t_all, per = _meteor(refs, hyps, members, java_timeout, progress)
            overall["METEOR"] = 100 * t_all
            for g, v in per.items():
                per_group[g]["METEOR"] = 100 * v
        elif metric in ("rouge", "cider", "spice"):
            name = METRIC_NAMES[metric][0]
            if metric == "spice":
                reason = spice_unavailable_reason()
                if reason is not None:
                    notices.append(f"SPICE skipped: {reason}")
                    continue
                try:
                    item_scores = _spice(refs, hyps, java_timeout)
                except EvalEnvironmentError as e:
                    notices.append(f"SPICE skipped: {e}")
                    continue
                nan = np.flatnonzero(np.isnan(item_scores)).tolist()
                if nan:
                    notices.append(
                        f"SPICE undefined for {len(nan)} of {len(refs)} ADs (no scene-graph tuple to compare), "
                        f"left out of the SPICE means, first: {_examples(labels, nan)}"
                    )
                overall[name] = _nanmean100(item_scores)
            elif metric == "cider" and len(refs) < 2:
                overall[name] = None
                notices.append(
                    "CIDEr undefined (reported as null) on a single AD: its idf weights come from the ground truth "
                    "itself, so every n-gram gets log(1/1) = 0 and any prediction would score 0"
                )
                for g in members:
                    per_group[g][name] = None
                timings[metric] = time.perf_counter() - t0
                continue
            else:
                scorer = Rouge() if metric == "rouge" else Cider()
                score, item_scores = scorer.compute_score(gts, res)
                item_scores = np.asarray(item_scores, dtype=np.float64)
                overall[name] = 100 * float(score)
            if item_scores_out is not None:
                item_scores_out[name] = [None if math.isnan(v) else 100 * v for v in item_scores.tolist()]
            for g, ids in members.items():
                per_group[g][name] = _nanmean100(item_scores[ids])
        timings[metric] = time.perf_counter() - t0
    return overall, per_group, timings, notices


def _bleu_range(n: int) -> str:
    return "BLEU-4" if n == 4 else f"BLEU-{n}..BLEU-4"


def _nanmean100(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return 100 * float(np.mean(x)) if x.size else None


def caption_metrics(
    refs: Sequence[str],
    hyps: Sequence[str],
    metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider"),
    groups: Sequence[str] | None = None,
    progress: bool | None = None,
    *,
    labels: Sequence[str] | None = None,
    max_tokens: int | None = MAX_TOKENS,
    java_timeout: float | None = None,
    item_scores_out: dict[str, list[float]] | None = None,
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]], dict[str, float], list[str]]:
    """PTB-tokenize raw references and predictions together, then :func:`score_tokenized`.

    Adds a notice for each side with sentences that are not empty but have no token left after the tokenizer
    (punctuation only, control or invisible characters): they are scored as empty text.

    Returns the same tuple as :func:`score_tokenized`; ``timings_s["tokenize"]`` is the Java tokenizer's time.
    """
    check_java()
    labels = list(labels) if labels is not None else [f"#{i}" for i in range(len(refs))]
    t0 = time.perf_counter()
    logger.info("PTB-tokenizing %d sentences (Java)", len(refs) + len(hyps))
    tokens = ptb_tokenize(list(refs) + list(hyps), java_timeout=java_timeout)
    t_tok = time.perf_counter() - t0
    tok_refs, tok_hyps = tokens[: len(refs)], tokens[len(refs) :]
    notices = []
    for side, raw, tok, how in (
        ("prediction", hyps, tok_hyps, "empty hypotheses (not counted among matching's empty predictions)"),
        ("ground-truth AD", refs, tok_refs, "empty references"),
    ):
        gone = [i for i, (r, t) in enumerate(zip(raw, tok)) if collapse_whitespace(r) and not t]
        if gone:
            notices.append(
                f"{len(gone)} {side}(s) not empty but with no token left after the PTB tokenizer (punctuation, "
                f"control or invisible characters only), scored as {how}, first: "
                + ", ".join(f"{labels[i]} {collapse_whitespace(raw[i])[:40]!r}" for i in gone[:NUM_EXAMPLES])
                + (", ..." if len(gone) > NUM_EXAMPLES else "")
            )
    overall, per_group, timings, more = score_tokenized(
        tok_refs,
        tok_hyps,
        metrics,
        groups,
        progress,
        labels=labels,
        max_tokens=max_tokens,
        java_timeout=java_timeout,
        item_scores_out=item_scores_out,
    )
    return overall, per_group, {"tokenize": t_tok, **timings}, notices + more


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
