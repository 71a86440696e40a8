"""Every registered job, run in this process through ``distinctad-train``'s ``main`` (litgpt's ``test_full``).

Tiny configs, a handful of steps: the job trains, writes its summary and a checkpoint, its loss is finite, and a
relaunch with a larger ``train.max_steps`` resumes from that checkpoint instead of starting over. The multi-rank,
multi-node and fault tests run the same jobs through the launchers in separate processes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distinctad.common import REPO_ROOT
from distinctad.train.jobs import JOBS
from distinctad.train.main import run_job

pytestmark = pytest.mark.slow

TINY = {
    "trivial": [],
    "stage2": [
        "--model.feature_dim",
        "64",
        "--data.synth_movies",
        "2",
        "--data.synth_ads_per_movie",
        "16",
        "--eval.generation.num_beams",
        "1",
        "--eval.generation.max_new_tokens",
        "6",
        "--eval.metrics",
        "[bleu]",
        "--eval.max_windows",
        "2",
    ],
    "stage1": [
        "--data.synth_movies",
        "2",
        "--data.synth_ads_per_movie",
        "16",
        "--data.num_workers",
        "0",
        "--train.micro_batch_size",
        "4",
        "--eval.figure",
        "false",
        "--eval.train_shards",
        "0",
        "--eval.vanilla_baseline",
        "false",
    ],
    # real MAD-Eval text, tiny frozen parts built on first use (random CLIP text tower, tiny GPT-2 + BPE)
    "recon": [
        "--data.train_annotations",
        "data/assets/madeval_anno.csv",
        "--data.eval_movies",
        "[3074_THE_ROOMMATE]",
        "--data.max_train_ads",
        "256",
        "--data.max_eval_ads",
        "8",
        "--model.clip_model",
        "distinctad-tiny",
        "--model.pretrain_steps",
        "2",
        "--epochs",
        "0",
        "--train.micro_batch_size",
        "8",
        "--eval.metrics",
        "[bleu]",
        "--eval.generation.max_new_tokens",
        "6",
    ],
}


def test_every_job_has_an_in_process_test():
    assert set(TINY) == set(JOBS)


@pytest.mark.parametrize("job", sorted(TINY))
def test_job_trains_and_resumes_in_process(job, tmp_path, launcher_env, one_thread):
    out = tmp_path / "run"
    common = [
        str(REPO_ROOT / JOBS[job].default_yaml),
        *TINY[job],
        "--tracking.enabled",
        "false",
        "--run.out_dir",
        str(out),
        "--train.log_every",
        "1",
        "--train.ckpt_every",
        "2",
        "--train.eval_every",
        "0",
        "--train.warmup_steps",
        "1",
    ]
    if "--data.synth_movies" in TINY[job]:
        common += ["--data.synth_dir", str(tmp_path / "synth")]

    first = run_job([job, *common, "--train.max_steps", "2"])
    assert first["step"] == 2 and first["finished"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    losses = [
        json.loads(line)["train/loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)

    second = run_job([job, *common, "--train.max_steps", "3"])
    assert second["step"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == [1, 2, 3], "the relaunch must resume at step 3, not start again at step 1"
    assert Path(out / "config.yaml").is_file()
