"""Stage-I losses on hand-built embeddings, and gathered negatives over 2 gloo ranks == one full-batch rank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from distinctad.testing import free_port
from distinctad.train.stage1.config import Stage1LossConfig
from distinctad.train.stage1.losses import Stage1Loss, mil_nce, word_scores


def _unit(*v):
    return F.normalize(torch.tensor(v, dtype=torch.float32), dim=-1)


def _random_batch(B=4, T=3, W=5, E=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = F.normalize(torch.randn(B, T, E, generator=g), dim=-1)
    text = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    words = F.normalize(torch.randn(B, W, E, generator=g), dim=-1)
    lengths = torch.tensor([2, 3, 5, 1, 4, 2, 3, 5][:B])
    mask = torch.arange(W)[None] < lengths[:, None]
    return frames, text, words, mask


def test_global_infonce_equals_direct_computation():
    frames, text, words, mask = _random_batch()
    scale = torch.tensor(7.0)
    out = Stage1Loss(Stage1LossConfig(lambda_mil=0.0))(frames, text, words, mask, scale)
    # Direct: video = normalised mean of frames; symmetric cross-entropy on scale * cos.
    video = frames.mean(1)
    video = video / video.norm(dim=-1, keepdim=True)
    logits = scale * video @ text.T
    v2t = -torch.log(torch.exp(logits).diagonal() / torch.exp(logits).sum(1)).mean()
    t2v = -torch.log(torch.exp(logits).diagonal() / torch.exp(logits).sum(0)).mean()
    torch.testing.assert_close(out["global_loss"], (v2t + t2v) / 2)
    torch.testing.assert_close(out["loss"], out["global_loss"])
    assert out["mil_loss"].item() == 0.0


def test_mil_max_picks_the_frame_that_contains_the_word():
    # Clip 0: only frame 2 points towards the word's direction e3.
    frames = torch.stack([_unit(1, 0, 0, 0), _unit(0, 1, 0, 0), _unit(0, 0, 1, 0.5)])[None]  # (1, 3, 4)
    word = _unit(0, 0, 1, 0)[None, None]  # (1, 1, 4)
    score = word_scores(frames, word, "max")
    assert score.shape == (1, 1, 1)
    assert score.item() == pytest.approx(1 / math.sqrt(1.25), abs=1e-6)  # cos(frame 2, word)
    # logsumexp pooling is a smooth max: between the frames' mean and max, -> max as the temperature -> 0.
    soft = word_scores(frames, word, "logsumexp", frame_temperature=0.1).item()
    assert 0.894 / 3 < soft < 0.8945
    assert word_scores(frames, word, "logsumexp", frame_temperature=1e-3).item() == pytest.approx(0.8944, abs=2e-3)


def test_mil_nce_hand_computed():
    # 2 clips of 2 frames; AD 0 has words {a, b}, AD 1 has word {c} (second slot padding).
    frames = torch.stack(
        [torch.stack([_unit(1, 0, 0), _unit(0, 1, 0)]), torch.stack([_unit(0, 0, 1), _unit(1, 1, 0)])]
    )  # (2, 2, 3)
    a, b, c = _unit(1, 0.2, 0), _unit(0, 1, 1), _unit(0, 0, 1)
    words = torch.stack([torch.stack([a, b]), torch.stack([c, torch.zeros(3)])])  # (2, 2, 3)
    mask = torch.tensor([[True, True], [True, False]])
    tau = 0.5

    def s(i, w):  # max over frames
        return max(float(f @ w) for f in frames[i])

    expected = 0.0
    for i, own in ((0, [a, b]), (1, [c])):
        all_words = [a, b, c]
        num = math.log(sum(math.exp(s(i, w) / tau) for w in own))
        den = math.log(sum(math.exp(s(i, w) / tau) for w in all_words))
        expected += (den - num) / 2
    got = mil_nce(frames, words, mask, mode="max", temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Total = global + lambda * MIL.
    cfg = Stage1LossConfig(lambda_mil=0.5, mil_temperature=tau)
    out = Stage1Loss(cfg)(frames, F.normalize(torch.randn(2, 3), dim=-1), words, mask, torch.tensor(10.0))
    torch.testing.assert_close(out["mil_loss"], got)
    torch.testing.assert_close(out["loss"], out["global_loss"] + 0.5 * got)


def test_mil_ignores_clips_without_words():
    frames, text, words, mask = _random_batch()
    mask[1] = False
    full = mil_nce(frames, words, mask)
    keep = [0, 2, 3]
    # Clip 1 contributes 0 and its (masked) words are no negatives: sum over the others / B.
    parts = [mil_nce(frames[i : i + 1], words[keep], mask[keep], offset=keep.index(i)) for i in keep]
    torch.testing.assert_close(full, sum(parts) / 4)


def test_config_validation():
    with pytest.raises(ValueError, match="mil_mode"):
        Stage1LossConfig(mil_mode="mean")
    with pytest.raises(ValueError, match="temperature"):
        Stage1LossConfig(mil_temperature=0)


# ----------------------------------------------------------------------------------------------------------------
# 2 gloo ranks with half the batch each == 1 process with the full batch


CONFIGS = [dict(local_loss=True, mil_mode="max"), dict(local_loss=False, mil_mode="logsumexp", lambda_mil=0.3)]


def _dist_worker(rank, world, port, data, out_dir):
    torch.set_num_threads(1)  # two ranks on a small CPU
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        B = data["frames"].shape[0] // world
        sl = slice(rank * B, (rank + 1) * B)
        width = data["widths"][rank]  # ranks see different word widths: exercises the padding before gathering
        for i, cfg_kwargs in enumerate(CONFIGS):  # one process group for all configs: spawning is the slow part
            frames = data["frames"][sl].clone().requires_grad_(True)
            text = data["text"][sl].clone().requires_grad_(True)
            scale = data["scale"].clone().requires_grad_(True)
            loss_fn = Stage1Loss(Stage1LossConfig(**cfg_kwargs), rank=rank, world_size=world)
            out = loss_fn(frames, text, data["words"][sl, :width], data["mask"][sl, :width], scale)
            out["loss"].backward()
            torch.save(
                {
                    **{k: v.detach() for k, v in out.items()},
                    "frames_grad": frames.grad,
                    "text_grad": text.grad,
                    "scale_grad": scale.grad,
                },
                f"{out_dir}/cfg{i}_rank{rank}.pt",
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_negatives_match_full_batch(tmp_path):
    world = 2
    frames, text, words, mask = _random_batch(B=4, W=5)  # rank 0's ADs have <= 3 words, rank 1's <= 5
    data = dict(frames=frames, text=text, words=words, mask=mask, scale=torch.tensor(5.0), widths=[3, 5])
    mp.spawn(_dist_worker, args=(world, free_port(), data, str(tmp_path)), nprocs=world, join=True)

    for i, cfg_kwargs in enumerate(CONFIGS):
        ranks = [torch.load(tmp_path / f"cfg{i}_rank{r}.pt") for r in range(world)]
        f = frames.clone().requires_grad_(True)
        t = text.clone().requires_grad_(True)
        s = torch.tensor(5.0, requires_grad=True)
        full = Stage1Loss(Stage1LossConfig(**cfg_kwargs))(f, t, words, mask, s)
        full["loss"].backward()

        for key in ("loss", "global_loss", "mil_loss"):
            if cfg_kwargs["local_loss"]:  # each rank: its local clips' share; their mean is the full-batch loss
                torch.testing.assert_close((ranks[0][key] + ranks[1][key]) / 2, full[key])
            else:  # each rank holds the full-batch loss
                for r in ranks:
                    torch.testing.assert_close(r[key], full[key])
        # Gradients on local embeddings are world_size x the full-batch ones (the data-parallel average divides).
        for r in range(world):
            sl = slice(2 * r, 2 * r + 2)
            torch.testing.assert_close(ranks[r]["frames_grad"] / world, f.grad[sl])
            torch.testing.assert_close(ranks[r]["text_grad"] / world, t.grad[sl])
        torch.testing.assert_close((ranks[0]["scale_grad"] + ranks[1]["scale_grad"]) / world, s.grad)
