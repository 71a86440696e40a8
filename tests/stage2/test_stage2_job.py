"""The Stage-II job as users run it: ``deepspeed --num_gpus 2 launch/stage2.sh`` on SynthMAD, ZeRO-2 and ZeRO-3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distinctad.data.synth_default import ensure_synthmad
from distinctad.testing import REPO, deepspeed_cmd, run_cmd

pytestmark = pytest.mark.slow
FAST_EVAL = [
    "--eval.generation.num_beams",
    "1",
    "--eval.generation.max_new_tokens",
    "8",
    "--eval.metrics",
    "[bleu, cider]",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthmad")
    ensure_synthmad(root, kinds=("window",), feature_dim=64)
    return root


def _job(synth: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(REPO / "launch/configs/stage2.yaml"),
        "--tracking.enabled",
        "false",
        "--data.synth_dir",
        str(synth),
        "--model.feature_dim",
        "64",
        "--run.out_dir",
        str(out),
        "--train.keep_checkpoints",
        "5",
        "--train.log_every",
        "2",
        *FAST_EVAL,
        *extra,
    ]


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _eval_ads(synth: Path) -> list[tuple[str, int]]:
    from distinctad.eval.inputs import read_shard_references

    return sorted((r.movie, r.ad_index) for r in read_shard_references(str(synth / "shards/window-eval")))


def _check_predictions(run_dir: Path, step: int, synth: Path) -> None:
    preds = [
        json.loads(line) for line in (run_dir / f"eval/step_{step:08d}_predictions.jsonl").read_text().splitlines()
    ]
    assert sorted((p["movie"], p["ad_index"]) for p in preds) == _eval_ads(synth)  # one AD per clip, no duplicates
    assert all(p["text"].strip() for p in preds)


def test_two_ranks_zero2_loss_falls_resume_equals_uninterrupted_and_generates(synth, tmp_path):
    steps = 12
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    script = REPO / "launch/stage2.sh"
    run_cmd(deepspeed_cmd(2, script, *_job(synth, straight, "--train.max_steps", str(steps))), cwd=tmp_path)
    run_cmd(
        deepspeed_cmd(
            2, script, *_job(synth, resumed, "--train.max_steps", str(steps), "--train.stop_after", str(steps // 2))
        ),
        cwd=tmp_path,
    )
    assert json.loads((resumed / "summary.json").read_text())["step"] == steps // 2
    run_cmd(deepspeed_cmd(2, script, *_job(synth, resumed, "--train.max_steps", str(steps))), cwd=tmp_path)

    summary = json.loads((straight / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    losses = _losses(straight)
    assert losses[-1] < 0.85 * losses[0], losses

    ckpt = f"checkpoints/step_{steps:08d}/mp_rank_00_model_states.pt"
    a = torch.load(straight / ckpt, map_location="cpu", weights_only=False)["module"]
    b = torch.load(resumed / ckpt, map_location="cpu", weights_only=False)["module"]
    assert a.keys() == b.keys() and any("ema.mu" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert _losses(resumed)[-1] == pytest.approx(losses[-1], rel=1e-6)
    assert json.loads((resumed / "summary.json").read_text())["eval/CIDEr"] == summary["eval/CIDEr"]
    _check_predictions(straight, steps, synth)


def test_two_ranks_zero3_lora_tiny_llama(synth, tmp_path):
    out = tmp_path / "z3"
    run_cmd(
        deepspeed_cmd(
            2,
            REPO / "launch/stage2.sh",
            *_job(
                synth,
                out,
                "--train.max_steps",
                "16",
                "--deepspeed.zero_stage",
                "3",
                "--model.llm",
                "tiny-llama",
                "--model.lora",
                "true",
                "--train.lr",
                "5e-3",
            ),
        ),
        cwd=tmp_path,
    )
    losses = _losses(out)
    # the random base is frozen and only LoRA + our modules learn: a small but steady fall
    assert losses[-1] < 0.96 * losses[0] and losses[-1] < min(losses[:2]), losses
    config = (out / "config.yaml").read_text()
    assert "lora: true" in config and "llm: tiny-llama" in config
    _check_predictions(out, 16, synth)


def test_generate_cli_matches_in_training_eval(synth, tmp_path, launcher_env):
    from distinctad.train.tools.generate import main as generate

    out = tmp_path / "one"
    run_cmd(["bash", str(REPO / "launch/stage2.sh"), *_job(synth, out, "--train.max_steps", "6")], cwd=tmp_path)
    run_cmd(
        [
            "distinctad-generate",
            "--ckpt",
            str(out),
            "--shards",
            str(synth / "shards/window-eval"),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--num-beams",
            "1",
            "--max-new-tokens",
            "8",
        ],
        cwd=tmp_path,
    )
    assert (tmp_path / "p.jsonl").read_text() == (out / "eval/step_00000006_predictions.jsonl").read_text()
    with pytest.raises(SystemExit, match="no checkpoint in"):
        generate(["--ckpt", str(tmp_path), "--shards", str(synth / "shards/window-eval"), "--out", "y"])


def test_ablation_runner_writes_all_eight_rows(synth, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cmd(
        [
            "distinctad-ablate",
            str(REPO / "launch/configs/stage2.yaml"),
            "--out",
            str(tmp_path / "abl"),
            "--data.synth_dir",
            str(synth),
            "--model.feature_dim",
            "64",
            "--train.max_steps",
            "3",
            "--tracking.uri",
            uri,
            "--tracking.experiment",
            "ablation-test",
            *FAST_EVAL,
        ],
        cwd=tmp_path,
        timeout=600,
    )
    table = (tmp_path / "abl/ablation.md").read_text()
    assert "SynthMAD, synthetic features" in table.splitlines()[0]  # the embedded default is feature mode
    grid, diffs = table.split("Differences from A0")
    rows = [line for line in grid.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert [r.split("|")[1].strip() for r in rows] == ["A0", "B1", "B2", "B3", "C0", "C1", "C2", "C3"]
    assert "| R@5/16 (lexical) |" in grid and "Δ R@5/16 (lexical) [95% CI]" in diffs
    assert [line.split("|")[1].strip() for line in diffs.splitlines() if " − A0 |" in line] == [
        f"{r} − A0" for r in ("B1", "B2", "B3", "C0", "C1", "C2", "C3")
    ]
    results = json.loads((tmp_path / "abl/ablation.json").read_text())
    assert all(len(results[r]) == 1 and "eval/CIDEr" in results[r][0] for r in results)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["ablation-test"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 8
    assert {c.info.run_name for c in children} == {f"{r}-seed0" for r in results}
    assert "Differences from A0" in parents[0].data.tags["mlflow.note.content"]
    assert "rows/R_at_5_of_16_lexical" in parents[0].data.metrics  # one series, step = row: one chart
    assert all("eval/CIDEr" in c.data.metrics for c in children)
