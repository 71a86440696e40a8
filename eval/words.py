"""Distinctive words D_i: the one definition the L_dist targets (training) and the eval harness share.

D_i holds the content words of AD_i that appear in no other AD of its window of N consecutive ADs: what the
narration of clip i says that its neighbours do not (DESIGN §5.6: lower-case, stop words out). Stage-II turns them
into L_dist targets (``distinctad.train.models.distinctive``); the eval harness measures how many of each
ground-truth AD's distinctive words its prediction says (``distinctad.eval.distinctiveness``). Pure Python, no torch.
"""

from __future__ import annotations

import re

# A small English stop-word list (function words, pronouns, auxiliaries, common contractions). Words in it are
# never distinctive, whatever the window says.
STOP_WORDS: frozenset[str] = frozenset(
    """
a about above after again against all also am an and any are aren't around as at back be because been before
being below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
during each even ever every few for from further get gets getting go goes going got had hadn't has hasn't have
haven't having he he'd he'll he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if
in into is isn't it it's its itself just let's like me more most much mustn't my myself near next no nor not now
of off on once one only onto or other others ought our ours ourselves out over own same shan't she she'd she'll
she's should shouldn't so some still such than that that's the their theirs them themselves then there there's
these they they'd they'll they're they've this those through to too toward towards under until up upon us very
was wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while who who's
whom whose why why's will with within without won't would wouldn't yet you you'd you'll you're you've your yours
yourself yourselves
""".split()
)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_WORD_CASED = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")


def _normalise(word: str) -> str:
    """Lower-case and drop a possessive ("Ana's" -> "ana") so that "Ana" and "Ana's" are the same word."""
    word = word.lower()
    return word[:-2] if word.endswith("'s") else word


def content_words(sentence: str, *, cased: bool = False) -> list[str]:
    """Content words of a sentence, in order of first occurrence, without repeats.

    Args:
        sentence: the AD.
        cased: return the surface form of the first occurrence (for tokenisation) instead of the lower-case key.

    Returns:
        Words that are not stop words, not pure numbers and longer than one character.
    """
    out: dict[str, str] = {}
    for raw in _WORD_CASED.findall(sentence):
        key = _normalise(raw)
        if len(key) < 2 or key.isdigit() or key in STOP_WORDS or key in out:
            continue
        out[key] = raw[:-2] if raw.lower().endswith("'s") else raw
    return list(out.values()) if cased else list(out)


def word_set(sentence: str) -> set[str]:
    """Every word of a sentence (stop words included) in the form ``distinctive_words`` compares: lower-case,
    possessive dropped. A distinctive word w "appears" in a sentence when ``w in word_set(sentence)``."""
    return {_normalise(w) for w in _WORD.findall(sentence.lower())}


def distinctive_words(sentences: list[str], *, cased: bool = False) -> list[list[str]]:
    """D_i for every AD of one window.

    Args:
        sentences: the ADs of the window ("" for padding clips: they have no words and change nothing).
        cased: return surface forms (see ``content_words``); membership is always decided lower-case.

    Returns:
        One list per sentence: its content words that occur in no other sentence of the window, in order.
    """
    keys = [set(content_words(s)) for s in sentences]
    # Every word of every AD (stop words included) counts as "appearing" in it.
    present = [word_set(s) for s in sentences]
    out = []
    for i, sentence in enumerate(sentences):
        others = set().union(*(p for j, p in enumerate(present) if j != i))
        words = content_words(sentence, cased=cased)
        out.append([w for w in words if _normalise(w) in keys[i] and _normalise(w) not in others])
    return out
