"""Video <-> AD retrieval metrics (Stage-I validation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ranks(sim: torch.Tensor) -> torch.Tensor:
    """0-based rank of the paired item (the diagonal) in each row of a (N, N) similarity matrix.

    Ties count against the pair (rank = number of other items scoring >= it), so a collapsed model whose
    embeddings are all equal gets R@1 = 0 rather than a perfect score.
    """
    diag = sim.diagonal()[:, None]  # (N, 1)
    return (sim >= diag).sum(dim=1) - 1


def retrieval_metrics(
    video_emb: torch.Tensor, text_emb: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k (in %) and median rank for paired embeddings, video i <-> text i.

    Args:
        video_emb: (N, E) video embeddings (normalised here).
        text_emb: (N, E) text embeddings of the same N pairs.
        ks: the k of R@k.

    Returns:
        {"v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_MedR", "t2v_R@1", ..., "t2v_MedR"}; R@k in [0, 100] (chance level is
        100·k/N), MedR 1-based.
    """
    if video_emb.shape != text_emb.shape or video_emb.ndim != 2:
        raise ValueError(f"expected two (N, E) tensors of the same shape, got {video_emb.shape} and {text_emb.shape}")
    v = F.normalize(video_emb.detach().float(), dim=-1)
    t = F.normalize(text_emb.detach().float(), dim=-1)
    sim = v @ t.T  # (N, N)
    out: dict[str, float] = {}
    for name, s in (("v2t", sim), ("t2v", sim.T)):
        ranks = _ranks(s)
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * (ranks < k).float().mean().item()
        out[f"{name}_MedR"] = (ranks.float() + 1).median().item()
    return out
