"""Distinctive words D_i and the distinctive-word loss L_dist (paper §3.2, Stage-II step 6).

D_i holds the content words of AD_i that appear in no other AD of the window: what the narration of clip i
says that its neighbours do not. L_dist asks the visual prompt of clip i, read through the LLM, to already
point at those words: the LLM's last hidden states at the visual-prompt positions are max-pooled, the LM
head scores the vocabulary, and L_dist = mean over w ∈ D_i of −log softmax(score)[first sub-token of w],
averaged over the clips whose D_i is not empty.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

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
    present = [{_normalise(w) for w in _WORD.findall(s.lower())} for s in sentences]
    out = []
    for i, sentence in enumerate(sentences):
        others = set().union(*(p for j, p in enumerate(present) if j != i))
        words = content_words(sentence, cased=cased)
        out.append([w for w in words if _normalise(w) in keys[i] and _normalise(w) not in others])
    return out


def first_subtoken_id(word: str, tokenizer) -> int | None:
    """Id of the first sub-token of ``word`` as it appears after a space (" word", GPT-2 / LLaMA-3 BPE style).

    Leading tokens that decode to whitespace only (SentencePiece's lone "▁") are skipped. None if the word
    tokenises to nothing.
    """
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    for tok in ids:
        if tokenizer.decode([tok]).strip():
            return int(tok)
    return None


def distinctive_targets(windows: list[list[str]], tokenizer, max_words: int = 16) -> list[list[int]]:
    """Target token ids of D_i for every clip of every window.

    Args:
        windows: per window, the sentences of its clips (padding clips "").
        tokenizer: a Hugging Face tokenizer.
        max_words: keep at most this many words of D_i (the first ones).

    Returns:
        A flat list, window-major then clip order, of the ids of the first sub-tokens of D_i.
    """
    out = []
    for sentences in windows:
        for words in distinctive_words(sentences, cased=True):
            ids = [first_subtoken_id(w, tokenizer) for w in words[:max_words]]
            out.append([i for i in ids if i is not None])
    return out


def pad_targets(targets: list[list[int]], width: int | None = None) -> torch.Tensor:
    """Lists of ids -> LongTensor (V, W) padded with -1 (W ≥ 1 so that the tensor is never empty)."""
    width = max([width or 0, 1, *(len(t) for t in targets)])
    out = torch.full((len(targets), width), -1, dtype=torch.long)
    for row, ids in enumerate(targets):
        out[row, : len(ids)] = torch.tensor(ids[:width], dtype=torch.long)
    return out


def distinctive_word_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_dist from vocabulary scores.

    Args:
        scores: (V, vocab) LM-head scores of each clip's max-pooled prompt states.
        targets: (V, W) first-sub-token ids of D_i, -1 = none.

    Returns:
        Scalar: mean over clips with a non-empty D_i of the mean over w of −log softmax(scores)[w]. 0 (still
        attached to the graph, so that every rank runs the same backward) when no clip has a target.
    """
    valid = targets >= 0  # (V, W)
    logp = F.log_softmax(scores.float(), dim=-1)  # (V, vocab)
    picked = logp.gather(1, targets.clamp_min(0))  # (V, W)
    n_words = valid.sum(dim=1)  # (V,)
    has = n_words > 0
    if not has.any():
        return scores.sum() * 0.0
    per_clip = -(picked * valid).sum(dim=1)[has] / n_words[has]  # (V',)
    return per_clip.mean()
