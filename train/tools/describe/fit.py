"""It must fit: choose, among the beams, an AD that can be spoken inside its slot, or shorten one.

The spoken duration of a text is ``words / rate`` (``rate`` in words per minute; default 160, the middle of the
150-180 wpm that AD narration guidelines cite for describers; our default), or, when narrating, the measured length
of its espeak-ng rendering at that rate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

WPM = 160.0
"""Default speaking rate, words per minute (our default; see the module docstring)."""
MIN_WORDS = 3
"""Shortening never cuts an AD below this many words ("Ana opens door."; our default)."""


def clean(text: str) -> str:
    """A generated AD as speakable, subtitle-safe text: control and replacement characters become spaces, runs of
    whitespace one space."""
    return " ".join("".join(c if c.isprintable() and c != "\ufffd" else " " for c in text).split())


def words(text: str) -> list[str]:
    return text.split()


def estimate_seconds(text: str, wpm: float = WPM) -> float:
    """Spoken seconds of ``text`` at ``wpm`` words per minute: words · 60 / wpm."""
    return len(words(text)) * 60.0 / wpm


@dataclass
class Fitted:
    """The AD chosen for a slot.

    Attributes:
        text: what is spoken.
        seconds: its spoken duration (estimated or measured).
        fits: ``seconds <= room``.
        how: ``beam 0`` (the best beam fitted), ``beam k`` (a lower-ranked beam fitted), ``shortened`` (the best beam
            cut at a word boundary), or ``too long`` (nothing fitted: the shortest candidate is kept and listed).
    """

    text: str
    seconds: float
    fits: bool
    how: str


def _sentence(ws: list[str]) -> str:
    text = " ".join(ws).rstrip(",;:-")
    return text if re.search(r"[.!?]$", text) else text + "."


def fit(candidates: list[str], room: float, measure: Callable[[str], float], min_words: int = MIN_WORDS) -> Fitted:
    """The first candidate (best beam first) whose spoken duration fits ``room`` seconds; else the best beam cut to
    the longest prefix of at least ``min_words`` words that fits; else the shortest option, marked ``too long``.

    Raises:
        ValueError: no candidates.
    """
    candidates = [clean(c) for c in candidates]
    if not candidates:
        raise ValueError("no candidate ADs")
    for k, text in enumerate(candidates):
        if not text.strip():
            continue
        seconds = measure(text)
        if seconds <= room:
            return Fitted(text, seconds, True, f"beam {k}")
    best = words(next((c for c in candidates if c.strip()), candidates[0]))
    for n in range(len(best) - 1, min_words - 1, -1):
        text = _sentence(best[:n])
        seconds = measure(text)
        if seconds <= room:
            return Fitted(text, seconds, True, "shortened")
    options = [c for c in candidates if c.strip()] + ([_sentence(best[:min_words])] if len(best) > min_words else [])
    options = options or candidates
    text = min(options, key=measure)
    return Fitted(text, measure(text), False, "too long")
