"""The config system: YAML + overrides round-trip, and one-line errors that name the key or file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from distinctad.train.core.config import ConfigError, load_config, parse_overrides, save_config
from distinctad.train.core.params import TrainArgs
from distinctad.train.trivial.config import TrivialJob


@dataclass
class Inner:
    width: int = 8
    """w"""
    mode: Literal["a", "b"] = "a"
    """m"""
    ratio: float | None = None
    """r"""


@dataclass
class Outer:
    name: str = "x"
    """n"""
    tags: list[str] = field(default_factory=list)
    """t"""
    inner: Inner = field(default_factory=Inner)
    """A nested section."""


def test_yaml_and_overrides_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: base\ninner:\n  width: 16\n  mode: b\n")
    cfg = load_config(Outer, path, ["--inner.ratio", "1e-4", "--tags=[p, q]", "--name", "cli"])
    assert cfg == Outer(name="cli", tags=["p", "q"], inner=Inner(width=16, mode="b", ratio=1e-4))
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg
    # precedence: CLI > file > defaults
    assert load_config(Outer, path).name == "base"
    assert load_config(Outer).inner.width == 8


def test_job_config_from_launch_yaml_round_trips(tmp_path):
    from distinctad.testing import REPO

    cfg = load_config(
        TrivialJob, REPO / "launch/configs/trivial.yaml", ["--train.lr", "1e-4", "--deepspeed.zero_stage", "3"]
    )
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.deepspeed.zero_stage == 3
    assert cfg.run.out_dir == "runs/trivial"
    save_config(cfg, tmp_path / "r.yaml")
    assert load_config(TrivialJob, tmp_path / "r.yaml") == cfg


@pytest.mark.parametrize(
    "yaml_text, overrides, message",
    [
        ("inner:\n  widht: 3\n", [], "unknown config key 'inner.widht'"),
        ("", ["--inner.colour", "red"], "unknown config key 'inner.colour'"),
        ("inner:\n  width: wide\n", [], "inner.width: expected int, got 'wide'"),
        ("", ["--inner.mode", "c"], "inner.mode: expected one of ['a', 'b'], got 'c'"),
        ("inner: 3\n", [], "inner: expected a section"),
        ("- a\n- b\n", [], "must hold a mapping"),
        ("name: [unclosed\n", [], "is not valid YAML"),
        ("", ["--inner.width"], "override '--inner.width' has no value"),
        ("", ["stray"], "unexpected argument 'stray'"),
    ],
)
def test_errors_are_one_line_and_name_the_key(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(Outer, path, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_validation_in_post_init():
    with pytest.raises(ConfigError, match="train.micro_batch_size must be >= 1"):
        load_config(TrivialJob, None, ["--train.micro_batch_size", "0"])
    with pytest.raises(ConfigError, match="deepspeed.zero_stage"):
        load_config(TrivialJob, None, ["--deepspeed.zero_stage", "5"])


def test_bool_and_float_parsing():
    assert parse_overrides(["--a.b=true", "--c", "1e-4"]) == {"a.b": True, "c": "1e-4"}
    cfg = load_config(TrivialJob, None, ["--tracking.enabled", "false", "--train.lr", "3e-4"])
    assert cfg.tracking.enabled is False and cfg.train.lr == pytest.approx(3e-4)
    assert isinstance(TrainArgs().betas, list) and TrainArgs().betas is not TrainArgs().betas


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    from distinctad.train.main import main

    with pytest.raises(SystemExit) as e:
        main(["trivial", str(tmp_path / "missing.yaml")])
    assert str(e.value).startswith("error: config file not found") and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["trivial", "--train.nope", "1"])
    assert "unknown config key 'train.nope'" in str(e.value)


def test_every_shipped_config_loads_with_its_job():
    """A typo in a YAML under launch/configs is caught here, not after a cluster allocation."""
    from distinctad.testing import REPO
    from distinctad.train.jobs import JOBS

    files = sorted((REPO / "launch/configs").glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        job = next(j for j in JOBS if f.stem.startswith(j))
        cfg = load_config(JOBS[job].config, f)
        assert cfg.run.name, f


def test_partial_section_keeps_the_jobs_factory_defaults():
    """Setting one ``model.*`` key must not reset the others to the section class's defaults (gpt2, 512, 10)."""
    from distinctad.train.stage2.config import Stage2Job

    job = Stage2Job()
    cfg = load_config(Stage2Job, None, ["--model.feature_dim", "768"])
    assert cfg.model.feature_dim == 768
    assert (
        (cfg.model.llm, cfg.model.d_model, cfg.model.num_latents)
        == (job.model.llm, job.model.d_model, job.model.num_latents)
        == ("tiny-gpt2", 64, 4)
    )
    # a derived field (run.out_dir from run.name) is still derived, not frozen at the default's value
    assert load_config(Stage2Job, None, ["--run.name", "foo"]).run.out_dir == "runs/foo"
