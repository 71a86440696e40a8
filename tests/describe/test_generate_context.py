"""``distinctad-generate --context`` and Stage-II's ``eval.context`` on a real (tiny) checkpoint and window shards."""

from __future__ import annotations

import json

import pytest


def test_generate_with_each_context_mode(stage2_run, tmp_path, ranks):
    from distinctad.train.tools.generate import main as generate

    shards = stage2_run.parent / "synth/shards/window-eval"
    preds = {}
    for mode in ("gt", "predicted", "none"):
        out = tmp_path / f"{mode}.jsonl"
        with ranks():
            generate(
                ["--ckpt", str(stage2_run), "--shards", str(shards), "--out", str(out), "--context", mode]
                + ["--num-beams", "1", "--max-new-tokens", "5"]
            )
        preds[mode] = [json.loads(line) for line in out.read_text().splitlines()]
    keys = {m: [(p["movie"], p["ad_index"]) for p in v] for m, v in preds.items()}
    assert keys["gt"] == keys["predicted"] == keys["none"] and len(keys["gt"]) == 12  # one AD per eval clip
    with pytest.raises(SystemExit):
        generate(["--ckpt", str(stage2_run), "--shards", str(shards), "--out", "x.jsonl", "--context", "oracle"])


def test_stage2_config_rejects_an_unknown_context(tmp_path):
    from distinctad.train.core.config import ConfigError
    from distinctad.train.stage2.config import Stage2Job
    from distinctad.train.stage2.task import check_paths

    cfg = Stage2Job()
    cfg.run.out_dir = str(tmp_path / "run")
    cfg.eval.context = "predicted"
    check_paths(cfg)
    cfg.eval.context = "oracle"
    with pytest.raises(ConfigError, match="eval.context: must be one of gt, predicted, none"):
        check_paths(cfg)
