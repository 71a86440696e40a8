"""Resuming after something changed: ranks, nodes, ZeRO stage, precision and config keys (``train/core/resume.py``).

The rules under test (README, "Checkpoints and resume"):

- this launch's config is in force for every key; the checkpoint restores state only (weights, optimizer moments,
  step, schedule position, data position, RNG); the keys that differ are listed; a model whose parameters differ
  is refused in one line;
- a topology change loads exactly, through DeepSpeed's universal checkpoint (optimizer state kept), or weights-only
  with one warning line; never a traceback.

The decision table is unit-tested for every precision (only fp32 runs on CPU); the rest runs the trivial job as
users do (``deepspeed --num_gpus 2`` gives two gloo ranks), and the README's Stage-II sequence once.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distinctad.testing import (
    REPO,
    TRIVIAL_YAML,
    deepspeed_cmd,
    free_port,
    metrics_rows,
    run_cmd,
    run_failing,
    trivial_cmd,
)
from distinctad.train.core.checkpoint import CheckpointError
from distinctad.train.core.config import ConfigError, load_config, save_config, to_dict
from distinctad.train.core.engine import warmup_cosine
from distinctad.train.core.resume import (
    UNIVERSAL_MODE,
    WEIGHTS,
    Prepared,
    Topology,
    check_model,
    checkpoint_config,
    config_changes,
    describe_changes,
    plan,
    rescale_position,
    summary,
)
from distinctad.train.trivial.config import TrivialJob
from distinctad.train.trivial.task import MLP

UNIVERSAL_LINE = "weights and optimizer state loaded through DeepSpeed's universal checkpoint"
REINIT = "so the optimizer state is re-initialised (AdamW moments restart from zero)"


def T(world: int, stage: int, precision: str = "fp32", nodes: int = 1, mb: int = 8) -> Topology:
    return Topology(world, stage, precision, nodes, mb)


# ---------------------------------------------------------------- the decision, for every precision


@pytest.mark.parametrize(
    "saved, now, mode, why",
    [
        (T(2, 2), T(2, 2), "exact", ""),
        (T(2, 2, nodes=2), T(2, 2), "exact", ""),  # nodes matter only through the ranks
        (T(1, 0), T(4, 0), "exact", ""),  # ZeRO-0 fp32 optimizer state is whole on every rank
        (T(2, 2), T(1, 2), UNIVERSAL_MODE, ""),
        (T(1, 2), T(2, 2), UNIVERSAL_MODE, ""),
        (T(1, 1), T(1, 2), UNIVERSAL_MODE, ""),
        (T(4, 2), T(8, 1), UNIVERSAL_MODE, ""),
        (T(2, 3), T(1, 3), UNIVERSAL_MODE, ""),
        (T(1, 2, "bf16"), T(1, 2, "fp32"), UNIVERSAL_MODE, ""),
        (T(8, 3, "bf16"), T(4, 3, "fp16"), UNIVERSAL_MODE, ""),
        (T(1, 2, "fp16"), T(2, 1, "bf16"), UNIVERSAL_MODE, ""),
        (T(1, 2), T(1, 3), WEIGHTS, "cannot move optimizer state from ZeRO-2 to ZeRO-3"),
        (T(2, 3, "bf16"), T(2, 1, "bf16"), WEIGHTS, "cannot move optimizer state from ZeRO-3 to ZeRO-1"),
        (T(1, 0), T(1, 2), WEIGHTS, "from ZeRO-0 to ZeRO-2"),
        (T(2, 2), T(1, 0), WEIGHTS, "from ZeRO-2 to ZeRO-0"),
        (T(1, 0, "fp32"), T(1, 0, "fp16"), WEIGHTS, "ZeRO-0 optimizer state differently in fp32 and fp16"),
        (T(1, 0, "bf16"), T(2, 0, "bf16"), WEIGHTS, "no conversion of bf16 ZeRO-0 optimizer state"),
    ],
)
def test_plan_for_every_topology_change(saved, now, mode, why):
    chosen = plan(saved, now)
    assert chosen.mode == mode and why in chosen.why
    prep = Prepared(Path("/ck"), "step_00000004", {}, saved, now, chosen, [])
    level, line = summary(prep, [])
    assert "\n" not in line and "Traceback" not in line
    if (saved.world_size, saved.zero_stage, saved.precision) != (now.world_size, now.zero_stage, now.precision):
        assert line.startswith(f"resume: topology changed ({saved} -> {now}): ")
    if mode == WEIGHTS:
        assert level == logging.WARNING and REINIT in line and chosen.why in line
    elif mode == UNIVERSAL_MODE:
        assert level == logging.INFO and UNIVERSAL_LINE in line
    if saved.world_size != now.world_size:
        assert line.endswith("RNG streams restart")


def test_topology_is_read_from_the_record_or_from_deepspeeds_fields():
    record = T(2, 3, "bf16", nodes=2, mb=4).record()
    assert Topology.of_checkpoint({"topology": record, "dp_world_size": 9}) == T(2, 3, "bf16", nodes=2, mb=4)
    legacy = {  # a checkpoint written before the topology was recorded
        "dp_world_size": 4,
        "ds_config": {
            "zero_optimization": {"stage": 1},
            "fp16": {"enabled": True},
            "train_micro_batch_size_per_gpu": 2,
        },
    }
    assert Topology.of_checkpoint(legacy) == T(4, 1, "fp16", mb=2)
    assert (
        str(T(2, 3, "bf16", nodes=2)) == "2 ranks on 2 nodes, ZeRO-3, bf16" and str(T(1, 0)) == "1 rank, ZeRO-0, fp32"
    )


@pytest.mark.parametrize(
    "micro, saved, now, expected, note",
    [
        (10, T(2, 2, mb=4), T(1, 2, mb=8), 10, "80 samples into the epoch)"),
        (5, T(1, 2, mb=8), T(2, 2, mb=4), 5, "40 samples"),
        (3, T(1, 2, mb=8), T(2, 2, mb=8), 1, "24 samples into the epoch; 8 of them are seen again)"),
        (6, T(1, 2, mb=8), T(1, 2, mb=4), 12, "48 samples"),  # micro-batch size changed, same ranks
        (7, T(2, 2, mb=4), T(2, 3, mb=4), 7, ""),  # same ranks and micro-batch size: untouched
        (7, T(2, 2, mb=0), T(1, 2, mb=4), 7, ""),  # unknown micro-batch size (old checkpoint): untouched
    ],
)
def test_data_position_is_rescaled_to_the_same_number_of_samples(micro, saved, now, expected, note):
    got, text = rescale_position(micro, saved, now)
    assert got == expected and note in text and (text == "") == (note == "")


# ---------------------------------------------------------------- config keys and the model


def test_config_changes_list_every_differing_key_with_the_value_in_force():
    old = to_dict(load_config(TrivialJob, TRIVIAL_YAML))
    old["train"].pop("stop_after")  # a key that did not exist when the checkpoint was written
    new = load_config(TrivialJob, TRIVIAL_YAML, ["--train.lr", "0.01", "--train.max_steps", "8"])
    changes = config_changes(old, new)
    assert changes == [("train.max_steps", 40, 8), ("train.lr", 0.003, 0.01), ("train.stop_after", "(absent)", 0)]
    text = describe_changes(changes, Path("ck/config.yaml"), "new")
    assert text.splitlines() == [
        "resume: 3 config keys differ from ck/config.yaml; the value in force is this launch's "
        "(run.resume_config=new):",
        "  train.max_steps: 40 -> 8 (in force)",
        "  train.lr: 0.003 -> 0.01 (in force)",
        "  train.stop_after: (absent) -> 0 (in force)",
    ]
    assert config_changes(None, new) == [] and config_changes(to_dict(new), new) == []


def _meta(model: torch.nn.Module, zero: bool = True) -> dict:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    trainable = [k for k, p in model.named_parameters() if p.requires_grad] if zero else None
    return {"shapes": shapes, "trainable": trainable}


def test_a_model_whose_parameters_differ_is_refused_in_one_line():
    saved = _meta(MLP(16, 64))
    check_model(MLP(16, 64), saved, [], Path("ck"))  # same model: fine
    with pytest.raises(CheckpointError) as e:
        check_model(MLP(16, 32), saved, [("model.hidden", 64, 32), ("train.lr", 0.1, 0.2)], Path("ck"))
    assert str(e.value) == (
        "cannot resume from ck: the model's parameters differ from the checkpoint's (5 reshaped, e.g. net.0.weight "
        "[64, 16] -> [32, 16]); changed keys: model.hidden 64 -> 32. Restore those keys, or start a new run instead "
        "with --run.resume none or another --run.name"
    )
    deeper = torch.nn.Sequential(MLP(16, 64), torch.nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"\(6 missing, e\.g\. net\.0\.weight; 8 new, e\.g\. 0\.net\.0\.weight\)"):
        check_model(deeper, saved, [], Path("ck"))
    frozen = MLP(16, 64)
    frozen.net[0].requires_grad_(False)
    with pytest.raises(CheckpointError, match=r"2 changed between trainable and frozen, e\.g\. net\.0\.bias"):
        check_model(frozen, saved, [], Path("ck"))
    check_model(frozen, _meta(MLP(16, 64), zero=False), [], Path("ck"))  # ZeRO-0 records no trainable set
    for err in (e.value,):
        assert "\n" not in str(err)


def test_resume_config_checkpoint_takes_the_checkpoints_config_and_this_launchs_command_line(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints/step_00000004").mkdir(parents=True)
    (run / "checkpoints/latest").write_text("step_00000004")
    saved = load_config(TrivialJob, TRIVIAL_YAML, ["--train.lr", "0.005", "--model.hidden", "32", "--run.seed", "3"])
    save_config(saved, run / "checkpoints/step_00000004/config.yaml")
    cli = ["--run.out_dir", str(run), "--run.resume_config", "checkpoint", "--train.max_steps", "9"]
    cfg = checkpoint_config(TrivialJob, load_config(TrivialJob, TRIVIAL_YAML, cli), cli)
    assert (cfg.train.lr, cfg.model.hidden, cfg.train.max_steps) == (0.005, 32, 9)  # checkpoint, checkpoint, CLI
    assert cfg.run.out_dir == str(run) and cfg.run.seed == 0  # this launch's run section
    with pytest.raises(ConfigError, match=r"^--model\.preset cannot apply with run\.resume_config=checkpoint"):
        checkpoint_config(TrivialJob, cfg, [*cli, "--model.preset", "x"])
    fresh = load_config(TrivialJob, TRIVIAL_YAML, ["--run.out_dir", str(tmp_path / "new")])
    assert checkpoint_config(TrivialJob, fresh, []) is fresh  # nothing to resume: the launch's config as it is


# ---------------------------------------------------------------- runs: ranks, nodes and ZeRO stages change

STEPS = ["--train.max_steps", "8", "--train.log_every", "1", "--train.keep_checkpoints", "5"]


def _weights(run: Path, step: int = 8) -> dict[str, torch.Tensor]:
    f = run / f"checkpoints/step_{step:08d}/mp_rank_00_model_states.pt"
    if not f.is_file():  # ZeRO-3 keeps its weights in the optimizer partitions
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=f"step_{step:08d}")
    return torch.load(f, map_location="cpu", weights_only=True)["module"]


def _loss(run: Path, step: int) -> float:
    rows = [r for r in metrics_rows(run) if r.get("step") == step and "train/loss" in r]
    return rows[-1]["train/loss"]


def _resume(src: Path, dst: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    """Copy a stopped run and relaunch it; the relaunch must finish without a traceback."""
    shutil.copytree(src, dst)
    out = run_cmd(trivial_cmd(dst, *STEPS, *args, ranks=ranks), cwd=dst.parent)
    assert "Traceback" not in out.stderr + out.stdout
    assert json.loads((dst / "summary.json").read_text())["step"] == 8
    return out


def _close(a: dict, b: dict, atol: float) -> bool:
    return all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=atol) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """8 steps in one go: 1 rank, micro-batch 8, ZeRO-2 (the trivial YAML's JSON)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run_cmd(trivial_cmd(out, *STEPS), cwd=out.parent)
    return out


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """4 of 8 steps at the YAML's settings (lr 0.003, warm-up 4, ZeRO-2), 1 rank; tests copy it, then resume."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    run_cmd(trivial_cmd(out, *STEPS, "--train.stop_after", "4"), cwd=out.parent)
    return out


@pytest.mark.slow
def test_ranks_change_2_to_1_and_1_to_2_continue_as_the_uninterrupted_run(straight, stopped, tmp_path):
    """Two ranks x micro-batch 4 see the samples one rank x micro-batch 8 sees, step for step: a resume across the
    change must reproduce the uninterrupted run (weights, optimizer moments, schedule and data position kept)."""
    two = tmp_path / "two"
    run_cmd(trivial_cmd(two, *STEPS, "--train.micro_batch_size", "4", "--train.stop_after", "4", ranks=2), cwd=tmp_path)
    to_one = _resume(two, tmp_path / "2to1")
    assert (
        "resume: topology changed (2 ranks, ZeRO-2, fp32 -> 1 rank, ZeRO-2, fp32): weights and optimizer state "
        f"loaded through DeepSpeed's universal checkpoint {tmp_path}/2to1/checkpoints/step_00000004/universal; "
        "data position rescaled to micro-batch 4 (32 samples into the epoch); RNG streams restart"
    ) in to_one.stderr
    assert _close(_weights(tmp_path / "2to1"), _weights(straight), atol=1e-6)

    to_two = _resume(stopped, tmp_path / "1to2", "--train.micro_batch_size", "4", ranks=2)  # 1 rank, 4 of 8 steps
    assert (
        "resume: topology changed (1 rank, ZeRO-2, fp32 -> 2 ranks, ZeRO-2, fp32): " + UNIVERSAL_LINE in to_two.stderr
    )
    assert to_two.stderr.count("resume: topology changed") == 1  # said once, by rank 0
    assert _close(_weights(tmp_path / "1to2"), _weights(straight), atol=1e-6)

    # ranks and ZeRO family change at once: the weights come, the optimizer restarts, and the line says so
    to_z3 = _resume(two, tmp_path / "2to1z3", "--deepspeed.zero_stage", "3")
    warned = [line for line in to_z3.stderr.splitlines() if "WARNING" in line and "resume: topology" in line]
    assert len(warned) == 1 and warned[0].endswith(
        "resume: topology changed (2 ranks, ZeRO-2, fp32 -> 1 rank, ZeRO-3, fp32): DeepSpeed's universal checkpoint "
        f"cannot move optimizer state from ZeRO-2 to ZeRO-3, {REINIT}; weights, step, LR schedule and data position "
        "are restored; data position rescaled to micro-batch 4 (32 samples into the epoch); RNG streams restart"
    )
    assert _loss(tmp_path / "2to1z3", 5) == pytest.approx(_loss(straight, 5), rel=1e-5)  # same weights, same batch
    assert not _close(_weights(tmp_path / "2to1z3"), _weights(straight), atol=1e-4)  # the moments did restart


@pytest.mark.slow
def test_zero_stage_changes_load_what_deepspeed_can_and_say_what_restarts(straight, stopped, tmp_path):
    base = {2: stopped}  # the trivial YAML's ZeRO-2
    for stage in (0, 1, 3):
        base[stage] = tmp_path / f"z{stage}"
        run_cmd(
            trivial_cmd(base[stage], *STEPS, "--train.stop_after", "4", "--deepspeed.zero_stage", str(stage)),
            cwd=tmp_path,
        )
    out = _resume(base[1], tmp_path / "1to2", "--deepspeed.zero_stage", "2")
    assert "resume: topology changed (1 rank, ZeRO-1, fp32 -> 1 rank, ZeRO-2, fp32): " + UNIVERSAL_LINE in out.stderr
    assert _close(_weights(tmp_path / "1to2"), _weights(straight), atol=1e-6)  # ZeRO-1 and -2 are the same maths
    for a, b in ((2, 3), (3, 2), (0, 2), (2, 0), (3, 0)):
        run = tmp_path / f"{a}to{b}"
        out = _resume(base[a], run, "--deepspeed.zero_stage", str(b))
        warned = [line for line in out.stderr.splitlines() if "WARNING" in line and "resume: topology" in line]
        assert len(warned) == 1, out.stderr[-3000:]
        assert warned[0].endswith(
            f"resume: topology changed (1 rank, ZeRO-{a}, fp32 -> 1 rank, ZeRO-{b}, fp32): DeepSpeed's universal "
            f"checkpoint cannot move optimizer state from ZeRO-{a} to ZeRO-{b}, {REINIT}; weights, step, LR "
            "schedule and data position are restored"
        )
        assert f"resumed from {run}/checkpoints/step_00000004 (step 4)" in out.stderr
        # the loss continues where it was (step 5's forward pass sees the restored weights and the next batch)
        assert _loss(run, 5) == pytest.approx(_loss(straight, 5), rel=1e-5), (a, b)
        assert _lrs(run)[4:] == pytest.approx(_lrs(straight)[4:])


@pytest.mark.slow
def test_two_nodes_then_one_rank(straight, tmp_path):
    """Two launchers, one per "node" (``localhost`` and ``127.0.0.1``), then one plain process."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    ds, port, run = str(Path(sys.executable).parent / "deepspeed"), str(free_port()), tmp_path / "nodes"
    procs = []
    for node_rank in ("0", "1"):
        cmd = [ds, "--hostfile", str(hostfile), "--no_ssh", "--num_nodes", "2", "--num_gpus", "1"]
        cmd += ["--node_rank", node_rank, "--master_addr", "127.0.0.1", "--master_port", port, "--module"]
        cmd += ["distinctad.train.main", "trivial", TRIVIAL_YAML, "--tracking.enabled", "false", "--run.out_dir"]
        cmd += [str(run), *STEPS, "--train.micro_batch_size", "4", "--train.stop_after", "4"]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    out = _resume(run, tmp_path / "one")
    assert "resume: topology changed (2 ranks on 2 nodes, ZeRO-2, fp32 -> 1 rank, ZeRO-2, fp32): " in out.stderr
    assert _close(_weights(tmp_path / "one"), _weights(straight), atol=1e-6)


# ---------------------------------------------------------------- runs: config keys change


def _lrs(run: Path) -> list[float]:
    return [r["train/lr"] for r in metrics_rows(run) if "train/lr" in r]


@pytest.mark.slow
def test_two_ranks_new_lr_and_max_steps_are_in_force_and_tracked(tmp_path):
    """The issue's case: 4 steps at the YAML's lr 0.003, relaunched with --train.lr 0.01 --train.max_steps 8."""
    import mlflow

    run, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    run_cmd(trivial_cmd(run, "--train.max_steps", "4", "--train.log_every", "1", ranks=2), cwd=tmp_path)
    cmd = trivial_cmd(run, "--train.lr", "0.01", "--train.max_steps", "8", "--train.log_every", "1", ranks=2)
    cmd[cmd.index("--tracking.enabled") + 1] = "true"
    out = run_cmd([*cmd, "--tracking.uri", uri, "--tracking.experiment", "resume"], cwd=tmp_path)
    assert "Traceback" not in out.stderr
    assert "  train.max_steps: 4 -> 8 (in force)\n  train.lr: 0.003 -> 0.01 (in force)\n" in out.stderr
    assert out.stderr.count("config keys differ") == 1
    # the lr the steps used: the new peak on the new schedule, from step 5 on (logged after each step)
    assert _lrs(run)[4:] == pytest.approx([0.01 * warmup_cosine(s, 4, 8, 0.1) for s in range(5, 9)])
    assert "optimizer settings in force: lr 0.01 at step 4 (peak 0.01, warm-up 4, cosine to 0.1x at step 8)" in (
        out.stderr
    )
    mlflow.set_tracking_uri(uri)
    (tracked,) = mlflow.search_runs(experiment_names=["resume"], output_format="list")
    params = tracked.data.params
    assert (params["train.lr"], params["train.max_steps"], params["resume.step"]) == ("0.01", "8", "4")
    assert params["resume.mode"] == "exact"
    assert params["resume.changed_keys"].startswith("train.max_steps,train.lr,tracking.")  # tracking was off before
    assert (params["topology.zero_stage"], params["topology.precision"], params["world_size"]) == ("2", "fp32", "2")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, lr, warmup, total, floor",
    [
        (["--train.warmup_steps", "8", "--train.max_steps", "12"], 0.003, 8, 12, 0.1),
        (["--train.min_lr_ratio", "0.5", "--train.lr", "0.001"], 0.001, 4, 8, 0.5),
    ],
)
def test_schedule_keys_take_effect_at_the_resumed_step(stopped, tmp_path, args, lr, warmup, total, floor):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    out = run_cmd(trivial_cmd(run, *STEPS, *args), cwd=tmp_path)
    assert _lrs(run)[4:] == pytest.approx([lr * warmup_cosine(s, warmup, total, floor) for s in range(5, total + 1)])
    for key, value in zip(args[::2], args[1::2], strict=True):
        assert re.search(rf"  {re.escape(key[2:])}: \S+ -> {value}\S* \(in force\)", out.stderr), key


