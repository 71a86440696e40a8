"""Distinctive words D_i and the distinctive-word loss L_dist (paper §3.2, Stage-II step 6).

D_i holds the content words of AD_i that appear in no other AD of the window: what the narration of clip i
says that its neighbours do not (defined in ``distinctad.eval.words``, shared with the eval harness). L_dist
asks the visual prompt of clip i, read through the LLM, to already point at those words: the LLM's last hidden
states at the visual-prompt positions are max-pooled, the LM head scores the vocabulary, and
L_dist = mean over w ∈ D_i of −log softmax(score)[first sub-token of w], averaged over the clips whose D_i is
not empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# D_i itself is defined once, in the eval package, so the harness's distinctive-word recall reads the same words
# that L_dist trains on (eval never imports train; train may import eval).
from distinctad.eval.words import STOP_WORDS, content_words, distinctive_words

__all__ = [
    "STOP_WORDS",
    "content_words",
    "distinctive_targets",
    "distinctive_word_loss",
    "distinctive_words",
    "first_subtoken_id",
    "pad_targets",
]


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
