"""``data.jpeg_decode``: the Stage-I job with frames decoded on the rank's device equals the loader-worker path.

On this CPU machine 'device' takes its fallback (torchvision's CPU decoder in the rank's process, with a one-line
notice) and 'auto' resolves to the workers; the nvJPEG path itself runs in ``benchmarks/gpu_check.sh`` on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distinctad.testing import run_cmd

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


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


def test_device_decode_trains_and_evaluates_as_the_workers_do(tmp_path):
    dev, dev_log = _run(tmp_path, "device")
    auto, auto_log = _run(tmp_path, "auto")
    assert "data.jpeg_decode=device: no CUDA device; frames are decoded with torchvision's CPU decoder" in dev_log
    assert "frames decoded on the rank's device (JPEG bytes from the loader)" in dev_log
    assert "frames decoded in the loader workers (PIL)" in auto_log  # auto on a CPU machine: the workers
    dev_loss = [r["train/loss"] for r in dev if "train/loss" in r]
    auto_loss = [r["train/loss"] for r in auto if "train/loss" in r]
    assert len(dev_loss) == len(auto_loss) == 3
    # the same clips, the same eval transform; only the resampling differs by a level or so per pixel
    assert all(abs(a - b) < 2e-3 * abs(b) for a, b in zip(dev_loss, auto_loss)), (dev_loss, auto_loss)
    val_dev = {k: v for r in dev for k, v in r.items() if k.startswith("val/")}
    val_auto = {k: v for r in auto for k, v in r.items() if k.startswith("val/")}
    assert val_dev.keys() == val_auto.keys() and val_dev["val/clips"] == val_auto["val/clips"] == 12
    for k in ("val/v2t_R@10", "val/t2v_R@10", "val/vanilla_v2t_R@10"):  # at most one clip of 12 ranks differently
        assert abs(val_dev[k] - val_auto[k]) <= 100 / 12 + 1e-6, (k, val_dev[k], val_auto[k])
