"""A corrupt eval shard never kills a finished run (issue 14.4).

The fault: Stage-II with ``--data.eval_shards`` pointing at a shard cut to 70% of its size trained and checkpointed,
then the final evaluation died with an ``EvalInputError`` traceback: no ``summary.json``, MLflow run FAILED.

Evaluation inside a training job now does what training does with corrupt samples: skip, count, log, and mark the
report partial; the run ends with its summary. The stand-alone ``distinctad-eval`` stays strict. Stage-I's eval
(retrieval, Fig. B.2) is tried with the same faults. Recon's eval reads its annotation file at start-up, before any
step (a bad file is a one-line error then), so it has no shard to meet mid-run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distinctad.common import REPO_ROOT
from distinctad.data.synth_default import ensure_synthmad
from distinctad.eval.inputs import EvalInputError, read_shard_references
from distinctad.testing import rewrite_tar, truncate

# ---------------------------------------------------------------- corruptions of one shard


def garbage_json(shard: Path) -> None:
    rewrite_tar(shard, lambda name, data: b"{not json" if name.endswith(".json") else data)


def garbage_npy(shard: Path) -> None:
    rewrite_tar(shard, lambda name, data: b"\x93NUMPY garbage" if name.endswith(".feats.npy") else data)


def not_a_tar(shard: Path) -> None:
    shard.write_bytes(b"\x00garbage" * 3)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, str]:
    """SynthMAD window shards (D=64): eval is one movie of 48 ADs, 3 windows over 2 shards (2 + 1 windows)."""
    return ensure_synthmad(tmp_path_factory.mktemp("synthmad"), kinds=("window",), feature_dim=64)


def corrupted(synth: dict[str, str], tmp: Path, faults: dict[int, object]) -> Path:
    """A copy of the eval shards with ``faults[i](shard i)`` applied."""
    out = tmp / "eval"
    shutil.copytree(synth["window-eval"], out)
    tars = sorted(out.glob("*.tar"))
    for i, fault in faults.items():
        fault(tars[i])
    return out


# ---------------------------------------------------------------- the ground-truth read: strict or lenient


@pytest.mark.parametrize(
    "fault,kept",
    [
        (lambda p: truncate(p, 0.7), 16),  # the shard: the second window is cut off
        (lambda p: truncate(p, 0.3), 0),  # nothing of the first shard is readable
        (lambda p: truncate(p, 0.55), 16),
        (garbage_json, 0),
        (not_a_tar, 0),
    ],
    ids=["cut70", "cut30", "cut55", "bad-json", "not-a-tar"],
)
def test_reference_read_is_strict_by_default_and_lenient_on_request(synth, tmp_path, fault, kept):
    shards = corrupted(synth, tmp_path, {0: fault})
    with pytest.raises(EvalInputError) as e:
        read_shard_references(str(shards))  # what distinctad-eval does: strict
    assert "\n" not in str(e.value) and "eval-000000.tar" in str(e.value)
    skipped: list[str] = []
    refs = read_shard_references(str(shards), skipped=skipped)
    assert len(refs) == kept + 16  # the readable part of shard 0, and all of shard 1 (one window of 16 ADs)
    assert skipped and all("eval-000000.tar" in s and "\n" not in s for s in skipped)


# ---------------------------------------------------------------- the Stage-II job: summary written, report partial


STAGE2 = [
    "--model.feature_dim",
    "64",
    "--eval.generation.num_beams",
    "1",
    "--eval.generation.max_new_tokens",
    "4",
    "--eval.metrics",
    "[bleu]",
    "--train.max_steps",
    "2",
    "--train.ckpt_every",
    "0",
    "--train.eval_every",
    "0",
    "--train.warmup_steps",
    "1",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case,faults,scored,unscored",
    [
        # the case, eval_shards naming the one truncated shard, tracked in MLflow
        ("one-shard-cut70", {0: lambda p: truncate(p, 0.7)}, 16, 0),
        # a truncated shard (its 2nd window lost to both readers) and a corrupt feats.npy (json readable: unscored)
        ("cut70+bad-npy", {0: lambda p: truncate(p, 0.7), 1: garbage_npy}, 16, 16),
        ("all-unreadable", {0: lambda p: truncate(p, 0.3), 1: not_a_tar}, 0, 0),
    ],
)
def test_stage2_final_eval_skips_corrupt_eval_samples(
    synth, tmp_path, launcher_env, one_thread, case, faults, scored, unscored
):
    import mlflow

    from distinctad.train.main import run_job

    eval_dir = corrupted(synth, tmp_path, faults)
    eval_spec = str(eval_dir / "eval-000000.tar") if case.startswith("one-shard") else str(eval_dir)
    out, store = tmp_path / "run", tmp_path / "mlflow.db"
    track = (
        ["--tracking.uri", f"sqlite:///{store}"] if case.startswith("one-shard") else ["--tracking.enabled", "false"]
    )
    args = ["--data.train_shards", synth["window-train"], "--data.eval_shards", eval_spec, "--run.out_dir", str(out)]
    run_job(["stage2", str(REPO_ROOT / "launch/configs/stage2.yaml"), *STAGE2, *args, *track])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 2
    assert summary["eval/partial"] == 1.0 and summary["eval/unscored_ads"] == unscored
    assert summary["eval/skipped_samples"] == {"one-shard-cut70": 1, "cut70+bad-npy": 2}.get(case, 3)  # windows lost
    report = out / "eval/step_00000002_report.json"
    if scored:
        meta = json.loads(report.read_text())["meta"]
        assert meta["partial"]["unscored_ads"] == unscored and meta["partial"]["unreadable"]
        assert any(n.startswith("partial evaluation:") for n in meta["notices"])
        assert meta["matching"]["matched"] == scored and "eval/BLEU-1" in summary
        assert "partial evaluation" in report.with_suffix(".md").read_text()
    else:
        assert not report.exists()  # nothing to score: counts only, and the run still ends well
    if case.startswith("one-shard"):
        client = mlflow.MlflowClient(f"sqlite:///{store}")
        (run,) = client.search_runs([client.get_experiment_by_name("distinctad").experiment_id])
        assert run.info.status == "FINISHED" and run.data.metrics["eval/partial"] == 1.0


# ---------------------------------------------------------------- Stage-I: retrieval and Fig. B.2 on corrupt shards


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, str]:
    """SynthMAD frames shards: 2 movies of 16 ADs; eval is one movie, 8 shards of 2 clips."""
    return ensure_synthmad(tmp_path_factory.mktemp("frames"), kinds=("frames",), movies=2, ads_per_movie=16)


@pytest.mark.slow
@pytest.mark.parametrize(
    "broken,fraction,lost",
    [([0, 3], 0.5, 2), ([1, 2, 5], 0.75, 3), (list(range(8)), 0.05, 16)],
    ids=["two-shards-cut50", "three-shards-cut75", "every-shard-cut5"],
)
def test_stage1_eval_skips_corrupt_eval_clips(frames, tmp_path, launcher_env, one_thread, broken, fraction, lost):
    from distinctad.train.main import run_job

    eval_dir = tmp_path / "eval"
    shutil.copytree(frames["frames-eval"], eval_dir)
    tars = sorted(eval_dir.glob("*.tar"))
    for i in broken:
        truncate(tars[i], fraction)
    out = tmp_path / "run"
    run_job(
        [
            "stage1",
            str(REPO_ROOT / "launch/configs/stage1.yaml"),
            *("--data.train_shards", frames["frames-train"], "--data.eval_shards", str(eval_dir)),
            *("--data.num_workers", "0", "--train.micro_batch_size", "4", "--train.max_steps", "2"),
            *("--train.ckpt_every", "0", "--train.eval_every", "0", "--train.warmup_steps", "1"),
            *("--eval.train_shards", "0", "--eval.vanilla_baseline", "false", "--model.export", "false"),
            *("--tracking.enabled", "false", "--run.out_dir", str(out)),
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["val/partial"] == 1.0 and summary["val/skipped_samples"] == lost
    if lost < 16:
        assert summary["val/clips"] == 16 - lost  # each cut shard lost its second clip
        assert list((out / "fig_b2").glob("*.png"))  # the figure is drawn from the readable clips
    else:
        assert "val/clips" not in summary and not (out / "fig_b2").exists()  # nothing readable: counts only
