"""Captioning metrics through pycocoevalcap, used exactly as its README does.

Sentences go through the Stanford PTB tokenizer (Java: lower-cases, splits, drops punctuation), then
``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` and ``Spice()`` score them. Scores are ×100, as AD papers
report them. Each AD has one reference (its own ground truth), as in AutoAD / DistinctAD on MAD-Eval.

Per-group (per-movie) scores: BLEU and METEOR are corpus-level statistics, so they are recomputed on each
group's ADs; ROUGE-L, CIDEr and SPICE are means of per-AD scores, so a group's score is the mean over its ADs
(CIDEr keeps the document frequencies of the whole set, so per-movie CIDEr averages back to the overall one).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from distinctad.eval.errors import EvalEnvironmentError
from distinctad.eval.normalize import collapse_whitespace

logger = logging.getLogger(__name__)

CAPTION_METRICS = ("bleu", "meteor", "rouge", "cider", "spice")
METRIC_NAMES = {
    "bleu": ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"],
    "meteor": ["METEOR"],
    "rouge": ["ROUGE-L"],
    "cider": ["CIDEr"],
    "spice": ["SPICE"],
}
JAVA_HINT = "install a Java runtime, e.g. `apt-get install default-jre-headless`"
_working_java: set[str] = set()


def check_java() -> None:
    """Fail early, with the fix, when Java is missing: the PTB tokenizer, METEOR and SPICE all run on it."""
    java = shutil.which("java")
    if java is None:
        raise EvalEnvironmentError(
            f"Java is needed by the PTB tokenizer and METEOR (pycocoevalcap) but `java` is not on PATH; {JAVA_HINT}"
        )
    if java in _working_java:
        return
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise EvalEnvironmentError(f"`{java} -version` failed ({e}); {JAVA_HINT}") from None
    _working_java.add(java)  # one JVM start per process is enough to know it runs


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


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """PTB-tokenize sentences with pycocoevalcap's ``PTBTokenizer`` (one Java call for all of them).

    Empty sentences bypass the tokenizer (they stay empty): the tokenizer would drop their line.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok_dir = _package_dir("tokenizer")
    if not os.access(tok_dir, os.W_OK):
        raise EvalEnvironmentError(
            f"pycocoevalcap's PTBTokenizer writes a temporary file into {tok_dir}, "
            "which is not writable; install pycocoevalcap where you can write"
        )
    clean = [collapse_whitespace(s) for s in sentences]
    todo = {i: [{"caption": s}] for i, s in enumerate(clean) if s}
    out = PTBTokenizer().tokenize(todo) if todo else {}
    return [out[i][0] if i in out else "" for i in range(len(clean))]


def score_tokenized(
    refs: Sequence[str],
    hyps: Sequence[str],
    metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider"),
    groups: Sequence[str] | None = None,
    progress: bool | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float], list[str]]:
    """Score already tokenized text (one reference per hypothesis).

    Args:
        refs: tokenized references, one per AD.
        hyps: tokenized predictions, aligned with ``refs``.
        metrics: names from :data:`CAPTION_METRICS`.
        groups: a group (movie) name per AD, for the per-group breakdown; ``None`` for no breakdown.
        progress: show a tqdm bar over groups (``None``: only on a terminal).

    Returns:
        ``(overall, per_group, timings_s, notices)``: overall scores ×100 keyed like ``"BLEU-4"``; the same per
        group; seconds spent per metric; one-line notices (e.g. SPICE skipped).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    unknown = set(metrics) - set(CAPTION_METRICS)
    if unknown:
        raise ValueError(f"unknown caption metric(s) {sorted(unknown)}; choose from {CAPTION_METRICS}")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups or []):
        members[g].append(i)

    def subset(d: dict, ids: list[int]) -> dict:
        return {i: d[i] for i in ids}

    overall: dict[str, float] = {}
    per_group: dict[str, dict[str, float]] = {g: {} for g in members}
    timings: dict[str, float] = {}
    notices: list[str] = []
    for metric in metrics:
        t0 = time.perf_counter()
        if metric == "bleu":
            scorer = Bleu(4)
            score, _ = scorer.compute_score(gts, res, verbose=0)
            overall.update({n: 100 * s for n, s in zip(METRIC_NAMES["bleu"], score)})
            for g, ids in members.items():
                gscore, _ = scorer.compute_score(subset(gts, ids), subset(res, ids), verbose=0)
                per_group[g].update({n: 100 * s for n, s in zip(METRIC_NAMES["bleu"], gscore)})
        elif metric == "meteor":
            scorer = Meteor()
            try:
                score, _ = scorer.compute_score(gts, res)
                overall["METEOR"] = 100 * score
                t1 = time.perf_counter()
                # METEOR is a corpus statistic (not a mean of segment scores): score each group on its own
                for g, ids in tqdm(members.items(), desc="METEOR per movie", disable=_disable(progress)):
                    per_group[g]["METEOR"] = 100 * scorer.compute_score(subset(gts, ids), subset(res, ids))[0]
                timings["meteor_per_group"] = time.perf_counter() - t1
            except ValueError:  # an empty line where a score should be: the Java process died
                proc = scorer.meteor_p
                err = [] if proc.poll() is None else proc.stderr.read().decode(errors="replace").strip().splitlines()
                if scorer.lock.locked():  # compute_score raised holding it; Meteor.__del__ would wait forever
                    scorer.lock.release()
                raise EvalEnvironmentError(
                    f"METEOR's Java process failed ({err[-1] if err else 'no message'}); it needs ~2 GB of heap"
                ) from None
            finally:
                del scorer  # its __del__ stops the Java process
            timings["meteor"] = t1 - t0
            continue
        elif metric in ("rouge", "cider", "spice"):
            if metric == "spice":
                reason = spice_unavailable_reason()
                if reason is not None:
                    notices.append(f"SPICE skipped: {reason}")
                    continue
                from pycocoevalcap.spice.spice import Spice

                try:
                    score, item_scores = Spice().compute_score(gts, res)
                except (OSError, subprocess.CalledProcessError) as e:
                    notices.append(f"SPICE skipped: the SPICE jar failed ({e})")
                    continue
                item_scores = [s["All"]["f"] for s in item_scores]
            else:
                scorer = Rouge() if metric == "rouge" else Cider()
                score, item_scores = scorer.compute_score(gts, res)
            name = METRIC_NAMES[metric][0]
            item_scores = np.asarray(item_scores, dtype=np.float64)
            overall[name] = 100 * float(score)
            for g, ids in members.items():
                per_group[g][name] = 100 * float(np.mean(item_scores[ids]))
        timings[metric] = time.perf_counter() - t0
    return overall, per_group, timings, notices


def caption_metrics(
    refs: Sequence[str],
    hyps: Sequence[str],
    metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider"),
    groups: Sequence[str] | None = None,
    progress: bool | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float], list[str]]:
    """PTB-tokenize raw references and predictions together, then :func:`score_tokenized`.

    Returns the same tuple as :func:`score_tokenized`; ``timings_s["tokenize"]`` is the Java tokenizer's time.
    """
    check_java()
    t0 = time.perf_counter()
    logger.info("PTB-tokenizing %d sentences (Java)", len(refs) + len(hyps))
    tokens = ptb_tokenize(list(refs) + list(hyps))
    t_tok = time.perf_counter() - t0
    overall, per_group, timings, notices = score_tokenized(
        tokens[: len(refs)], tokens[len(refs) :], metrics, groups, progress
    )
    return overall, per_group, {"tokenize": t_tok, **timings}, notices


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
