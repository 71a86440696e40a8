"""Sentence-similarity backends for Recall@k/N.

AutoAD-II scores R@k/N with BERTScore-F1 (roberta-large, baseline-rescaled). That needs the ``bert-score``
package and the roberta-large weights on disk, which a laptop or CI may lack, so the backend is pluggable:

- ``bertscore``: BERTScore-F1 with baseline rescaling, as AutoAD-II defines R@k/N (``bert_score.BERTScorer``).
- ``embedding``: any local Hugging Face encoder directory (e.g. a sentence-transformers model); mean-pooled
  last hidden states, cosine similarity.
- ``lexical``: deterministic and dependency-free, for tests and quick checks; NOT comparable to published R@k/N numbers.

Every backend maps (predictions, references) to a (P, R) similarity matrix; only the ranking within a row
matters for R@k/N.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from tqdm import tqdm

from distinctad.eval.errors import EvalEnvironmentError

logger = logging.getLogger(__name__)

BACKENDS = ("lexical", "embedding", "bertscore")
_WORD = re.compile(r"\w+(?:'\w+)*")


class SimilarityBackend(Protocol):
    """What Recall@k/N needs from a backend."""

    name: str  # shown in the report

    def prepare(self, texts: Sequence[str]) -> None:
        """See every text once up front (to batch or cache work); may do nothing."""

    def similarity(self, preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        """(len(preds), len(refs)) matrix; higher = more similar."""


# --------------------------------------------------------------------------------------------------------------
# lexical


def lexical_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscores; apostrophes kept inside words: "don't")."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(a: Counter, b: Counter, len_a: int, len_b: int) -> float:
    if len_a == 0 or len_b == 0:
        return 0.0
    if len(a) > len(b):
        a, b = b, a
    overlap = sum(min(c, b[g]) for g, c in a.items() if g in b)
    return 2.0 * overlap / (len_a + len_b)  # = 2PR/(P+R) with P = overlap/len_a, R = overlap/len_b


class LexicalBackend:
    """Mean of unigram-F1 and bigram-F1 (clipped counts) over :func:`lexical_tokens`.

    An n-gram order that neither sentence has (two one-word sentences have no bigrams) is left out of the
    mean; a sentence without any word scores 0 against everything, itself included.
    """

    name = "lexical (mean of unigram and bigram F1 over lower-cased word tokens)"

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Counter, Counter, int, int]] = {}

    def _grams(self, text: str) -> tuple[Counter, Counter, int, int]:
        g = self._cache.get(text)
        if g is None:
            toks = lexical_tokens(text)
            g = (_ngrams(toks, 1), _ngrams(toks, 2), len(toks), max(len(toks) - 1, 0))
            self._cache[text] = g
        return g

    def prepare(self, texts: Sequence[str]) -> None:
        for t in texts:
            self._grams(t)

    def pair(self, a: str, b: str) -> float:
        """Similarity of two sentences."""
        u_a, b_a, n1a, n2a = self._grams(a)
        u_b, b_b, n1b, n2b = self._grams(b)
        if n1a == 0 or n1b == 0:
            return 0.0
        scores = [_f1(u_a, u_b, n1a, n1b)]
        if n2a or n2b:
            scores.append(_f1(b_a, b_b, n2a, n2b))
        return sum(scores) / len(scores)

    def similarity(self, preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        return np.array([[self.pair(p, r) for r in refs] for p in preds], dtype=np.float64).reshape(
            len(preds), len(refs)
        )


# --------------------------------------------------------------------------------------------------------------
# local sentence-embedding model


class EmbeddingBackend:
    """Cosine similarity of mean-pooled token embeddings from a local Hugging Face encoder.

    Args:
        model_dir: a directory with ``config.json``, weights and tokenizer files (never downloaded).
        device: torch device string.
        batch_size: texts per forward pass.
        max_length: tokens per text (longer ADs are truncated).
    """

    def __init__(self, model_dir: str, device: str = "cpu", batch_size: int = 64, max_length: int = 128) -> None:
        if not model_dir or not os.path.isdir(model_dir):
            raise EvalEnvironmentError(
                f"the embedding backend needs a local model directory (--backend-model DIR); not found: {model_dir!r}"
            )
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.name = f"embedding (mean-pooled {os.path.basename(os.path.normpath(model_dir))}, cosine)"
        self._cache: dict[str, np.ndarray] = {}

    def _encode(self, texts: list[str], progress: bool | None = None) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        steps = range(0, len(todo), self.batch_size)
        for s in tqdm(steps, desc="embedding", disable=True if progress is False or len(steps) < 2 else None):
            chunk = todo[s : s + self.batch_size]
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            with self.torch.no_grad():
                hidden = self.model(**enc).last_hidden_state  # (B, L, d)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, d)
            pooled = self.torch.nn.functional.normalize(pooled.float(), dim=-1)
            for t, v in zip(chunk, pooled.cpu().numpy()):
                self._cache[t] = v

    def prepare(self, texts: Sequence[str]) -> None:
        self._encode(list(texts), progress=None)

    def similarity(self, preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        self._encode(list(preds) + list(refs), progress=False)
        a = np.stack([self._cache[t] for t in preds])  # (P, d)
        b = np.stack([self._cache[t] for t in refs])  # (R, d)
        return a @ b.T


# --------------------------------------------------------------------------------------------------------------
# BERTScore


def _find_roberta_large() -> str | None:
    env = os.environ.get("DISTINCTAD_BERTSCORE_MODEL")
    if env:
        return env
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    snapshots = os.path.join(hub, "models--roberta-large", "snapshots")
    if os.path.isdir(snapshots):
        for snap in sorted(os.listdir(snapshots)):
            path = os.path.join(snapshots, snap)
            if os.path.isfile(os.path.join(path, "config.json")):
                return path
    return None


class BertScoreBackend:
    """BERTScore-F1 (roberta-large, layer 17, baseline-rescaled), as AutoAD-II's R@k/N.

    Args:
        model_dir: local roberta-large directory; ``None`` looks at ``$DISTINCTAD_BERTSCORE_MODEL`` and the Hugging
            Face hub cache. Nothing is downloaded.
        device: torch device string; ``None`` lets bert-score choose.
        batch_size: sentence pairs per forward pass.
    """

    def __init__(self, model_dir: str | None = None, device: str | None = None, batch_size: int = 64) -> None:
        if importlib.util.find_spec("bert_score") is None:
            raise EvalEnvironmentError(
                "the bertscore backend needs the `bert-score` package, which is not installed (pip install "
                "bert-score), and roberta-large on disk (--backend-model DIR); or use --backend embedding|lexical"
            )
        model_dir = model_dir or _find_roberta_large()
        if not model_dir or not os.path.isdir(model_dir):
            raise EvalEnvironmentError(
                "the bertscore backend needs roberta-large on disk: pass --backend-model DIR (a Hugging Face model "
                "directory) or set DISTINCTAD_BERTSCORE_MODEL; none found"
                + (f" at {model_dir!r}" if model_dir else " in the hub cache")
            )
        import bert_score

        # The rescaling baseline ships with bert-score keyed by model name; a local path needs it spelled out.
        baseline = os.path.join(os.path.dirname(bert_score.__file__), "rescale_baseline", "en", "roberta-large.tsv")
        if not os.path.isfile(baseline):
            raise EvalEnvironmentError(f"bert-score's roberta-large rescaling baseline is missing: {baseline}")
        self.scorer = bert_score.BERTScorer(
            model_type=model_dir,
            num_layers=17,
            lang="en",
            rescale_with_baseline=True,
            baseline_path=baseline,
            device=device,
            batch_size=batch_size,
        )
        self.name = "bertscore (roberta-large F1, layer 17, baseline-rescaled)"

    def prepare(self, texts: Sequence[str]) -> None:
        pass

    def similarity(self, preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        cands = [p for p in preds for _ in refs]
        others = [r for _ in preds for r in refs]
        _, _, f1 = self.scorer.score(cands, others)
        return f1.cpu().numpy().reshape(len(preds), len(refs))


def build_backend(name: str, *, model: str | None = None, device: str | None = None) -> SimilarityBackend:
    """Instantiate a backend by name (``lexical``, ``embedding``, ``bertscore``).

    Raises:
        EvalEnvironmentError: when the backend's package or model is missing (the message says which).
    """
    if name == "lexical":
        return LexicalBackend()
    if name == "embedding":
        return EmbeddingBackend(model, device=device or "cpu")
    if name == "bertscore":
        return BertScoreBackend(model, device=device)
    raise ValueError(f"unknown similarity backend {name!r}; choose from {BACKENDS}")