@pytest.mark.slow
def test_optimizer_keys_take_effect_and_other_base_config_is_chosen_by_resume_config(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    args = ["--train.betas", "[0.8, 0.99]", "--train.weight_decay", "0.1", "--train.grad_clip", "0.5"]
    out = run_cmd(trivial_cmd(run, *STEPS, *args), cwd=tmp_path)
    assert "betas (0.8, 0.99), weight decay [0.1, 0.0], grad clip 0.5" in out.stderr

    # run.resume_config=checkpoint: the checkpoint's config in place of the YAML file (its lr 0.003, not 0.02)
    other_yaml = tmp_path / "other.yaml"
    other_yaml.write_text(Path(TRIVIAL_YAML).read_text().replace("lr: 3.0e-3", "lr: 2.0e-2"))
    run = tmp_path / "ckpt-config"
    shutil.copytree(stopped, run)
    cmd = trivial_cmd(
        run, *STEPS, "--run.resume_config", "checkpoint", "--train.max_steps", "10", "--train.stop_after", "0"
    )
    cmd[cmd.index(TRIVIAL_YAML)] = str(other_yaml)
    out = run_cmd(cmd, cwd=tmp_path)
    assert _lrs(run)[4:] == pytest.approx([0.003 * warmup_cosine(s, 4, 10, 0.1) for s in range(5, 11)])
    assert "train.max_steps: 8 -> 10 (in force)" in out.stderr and "train.lr" not in out.stderr


@pytest.mark.slow
def test_architecture_change_is_refused_in_one_line_and_nothing_is_written(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    proc = run_failing(trivial_cmd(run, *STEPS, "--model.hidden", "32"), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot resume from {run}/checkpoints/step_00000004: the model's parameters differ from the "
        "checkpoint's (5 reshaped, e.g. net.0.weight [64, 16] -> [32, 16]); changed keys: model.hidden 64 -> 32. "
        "Restore those keys, or start a new run instead with --run.resume none or another --run.name"
    )
    assert (run / "checkpoints/latest").read_text().strip() == "step_00000004"
    assert [p.name for p in (run / "checkpoints").iterdir() if p.is_dir()] == ["step_00000004"]
    assert not (run / "checkpoints/step_00000004/universal").exists()


# ---------------------------------------------------------------- the README's order of commands


@pytest.mark.slow
def test_readme_order_deepspeed_stage2_then_two_ranks_resumes_and_finishes(tmp_path):
    """README: ``deepspeed launch/stage2.sh`` (one rank on CPU), then ``deepspeed --num_gpus 2 launch/stage2.sh``."""
    small = ["--tracking.enabled", "false", "--eval.enabled", "false", "--model.feature_dim", "64"]
    small += ["--data.synth_dir", str(tmp_path / "synth"), "--run.out_dir", str(tmp_path / "run")]
    small += ["--train.log_every", "1", "--train.ckpt_every", "4"]
    ds, script = str(Path(sys.executable).parent / "deepspeed"), str(REPO / "launch/stage2.sh")
    first = run_cmd([ds, "--master_port", str(free_port()), script, *small, "--train.max_steps", "4"], cwd=tmp_path)
    assert json.loads((tmp_path / "run/summary.json").read_text())["world_size"] == 1
    second = run_cmd(deepspeed_cmd(2, script, *small, "--train.max_steps", "8"), cwd=tmp_path)
    assert "Traceback" not in first.stderr + second.stderr
    assert (
        "resume: topology changed (1 rank, ZeRO-2, fp32 -> 2 ranks, ZeRO-2, fp32): " + UNIVERSAL_LINE
    ) in second.stderr
    summary_ = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary_["finished"] and summary_["step"] == 8 and summary_["world_size"] == 2
    losses = {r["step"]: r["train/loss"] for r in metrics_rows(tmp_path / "run") if "train/loss" in r}
    assert sorted(losses) == list(range(1, 9))
    assert abs(losses[5] - losses[4]) < 0.1 * losses[4]  # the loss continues near where it was


class Payload:
    """Unpickling this calls ``open(path, "w")``: the file appearing would prove that pickled code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_the_universal_conversion_reads_weights_only_too(stopped, tmp_path):
    """DeepSpeed's converter calls torch.load(weights_only=False); ours runs it under weights-only loads."""
    run, proof = tmp_path / "run", tmp_path / "pwned.txt"
    shutil.copytree(stopped, run)
    optim = run / "checkpoints/step_00000004/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": Payload(str(proof))}, optim)
    proc = run_failing(trivial_cmd(run, *STEPS, "--deepspeed.zero_stage", "1"), cwd=tmp_path)  # ZeRO-2 -> 1
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: refusing to load {optim}: not a plain weights file (Unsupported global: GLOBAL io.open); "
        "checkpoints load with torch.load(weights_only=True) and never run pickled code"
    )
    assert not proof.exists() and not (run / "checkpoints/step_00000004/universal").exists()
