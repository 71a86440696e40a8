"""The Stage-I job end to end, as a user runs it: ``deepspeed --num_gpus 2 launch/stage1.sh`` on the SynthMAD
default (two CPU ranks), then ``distinctad-extract`` over its frames shards with the exported CLIP-AD.

One training launch serves every test of this module (module-scoped fixture); it takes ~30 s on 2 cores.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from distinctad.data.wds_pipeline import get_wds_loader
from distinctad.testing import REPO, deepspeed_cmd, run_cmd
from distinctad.train.models.clip_ad import TINY_MODEL, build_clip_ad, clip_transforms
from distinctad.train.tools.extract import ExtractConfig, extract
from distinctad.train.tools.extract import main as extract_main

pytestmark = pytest.mark.slow
STEPS = 60


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("stage1")
    run_dir, synth = tmp / "run", tmp / "synth"
    run_cmd(
        deepspeed_cmd(
            2,
            REPO / "launch/stage1.sh",
            str(REPO / "launch/configs/stage1.yaml"),
            "--run.out_dir",
            str(run_dir),
            "--tracking.uri",
            f"sqlite:///{tmp}/mlflow.db",
            "--data.synth_dir",
            str(synth),
            "--train.max_steps",
            str(STEPS),
            "--train.eval_every",
            "30",
            "--train.ckpt_every",
            "30",
            "--eval.figure_clips",
            "16",
        ),
        cwd=tmp,
        env={"OMP_NUM_THREADS": "1"},
        timeout=240,
    )
    return {
        "tmp": tmp,
        "run": run_dir,
        "frames_train": synth / "shards/frames-train",
        "frames_eval": synth / "shards/frames-eval",
    }


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _frames_per_movie(shard_dir: Path) -> Counter:
    """ADs per movie of a frames shard set, from the tar member names alone (independent of the code under test)."""
    counts: Counter = Counter()
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for name in {m.name.split(".", 1)[0] for m in tf.getmembers()}:
                counts[name.rsplit("__", 1)[0]] += 1
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Training


def test_two_rank_run_loss_falls_and_retrieval_beats_chance(stage1_run):
    summary = json.loads((stage1_run["run"] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"] and summary["step"] == STEPS
    assert summary["samples_seen"] == STEPS * 8 * 2
    train = [m for m in _metrics(stage1_run["run"]) if "train/loss" in m]
    assert [m["step"] for m in train] == list(range(10, STEPS + 1, 10))
    for key in ("train/loss", "train/global_loss", "train/mil_loss"):  # both terms logged, both fall
        assert train[-1][key] < 0.85 * train[0][key], (key, [m[key] for m in train])
    lam = 0.5  # loss.lambda_mil of launch/configs/stage1.yaml
    for m in train:
        assert m["train/loss"] == pytest.approx(m["train/global_loss"] + lam * m["train/mil_loss"], rel=1e-4)

    evals = [m for m in _metrics(stage1_run["run"]) if "val/v2t_R@1" in m]
    assert [m["step"] for m in evals] == [30, STEPS]
    # Every clip exactly once, gathered from both ranks, padding rows dropped.
    assert summary["val/clips"] == 48 and summary["val/train_clips"] == 144
    chance = 100 / 144
    assert summary["val/train_chance_R@1"] == pytest.approx(chance)
    # The training clips: far above chance and above the model as built (vanilla) on the same clips.
    for d in ("v2t", "t2v"):
        assert summary[f"val/train_{d}_R@1"] >= 5 * chance, summary
        assert summary[f"val/train_{d}_R@1"] > summary[f"val/vanilla_train_{d}_R@1"]
        assert summary[f"val/train_{d}_R@10"] >= summary[f"val/train_{d}_R@5"] >= summary[f"val/train_{d}_R@1"]
    assert evals[-1]["val/train_v2t_R@10"] > evals[0]["val/vanilla_train_v2t_R@10"]
    # The vanilla baseline is computed once (frozen copy) and stays constant.
    assert evals[0]["val/vanilla_v2t_R@1"] == evals[-1]["val/vanilla_v2t_R@1"]


def test_fig_b2_and_mlflow(stage1_run):
    import mlflow

    run_dir = stage1_run["run"]
    pngs = sorted((run_dir / "fig_b2").glob("*.png"))
    assert [p.name for p in pngs] == ["synth0003_step00000030.png", f"synth0003_step{STEPS:08d}.png"]
    assert pngs[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    for k in ("vanilla", "adapted", "text"):
        assert -1.0 <= summary[f"val/fig_{k}_band_mean"] <= 1.0

    mlflow.set_tracking_uri(f"sqlite:///{stage1_run['tmp']}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["distinctad"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.tags["job"] == "stage1" and run.data.params["world_size"] == "2"
    client = mlflow.MlflowClient()
    for key in ("train/global_loss", "train/mil_loss", "val/fig_adapted_band_mean"):
        assert key in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "train/mil_loss")
    assert len(history) == STEPS // 10
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "fig_b2")]
    assert sorted(artifacts) == [f"fig_b2/{p.name}" for p in pngs]


def test_export_loads_back_text_tower_frozen_vision_trained(stage1_run):
    export = stage1_run["run"] / "clip_ad"
    meta = json.loads((export / "stage1_export.json").read_text())
    assert meta["step"] == STEPS and meta["model"] == TINY_MODEL
    adapted = build_clip_ad(TINY_MODEL, str(export))  # the real loading path (open_clip local-dir)
    torch.manual_seed(0)  # run.seed: the job's model as built
    vanilla = build_clip_ad(TINY_MODEL)
    a, v = adapted.clip.state_dict(), vanilla.clip.state_dict()
    assert a.keys() == v.keys() and a["logit_scale"].shape == torch.Size([])
    text = [k for k in a if not k.startswith("visual.") and k != "logit_scale"]
    assert len(text) > 10 and all(torch.equal(a[k], v[k]) for k in text), "text tower changed"
    changed = [k for k in a if k.startswith("visual.") and not torch.equal(a[k], v[k])]
    assert len(changed) >= 10, "vision tower did not train"
    # The export is the final checkpoint's weights (fp32 run: bit-identical). The checkpoint leaves the frozen text
    # tower out (train.save_frozen=false): the export's text tower is the one built from run.seed, checked above.
    ckpt = stage1_run["run"] / "checkpoints" / f"step_{STEPS:08d}" / "mp_rank_00_model_states.pt"
    module = torch.load(ckpt, map_location="cpu", weights_only=False)["module"]
    assert not [k for k in text if f"clip.{k}" in module], "frozen text-tower weights were saved"
    saved = [k for k in a if f"clip.{k}" in module]
    assert set(changed) <= set(saved) and "logit_scale" in saved
    for k in saved:
        torch.testing.assert_close(a[k], module[f"clip.{k}"].reshape(a[k].shape), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Extraction


def test_extract_adapted_eval_windows(stage1_run, tmp_path, capsys):
    out = tmp_path / "feats"
    extract_main(
        [
            "--frames",
            str(stage1_run["frames_eval"]),
            "--pretrained",
            str(stage1_run["run"]),
            "--out",
            str(out),
            "--model",
            TINY_MODEL,
            "--window",
            "10",
            "--maxcount",
            "2",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert "extracted 48 ADs of 1 movies into 5 windows / 3 shards" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "window" and manifest["complete"] and manifest["split"] == "eval"
    assert manifest["feature_dim"] == 64 and manifest["options"]["window"] == 10
    assert manifest["extraction"]["adapted"] is True
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert json.loads((out / "sizes.json").read_text()) == {
        "eval-000000.tar": 2,
        "eval-000001.tar": 2,
        "eval-000002.tar": 1,
    }
    assert {m: sum(s["ads"] for s in manifest["shards"] if m in s["movies"]) for m in manifest["movies"]} == dict(
        _frames_per_movie(stage1_run["frames_eval"])
    )

    batches = list(get_wds_loader(str(out), "window", 8, is_train=False, pad_eval=False).dataloader)
    assert len(batches) == 1
    b = batches[0]
    assert b["feats"].shape == (5, 10, 8, 64)
    assert b["clip_mask"].sum(1).tolist() == [10, 10, 10, 10, 8]  # last window short and masked
    assert torch.equal(b["frame_mask"], b["clip_mask"][..., None].expand(-1, -1, 8))
    assert b["feats"][4, 8:].abs().sum() == 0
    real = b["feats"][b["clip_mask"]].float()  # (48, 8, 64); batches keep the shards' float16
    torch.testing.assert_close(real.norm(dim=-1), torch.ones(48, 8), atol=2e-3, rtol=0)
    assert b["ad_index"][1].tolist() == list(range(10, 20)) and b["context"][0] == []
    assert b["context"][1] == b["sentences"][0][7:10]  # K=3 previous ADs, oldest first

    # The features are the exported model's normalised frame embeddings under the eval transform.
    model = build_clip_ad(TINY_MODEL, str(stage1_run["run"] / "clip_ad")).eval()
    _, eval_tf = clip_transforms(model)
    frames = next(
        iter(
            get_wds_loader(
                str(stage1_run["frames_eval"]), "frames", 4, is_train=False, pad_eval=False, preprocess=eval_tf
            ).dataloader
        )
    )
    with torch.no_grad():
        expected = model.encode_video(frames["images"])  # (4, 8, 64)
    for i in range(4):
        w, j = divmod(int(frames["ad_index"][i]), 10)
        assert b["sentences"][w][j] == frames["sentence"][i]
        torch.testing.assert_close(b["feats"][w, j].float(), expected[i], atol=2e-3, rtol=0)


def test_extract_two_ranks_by_movie_and_resume(stage1_run, tmp_path):
    cfg = ExtractConfig(
        frames=str(stage1_run["frames_train"]),
        out=str(tmp_path / "feats"),
        model=TINY_MODEL,
        pretrained=str(stage1_run["run"] / "clip_ad"),
        maxcount=1,
        num_workers=0,
        progress=False,
    )
    # The two ranks' work, one after the other (no process group: no collective is needed); rank 0 merges.
    r1 = extract(cfg, rank=1, world=2)
    r0 = extract(cfg, rank=0, world=2)
    assert r1["manifest"] is None and r0["manifest"]["complete"]
    manifest = r0["manifest"]
    by_shard = {s["file"]: s["movies"] for s in manifest["shards"]}
    movies_0 = {m for f in r0["written"] for m in by_shard[f]}
    movies_1 = {m for f in r1["written"] for m in by_shard[f]}
    assert movies_0 and movies_1 and not movies_0 & movies_1  # whole movies per rank
    frames = _frames_per_movie(stage1_run["frames_train"])
    assert movies_0 | movies_1 == set(frames) == set(manifest["movies"])
    # 3 movies x 48 ADs -> 3 windows each, one window per shard.
    assert manifest["totals"] == {
        "shards": 9,
        "samples": 9,
        "movies": 3,
        "ads": 144,
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
    }
    assert {m: sum(s["ads"] for s in manifest["shards"] if m in s["movies"]) for m in frames} == dict(frames)
    info = get_wds_loader(cfg.out, "window", 3, is_train=True, seed=0)  # Stage-II training reads them
    batch = next(iter(info.dataloader))
    assert batch["feats"].shape == (3, 16, 8, 64) and batch["clip_mask"].all()
    assert info.num_batches == 3

    # Resume: only the missing shard is redone, with the same bytes.
    victim = Path(cfg.out) / "train-000004.tar"
    sha = next(s["sha256"] for s in manifest["shards"] if s["file"] == victim.name)
    victim.unlink()
    again = [extract(cfg, rank=r, world=2) for r in (1, 0)]
    assert sorted(again[0]["written"] + again[1]["written"]) == [victim.name]
    assert len(again[0]["skipped"]) + len(again[1]["skipped"]) == 8
    assert next(s["sha256"] for s in again[1]["manifest"]["shards"] if s["file"] == victim.name) == sha
    # Another model (random weights): nothing is reused.
    other = extract(ExtractConfig(**{**cfg.__dict__, "pretrained": ""}), rank=0, world=1)
    assert len(other["written"]) == 9 and not other["skipped"]
    assert other["manifest"]["extraction"]["adapted"] is False


def test_extract_cli_errors(tmp_path, stage1_run):
    with pytest.raises(SystemExit, match="^error: --frames: .*nope: no such shard folder or file$"):
        extract_main(["--frames", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="^error: --pretrained: .*missing.bin: no such weights file or folder$"):
        extract_main(
            [
                "--frames",
                str(stage1_run["frames_eval"]),
                "--out",
                str(tmp_path / "o"),
                "--pretrained",
                str(tmp_path / "missing.bin"),
                "--no-progress",
            ]
        )
    with pytest.raises(SystemExit, match="error: need --window >= 1"):
        extract_main(["--frames", "x", "--out", "y", "--window", "0"])
    window_dir = tmp_path / "w"
    window_dir.mkdir()
    np.save(window_dir / "x.npy", np.zeros(1))  # not a shard set
    (window_dir / "manifest.json").write_text(json.dumps({"kind": "window"}))
    (window_dir / "a.tar").write_bytes(b"")
    with pytest.raises(SystemExit, match="not 'frames'"):
        extract_main(["--frames", str(window_dir), "--out", str(tmp_path / "o")])


def test_stage1_help_lists_job_keys(capsys):
    from distinctad.train.main import main

    with pytest.raises(SystemExit) as e:
        main(["stage1", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for key in (
        "--model.trainable_vision_blocks",
        "--loss.lambda_mil",
        "--data.train_shards",
        "--eval.figure_movie",
        "--deepspeed.zero_stage",
    ):
        assert key in text


def test_configs_load_and_missing_weights_is_a_one_line_error(stage1_run, tmp_path):
    from distinctad.train.core.config import ConfigError, load_config
    from distinctad.train.stage1.config import Stage1Job
    from distinctad.train.stage1.task import Stage1Task

    big = load_config(Stage1Job, REPO / "launch/configs/stage1_vitb32.yaml")
    assert big.model.name == "ViT-B-32" and big.deepspeed.zero_stage == 2 and big.deepspeed.precision == "bf16"
    with pytest.raises(ConfigError, match="data.aug_scale"):
        load_config(Stage1Job, None, ["--data.aug_scale", "[0.5]"])
    cfg = load_config(
        Stage1Job,
        REPO / "launch/configs/stage1.yaml",
        [
            "--data.train_shards",
            str(stage1_run["frames_train"]),
            "--run.out_dir",
            str(tmp_path),
            "--model.pretrained",
            str(tmp_path / "none.bin"),
        ],
    )
    with pytest.raises(ConfigError, match=r"^model: CLIP weights not found at .*none\.bin[^\n]*$"):
        Stage1Task(cfg).build_model()
