"""Fig. B.2 analysis: how similar neighbouring clips of a movie look to vanilla CLIP, to CLIP-AD and in AD text.

Fig. B.2's point (supplementary B): vanilla CLIP sees consecutive movie clips as near-duplicates (a bright band
around the diagonal), while the AD texts of those clips are far less alike; CLIP-AD should move the visual
similarities towards the textual ones. The band mean (mean cosine similarity of clips at most ``band`` apart,
i != j) puts that into one number per encoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: training nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from distinctad.common import atomic_path  # noqa: E402
from distinctad.train.models.clip_ad import CLIPAD, pool_video  # noqa: E402


def cosine_matrix(emb: torch.Tensor) -> torch.Tensor:
    """(n, n) cosine similarities of the rows of ``emb`` (n, E)."""
    x = F.normalize(torch.as_tensor(emb).detach().float(), dim=-1)
    return x @ x.T


def band_mean(sim: torch.Tensor, band: int) -> float:
    """Mean of ``sim[i, j]`` over neighbouring pairs 1 <= |i - j| <= band."""
    n = sim.shape[0]
    offset = (torch.arange(n)[:, None] - torch.arange(n)[None]).abs()
    sel = (offset >= 1) & (offset <= band)
    if not sel.any():
        raise ValueError(f"need at least 2 clips for a band mean, got {n}")
    return sim[sel].mean().item()


def similarity_figure(
    vanilla: torch.Tensor,
    adapted: torch.Tensor,
    text: torch.Tensor,
    out_png: str | os.PathLike,
    band: int = 3,
    title: str | None = None,
) -> dict[str, float]:
    """Draw the three similarity matrices side by side (one colour scale) and report their band means.

    Args:
        vanilla: (n, E) clip embeddings of vanilla CLIP, clips in movie order.
        adapted: (n, E) clip embeddings of CLIP-AD for the same clips.
        text: (n, E) the ADs' text [CLS] embeddings.
        out_png: where the PNG is written (atomically).
        band: neighbourhood half-width w of the band mean (pairs with 1 <= |i-j| <= w).
        title: figure title, e.g. the movie id.

    Returns:
        {"vanilla_band_mean", "adapted_band_mean", "text_band_mean", "band", "n"}.
    """
    n = len(vanilla)
    if not (len(adapted) == len(text) == n):
        raise ValueError(f"all three inputs need the same number of clips, got {n}, {len(adapted)}, {len(text)}")
    panels = {"vanilla": cosine_matrix(vanilla), "adapted": cosine_matrix(adapted), "text": cosine_matrix(text)}
    labels = {"vanilla": "vanilla CLIP", "adapted": "CLIP-AD", "text": "AD text [CLS]"}
    stats: dict[str, float] = {f"{k}_band_mean": band_mean(m, band) for k, m in panels.items()}
    # One colour scale for all panels: per-panel scales would make every matrix look equally "banded".
    vmin = min(m.min().item() for m in panels.values())
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), constrained_layout=True)
    for ax, (key, m) in zip(axes, panels.items()):
        im = ax.imshow(m.numpy(), vmin=vmin, vmax=1.0, cmap="viridis")
        ax.set_title(f"{labels[key]}\nband mean (|i-j|<={band}) = {stats[key + '_band_mean']:.3f}", fontsize=10)
        ax.set_xlabel("clip j")
        ax.set_ylabel("clip i")
    fig.colorbar(im, ax=axes, shrink=0.85, label="cosine similarity")
    if title:
        fig.suptitle(title)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return {**stats, "band": float(band), "n": float(n)}


@torch.no_grad()
def video_embeddings(model: CLIPAD, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Pooled video embeddings of n clips, computed in eval mode (the model's mode is restored).

    Args:
        model: the CLIP to embed with.
        images: (n, T, 3, H, W) preprocessed frames, on any device (moved batch by batch).
        batch_size: clips per forward pass.

    Returns:
        (n, E) float32 on the CPU.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return torch.cat(
            [
                pool_video(model.encode_video(images[s : s + batch_size].to(device))).float().cpu()
                for s in range(0, len(images), batch_size)
            ]
        )
    finally:
        model.train(was_training)


def figure_embeddings(
    vanilla: CLIPAD, adapted: CLIPAD, images: torch.Tensor, sentences: Sequence[str], batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings of a movie's consecutive clips for :func:`similarity_figure`.

    Args:
        vanilla, adapted: the CLIP before and after Stage-I (same text tower).
        images: (n, T, 3, H, W) preprocessed frames of n consecutive clips.
        sentences: their n ADs.
        batch_size: clips per forward pass.

    Returns:
        (vanilla (n, E), adapted (n, E), text (n, E)) float32 on the CPU: pooled video embeddings
        (:func:`video_embeddings`) and the ADs' [CLS] embeddings.
    """
    text = torch.cat(
        [
            adapted.encode_text(list(sentences[s : s + batch_size])).float().cpu()
            for s in range(0, len(sentences), batch_size)
        ]
    )
    return video_embeddings(vanilla, images, batch_size), video_embeddings(adapted, images, batch_size), text
