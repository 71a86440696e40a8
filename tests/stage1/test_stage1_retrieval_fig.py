"""Retrieval metrics on hand-built similarities, and the Fig. B.2 similarity figure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distinctad.train.stage1.fig_b2 import figure_embeddings, similarity_figure, video_embeddings
from distinctad.train.stage1.retrieval import retrieval_metrics


def test_retrieval_metrics_hand_built():
    # 4 pairs in 2-d angles: video i at angle a_i, text i at angle b_i; cos = cos(a - b).
    a = torch.tensor([0.0, 1.0, 2.0, 3.0])
    b = torch.tensor([0.0, 1.6, 2.0, 1.1])
    video = torch.stack([a.cos(), a.sin()], 1)
    text = torch.stack([b.cos(), b.sin()], 1)
    # v2t ranks by hand (distance |a_i - b_j|): video0 -> text0 first; video1 -> text3 (0.1) before text1 (0.6);
    # video2 -> text2 first; video3 -> text2 (1.0), text1 (1.4), text3 (1.9): rank 3.
    m = retrieval_metrics(video, text, ks=(1, 2, 5))
    assert m["v2t_R@1"] == pytest.approx(50.0)
    assert m["v2t_R@2"] == pytest.approx(75.0)
    assert m["v2t_R@5"] == pytest.approx(100.0)
    # t2v: text0 -> video0; text1 (1.6) -> video2 (0.4) before video1 (0.6): rank 2; text2 -> video2;
    # text3 (1.1) -> video1 (0.1), video2 (0.9), video0 (1.1), video3 (1.9): rank 4.
    assert m["t2v_R@1"] == pytest.approx(50.0)
    assert m["t2v_R@2"] == pytest.approx(75.0)
    assert m["t2v_MedR"] == pytest.approx(1.0)  # ranks 1, 2, 1, 4 -> lower median 1
    assert set(m) == {"v2t_R@1", "v2t_R@2", "v2t_R@5", "v2t_MedR", "t2v_R@1", "t2v_R@2", "t2v_R@5", "t2v_MedR"}


def test_retrieval_ties_count_against():
    same = torch.ones(5, 8)
    m = retrieval_metrics(same, same)
    assert m["v2t_R@1"] == 0.0 and m["t2v_R@1"] == 0.0 and m["v2t_R@5"] == 100.0
    eye = torch.eye(6)
    assert retrieval_metrics(eye, eye)["v2t_R@1"] == 100.0
    with pytest.raises(ValueError):
        retrieval_metrics(torch.ones(3, 4), torch.ones(2, 4))


def test_similarity_figure_png_and_band_means(tmp_path):
    n, E, band = 9, 16, 2
    g = torch.Generator().manual_seed(0)
    base = torch.randn(E, generator=g)
    vanilla = base + 0.2 * torch.randn(n, E, generator=g)  # near-duplicates: high similarity
    adapted = base + 1.0 * torch.randn(n, E, generator=g)
    text = torch.randn(n, E, generator=g)
    out_png = tmp_path / "fig" / "movie.png"
    stats = similarity_figure(vanilla, adapted, text, out_png, band=band, title="movie 1")
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    for key, x in (("vanilla", vanilla), ("adapted", adapted), ("text", text)):
        sim = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
        values = [sim[i, j].item() for i in range(n) for j in range(n) if i != j and abs(i - j) <= band]
        assert len(values) == 2 * (n - 1) + 2 * (n - 2)
        assert stats[f"{key}_band_mean"] == pytest.approx(sum(values) / len(values), abs=1e-6)
    assert stats["vanilla_band_mean"] > stats["adapted_band_mean"] > stats["text_band_mean"]
    assert stats["band"] == band and stats["n"] == n


def test_figure_embeddings(tiny_model):
    images = torch.randn(5, 2, 3, 32, 32)
    sentences = [f"Ana walks {i} steps." for i in range(5)]
    adapted = tiny_model.train()
    vanilla = type(tiny_model)(tiny_model.clip, tiny_model.tokenizer)  # same weights stand in for vanilla
    v, a, t = figure_embeddings(vanilla, adapted, images, sentences, batch_size=2)
    assert v.shape == a.shape == t.shape == (5, 64)
    torch.testing.assert_close(v, a)
    expected = F.normalize(adapted.encode_video(images[3:4]).mean(1), dim=-1)[0]
    torch.testing.assert_close(a[3], expected)
    torch.testing.assert_close(t, adapted.encode_text(sentences))
    assert adapted.training and vanilla.training  # modes restored
    assert v.dtype == a.dtype == t.dtype == torch.float32
    # the per-step figure re-embeds only the adapted model, with the same function
    torch.testing.assert_close(video_embeddings(adapted, images, batch_size=3), a)
