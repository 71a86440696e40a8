"""``distinctad-generate``: ADs for every clip of window shards from a Stage-II checkpoint, as predictions JSONL.

    distinctad-generate --ckpt runs/stage2-synthmad --shards work/synthmad/shards/window-eval --out preds.jsonl
    deepspeed --num_gpus 8 -m distinctad.train.tools.generate --ckpt ... --shards ... --out ...   (sharded over ranks)

The checkpoint's own ``config.yaml`` rebuilds the model; weights load through DeepSpeed (any ZeRO stage). Each
rank generates for its share of the windows; rank 0 merges and writes the JSONL the eval harness reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.stage2.context import CONTEXT_MODES

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from distinctad.train.core.config import field_docs

    p = argparse.ArgumentParser(
        prog="distinctad-generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="A Stage-II run directory (its latest checkpoint is used) or one "
        "checkpoint directory (runs/NAME/checkpoints/step_00000060).",
    )
    p.add_argument("--shards", required=True, help="Window feature shards: a folder, glob or brace pattern.")
    p.add_argument("--out", required=True, help="Predictions JSONL to write (atomically).")
    # one flag per GenerationArgs field, with its default and its documentation
    defaults, docs = GenerationArgs(), field_docs(GenerationArgs)
    for f in dataclasses.fields(GenerationArgs):
        default = getattr(defaults, f.name)
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"{docs[f.name]} Default: %(default)s.",
        )
    p.add_argument(
        "--context",
        "--eval.context",
        dest="context",
        choices=CONTEXT_MODES,
        default="gt",
        help="Text context: gt (ground-truth previous ADs, as papers commonly report), predicted (the model's own "
        "previous ADs, autoregressive across windows), none. Default: %(default)s.",
    )
    p.add_argument("--max-windows", type=int, default=0, help="Stop after this many windows per rank (0: all).")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p.parse_args(argv)


def load_stage2_checkpoint(ckpt: str):
    """``(engine, tokenizer, cfg, root, tag)`` of a Stage-II run directory (its latest checkpoint) or checkpoint folder.

    The checkpoint's ``config.yaml`` rebuilds the model as the training run built it (same seed, so frozen weights a
    checkpoint left out come out the same) and DeepSpeed loads the weights (any ZeRO stage). A tokenizer folder
    beside the run is used when the recorded one has moved. Call ``init_distributed`` first.

    Raises:
        CheckpointError: no checkpoint under ``ckpt``.
        ConfigError: its ``config.yaml`` does not load.
    """
    from distinctad.train.core import checkpoint
    from distinctad.train.core.config import load_config
    from distinctad.train.core.engine import build_engine
    from distinctad.train.core.loop import seed_everything
    from distinctad.train.models.captioner import DistinctADCaptioner
    from distinctad.train.models.llm import load_tokenizer
    from distinctad.train.stage2.config import Stage2Job

    root, tag = checkpoint.find_checkpoint(ckpt)
    cfg = load_config(Stage2Job, root / tag / "config.yaml")
    tok_dir = cfg.model.tokenizer or cfg.model.llm
    if not Path(tok_dir).exists() and (root.parent / "tokenizer").is_dir():
        tok_dir = str(root.parent / "tokenizer")  # the run directory was moved
    tokenizer = load_tokenizer(tok_dir)
    cfg.model.tokenizer = tok_dir
    seed_everything(cfg.run.seed)
    engine, _ = build_engine(DistinctADCaptioner(cfg.model, tokenizer), cfg.train, cfg.deepspeed)
    checkpoint.load(engine, root, tag, load_optimizer=False)
    return engine, tokenizer, cfg, root, tag


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from distinctad.data.paths import PathProblem, check_dir, check_output_file, check_shards

    try:  # every path before any work: one line naming the flag and the path
        check_dir("--ckpt", args.ckpt, "run or checkpoint folder")
        check_shards("--shards", args.shards)
        check_output_file("--out", args.out)
    except PathProblem as e:
        raise SystemExit(f"error: {e}") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from distinctad.common import init_logger
    from distinctad.eval.outputs import write_predictions
    from distinctad.train.core import checkpoint
    from distinctad.train.core import distributed as D
    from distinctad.train.core.config import ConfigError
    from distinctad.train.stage2.task import predict

    _, rank, _ = D.init_distributed()
    init_logger(rank=rank)
    try:
        engine, tokenizer, cfg, root, tag = load_stage2_checkpoint(args.ckpt)
    except (checkpoint.CheckpointError, ConfigError) as e:
        raise SystemExit(f"error: {e}") from None
    gen = GenerationArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationArgs)})
    engine.eval()
    stats: dict[str, int] = {}
    preds = predict(
        engine.module,
        tokenizer,
        args.shards,
        gen,
        max_windows=args.max_windows,
        zero3=engine.zero_optimization_stage() == 3,
        stats=stats,
        context=args.context,
    )
    if D.is_master():
        write_predictions(args.out, preds)
        logger.info("wrote %d predictions from %s/%s to %s", len(preds), root, tag, args.out)
        if stats.get("skipped_samples"):
            logger.warning(
                "%d corrupt sample(s) of %s were skipped: their ADs have no prediction (distinctad-eval reports them "
                "as missing; --allow-missing scores the rest)",
                stats["skipped_samples"],
                args.shards,
            )
    D.shutdown()


if __name__ == "__main__":
    main()
