"""Fixtures of the film-description tests: a SynthMAD film with spoken dialogue, a tiny Stage-II checkpoint, and one
described (and narrated) run of that film, all built once per session."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from distinctad.common import REPO_ROOT
from distinctad.train.models.captioner_config import GenerationArgs

espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (.ci/run installs it)"
)
FAST = dict(
    generation=GenerationArgs(num_beams=2, max_new_tokens=6, batch_size=1),
    window=3,
    clip_model="distinctad-tiny",
    progress=False,
)


@contextlib.contextmanager
def in_process_ranks():
    """Run DeepSpeed-loading code in this process, then remove the process group and the launcher variables it set."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        from distinctad.train.core import distributed as D

        D.shutdown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def film(tmp_path_factory) -> dict:
    """One SynthMAD movie with its dialogue soundtrack: paths, ADs and the spoken lines' true times."""
    pytest.importorskip("silero_vad")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (.ci/run installs it)")
    from distinctad.data.synthmad import write_synthmad

    root = tmp_path_factory.mktemp("film")
    write_synthmad(root, movies=2, ads_per_movie=10, seed=5, videos=True, features=False, video_size=32, audio=True)
    movie = "synth0001"
    anns = [a for a in json.loads((root / "annotations.json").read_text()).values() if a["movie"] == movie]
    return {
        "root": root,
        "path": root / "videos" / f"{movie}.mp4",
        "id": movie,
        "ads": sorted((a["timestamps"][0], a["timestamps"][1]) for a in anns),
        "dialogue": [(d["start"], d["end"]) for d in json.loads((root / "dialogue.json").read_text())[movie]],
        "annotations": root / "annotations.json",
    }


@pytest.fixture(scope="session")
def stage2_run(tmp_path_factory) -> Path:
    """A Stage-II run of 2 steps on 64-d SynthMAD features (tiny GPT-2, BPE trained on the fly), in this process."""
    from distinctad.train.main import run_job

    tmp = tmp_path_factory.mktemp("stage2")
    out = tmp / "run"
    with in_process_ranks():
        run_job(
            [
                "stage2",
                str(REPO_ROOT / "launch/configs/stage2.yaml"),
                "--model.feature_dim",
                "64",
                "--data.synth_movies",
                "2",
                "--data.synth_ads_per_movie",
                "12",
                "--data.synth_dir",
                str(tmp / "synth"),
                "--tracking.enabled",
                "false",
                "--run.out_dir",
                str(out),
                "--train.max_steps",
                "2",
                "--train.ckpt_every",
                "2",
                "--train.eval_every",
                "0",
                "--eval.enabled",
                "false",
            ]
        )
    return out


def run_describe(movie, stage2, out, **kw):
    from distinctad.train.tools.describe.pipeline import DescribeOptions, describe

    with in_process_ranks():
        return describe(DescribeOptions(movie=str(movie), stage2=str(stage2), out=str(out), **{**FAST, **kw}))


@pytest.fixture
def describe_film():
    """``run_describe`` (a fixture, so test modules need not import conftest)."""
    return run_describe


@pytest.fixture
def ranks():
    """``in_process_ranks`` (a fixture, so test modules need not import conftest)."""
    return in_process_ranks


@pytest.fixture(scope="session")
def described(film, stage2_run, tmp_path_factory) -> dict:
    """The film described and narrated into a folder: the pipeline's summary, plus ``out``."""
    out = tmp_path_factory.mktemp("described")
    result = run_describe(film["path"], stage2_run, out, narrate=True)
    return {**result, "out": out}
