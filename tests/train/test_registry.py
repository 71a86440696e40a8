"""The job registry, the Task protocol and ``--help``: one place knows every job, and its help is right and light."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from distinctad.common import REPO_ROOT
from distinctad.train.core.config import describe, field_docs
from distinctad.train.core.task import Task, scalar_stats
from distinctad.train.jobs import JOBS, get_job
from distinctad.train.main import main


def _keys(cfg, prefix=""):
    """(dotted key, default value) of every leaf field of a job config instance."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


@pytest.mark.parametrize("job", sorted(JOBS))
def test_help_lists_every_key_with_help_and_the_jobs_real_default(job, capsys):
    with pytest.raises(SystemExit) as e:
        main([job, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    lines = {line.split(" (", 1)[0].strip(): line for line in out.splitlines() if line.startswith("  --")}
    keys = dict(_keys(JOBS[job].config()))
    assert set(lines) == {f"--{k}" for k in keys}
    for key, default in keys.items():
        line = lines[f"--{key}"]
        assert f"default {default!r})" in line, line
        assert line.split("): ", 1)[1].strip(), f"--{key} has no help text"


def test_stage2_help_shows_the_tiny_captioner_not_the_class_defaults():
    """The job's model factory sets tiny-gpt2 / 64 / 4; the class defaults (gpt2 / 512 / 10) must not show."""
    text = "\n".join(describe(JOBS["stage2"].config))
    assert "--model.llm (str, default 'tiny-gpt2')" in text
    assert "--model.d_model (int, default 64)" in text
    assert "--model.num_latents (int, default 4)" in text


def test_help_imports_no_torch():
    """``distinctad-train JOB --help`` imports config modules only (the reason it is fast)."""
    code = (
        "import sys\nfrom distinctad.train.main import main\nfor job in ('trivial','stage1','stage2','recon'):\n"
        "    try:\n        main([job, '--help'])\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('torch', 'deepspeed', 'transformers', 'open_clip', 'mlflow') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("HEAVY []"), out[-300:]


def test_registry_specs_are_complete():
    for name, spec in JOBS.items():
        assert spec.name == name
        assert (REPO_ROOT / spec.default_yaml).is_file()
        assert callable(spec.task_builder())
        launcher = REPO_ROOT / "launch" / f"{name}.sh"
        assert launcher.is_file() and f'launch("{name}")' in launcher.read_text()
    with pytest.raises(KeyError, match="unknown job 'nope' \\(choose from trivial"):
        get_job("nope")


def test_field_docs_reads_the_string_below_each_field():
    @dataclasses.dataclass
    class Args:
        a: int = 1
        """The a."""
        b: str = "x"
        c: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
        """Spans
        two lines."""

    assert field_docs(Args) == {"a": "The a.", "b": "", "c": "Spans two lines."}


def test_task_hooks_have_no_op_defaults():
    class Minimal(Task):
        pass

    t = Minimal()
    assert (t.evaluate(None, None, 1), t.params(), t.skipped_samples(), t.sample_ids([1])) == ({}, {}, 0, None)
    assert t.export(None, 1) is None
    with pytest.raises(NotImplementedError):
        t.build_model()


def test_scalar_stats_keeps_every_scalar_the_model_returns():
    out = {
        "loss": torch.tensor(2.0),
        "lm_loss": torch.tensor(1.5),
        "alpha": torch.tensor([0.25]),
        "n": 3,
        "logits": torch.zeros(2, 5),
        "flag": True,
        "new_stat": 7.5,
    }
    assert scalar_stats(out) == {"lm_loss": 1.5, "alpha": 0.25, "n": 3.0, "new_stat": 7.5}
