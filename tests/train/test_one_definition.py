"""Things defined once and read everywhere else: generation defaults, results columns, the 0-d parameter fix."""

from __future__ import annotations

import ast
import dataclasses

import torch
from torch import nn

from distinctad.testing import REPO
from distinctad.train.core.engine import reshape_0d_parameters
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.stage2.config import Stage2Job

DECODING = {f.name for f in dataclasses.fields(GenerationArgs)} - {"batch_size"}


def _train_sources():
    """Every module of train/ but the definition itself (recon's greedy values are a GenerationArgs too)."""
    for path in sorted((REPO / "train").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel != "train/models/captioner_config.py":
            yield rel, ast.parse(path.read_text())


def test_generation_defaults_are_written_down_once():
    """No other module of train/ gives a decoding setting a literal default (signature, field or flag)."""
    found = []
    for rel, tree in _train_sources():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                pairs = list(zip(a.args[len(a.args) - len(a.defaults) :], a.defaults)) + list(
                    zip(a.kwonlyargs, a.kw_defaults)
                )
                found += [
                    f"{rel}:{arg.lineno} {arg.arg}"
                    for arg, d in pairs
                    if arg.arg in DECODING and isinstance(d, ast.Constant)
                ]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.target.id in DECODING and node.value is not None:
                    found.append(f"{rel}:{node.lineno} {node.target.id}")
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                flag = str(node.args[0].value).lstrip("-").replace("-", "_")
                if flag in DECODING and any(
                    k.arg == "default" and isinstance(k.value, ast.Constant) for k in node.keywords
                ):
                    found.append(f"{rel}:{node.lineno} {node.args[0].value}")
    assert not found, f"decoding defaults defined outside GenerationArgs: {found}"


def test_generate_cli_and_quickstart_read_generation_args():
    from distinctad.train.tools import generate, quickstart

    args = generate.parse_args(["--ckpt", "c", "--shards", "s", "--out", "o"])
    assert (
        GenerationArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationArgs)})
        == GenerationArgs()
    )
    assert quickstart.parse_args([]).num_beams == GenerationArgs().num_beams
    assert Stage2Job().eval.generation == GenerationArgs()
    args = generate.parse_args(
        ["--ckpt", "c", "--shards", "s", "--out", "o", "--repetition-penalty", "1.5", "--no-repeat-ngram-size", "0"]
    )
    assert (args.repetition_penalty, args.no_repeat_ngram_size) == (1.5, 0)


def test_results_tables_share_their_columns():
    from distinctad.train.tools import ablate, quickstart
    from distinctad.train.tools.compare import column_label

    assert quickstart.COLUMNS is ablate.COLUMNS
    table = quickstart.results_table({"clipad-C3": {c: float(i) for i, c in enumerate(ablate.COLUMNS)}})
    labels = [column_label(c, "lexical") for c in ablate.COLUMNS]
    assert table.splitlines()[0].startswith("| features | config | seeds | " + " | ".join(labels) + " |")
    assert "R@5/16 (lexical)" in labels


def test_samples_and_predictions_are_written_by_the_eval_writer_only():
    """The samples-table header and the JSONL line format appear in eval/outputs.py, nowhere in train/."""
    for rel, _ in _train_sources():
        text = (REPO / rel).read_text()
        assert "| ground truth |" not in text, rel
        assert 'json.dumps(p) + "\\n"' not in text, rel


class _Scalars(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.5))
        self.frozen = nn.Parameter(torch.tensor(-1.0), requires_grad=False)
        self.weight = nn.Parameter(torch.ones(3))


def test_reshape_0d_parameters_keeps_object_value_and_grad_flag():
    model = _Scalars()
    scale = model.scale
    assert reshape_0d_parameters(model) == ["scale", "frozen"]
    assert model.scale is scale and model.scale.shape == (1,) and model.scale.item() == 2.5
    assert model.frozen.shape == (1,) and not model.frozen.requires_grad and model.scale.requires_grad
    assert model.weight.shape == (3,)
    assert reshape_0d_parameters(model) == []  # idempotent


def test_stage1_has_no_0d_fix_of_its_own():
    """open_clip's 0-d logit_scale goes through build_engine's reshape_0d_parameters like any other 0-d parameter."""
    from distinctad.train.models.clip_ad import TINY_MODEL, build_clip_ad

    model = build_clip_ad(TINY_MODEL)
    assert model.clip.logit_scale.dim() == 0
    assert "clip.logit_scale" in reshape_0d_parameters(model)
    text = (REPO / "train/stage1/task.py").read_text()
    assert "reshape(1)" not in text and "logit_scale_1d" not in text
