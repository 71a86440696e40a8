"""``data.jpeg_decode``: the Stage-I job with frames decoded on the rank's device equals the loader-worker path.

On this CPU machine 'device' takes its fallback (torchvision's CPU decoder in the rank's process, with a one-line
notice) and 'auto' resolves to the workers; the nvJPEG path itself runs in ``benchmarks/gpu_check.sh`` on a GPU
(on one H200 it did, with this job and tests/data/test_jpeg_device.py's CUDA test).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from distinctad.testing import run_cmd

REPO = Path(__file__).resolve().parents[2]


def _run(tmp: Path, mode: str) -> tuple[list[dict], str]:
    run = tmp / f"run_{mode}"
    proc = run_cmd(
        [
            "bash",
            str(REPO / "launch/stage1.sh"),
            str(REPO / "launch/configs/stage1.yaml"),
            *("--run.out_dir", str(run), "--tracking.enabled", "false", "--data.synth_dir", str(tmp / "synth")),
            *("--data.synth_movies", "2", "--data.synth_ads_per_movie", "12", "--data.augment", "false"),
            *("--train.max_steps", "3", "--train.eval_every", "0", "--train.ckpt_every", "0", "--train.log_every", "1"),
            *("--eval.figure", "false", "--data.jpeg_decode", mode),
        ],
        cwd=tmp,
        env={"OMP_NUM_THREADS": "1"},
        timeout=240,
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows, proc.stderr


@pytest.mark.slow
def test_device_decode_trains_and_evaluates_as_the_workers_do(tmp_path):
    dev, log = _run(tmp_path, "device")
    workers, workers_log = _run(tmp_path, "workers")
    assert "data.jpeg_decode=device: no CUDA device; frames are decoded with torchvision's CPU decoder" in log
    assert "frames decoded on the rank's device (JPEG bytes from the loader)" in log
    assert "frames decoded in the loader workers (PIL)" in workers_log
    losses = [r["train/loss"] for r in dev if "train/loss" in r]
    pil = [r["train/loss"] for r in workers if "train/loss" in r]
    assert len(losses) == len(pil) == 3 and all(math.isfinite(x) for x in losses)
    # the same clips, the same eval transform; the frames differ from PIL's by about a level per pixel
    # (tests/data/test_jpeg_device.py), so the losses agree to ~1e-4
    assert losses == pytest.approx(pil, rel=2e-3), (losses, pil)
    val = {k: v for r in dev for k, v in r.items() if k.startswith("val/")}
    val_pil = {k: v for r in workers for k, v in r.items() if k.startswith("val/")}
    assert val.keys() == val_pil.keys() and val["val/clips"] == val_pil["val/clips"] == 12
    for k in ("val/v2t_R@10", "val/t2v_R@10", "val/vanilla_v2t_R@10"):  # at most one clip of 12 ranks differently
        assert abs(val[k] - val_pil[k]) <= 100 / 12 + 1e-6, (k, val[k], val_pil[k])


@pytest.mark.parametrize(
    ("mode", "why_not", "on_device"),
    [("auto", "no CUDA device", False), ("auto", None, True), ("workers", None, False), ("device", "no CUDA", True)],
)
def test_jpeg_decode_resolves_auto_to_the_device_only_where_nvjpeg_works(monkeypatch, mode, why_not, on_device):
    import distinctad.train.stage1.task as task_mod
    from distinctad.train.models.clip_ad import TINY_MODEL, build_clip_ad, clip_transforms

    train_tf, eval_tf = clip_transforms(build_clip_ad(TINY_MODEL), {"scale": (0.9, 1.0)})
    monkeypatch.setattr(task_mod, "nvjpeg_works", lambda device: why_not)
    monkeypatch.setattr(task_mod.torch.cuda, "is_available", lambda: why_not is None)
    monkeypatch.setattr(task_mod.torch.cuda, "current_device", lambda: 0)
    fake = SimpleNamespace(
        cfg=SimpleNamespace(data=SimpleNamespace(jpeg_decode=mode, augment=True)), train_tf=train_tf, eval_tf=eval_tf
    )
    task_mod.Stage1Task._setup_jpeg_decode(fake)
    assert fake.jpeg_on_device is on_device
    assert sorted(fake.device_tf) == (["eval", "train"] if on_device else [])
