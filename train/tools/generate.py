"""``distinctad-generate``: ADs for every clip of window shards from a Stage-II checkpoint, as predictions JSONL.

    distinctad-generate --ckpt runs/stage2-synthmad --shards work/synthmad/shards/window-eval --out preds.jsonl
    deepspeed --num_gpus 8 -m distinctad.train.tools.generate --ckpt ... --shards ... --out ...   (sharded over ranks)

The checkpoint's own ``config.yaml`` rebuilds the model; weights load through DeepSpeed (any ZeRO stage). Each
rank generates for its share of the windows; rank 0 merges and writes the JSONL the eval harness reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="distinctad-generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="A Stage-II run directory (its latest checkpoint is used) or one "
                   "checkpoint directory (runs/NAME/checkpoints/step_00000060).")
    p.add_argument("--shards", required=True, help="Window feature shards: a folder, glob or brace pattern.")
    p.add_argument("--out", required=True, help="Predictions JSONL to write (atomically).")
    p.add_argument("--num-beams", type=int, default=5, help="Beam width (paper: 5).")
    p.add_argument("--repetition-penalty", type=float, default=1.2, help="Repetition penalty (paper: 1.2).")
    p.add_argument("--no-repeat-ngram-size", type=int, default=3, help="Never repeat an n-gram of this size.")
    p.add_argument("--max-new-tokens", type=int, default=67, help="Longest AD in tokens (paper: 67).")
    p.add_argument("--batch-size", type=int, default=2, help="Windows per generation call and rank.")
    p.add_argument("--max-windows", type=int, default=0, help="Stop after this many windows per rank (0: all).")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p.parse_args(argv)


def find_checkpoint(path: str) -> tuple[Path, str]:
    """(checkpoint root, tag) from a run directory, a checkpoints folder or a tag folder."""
    from distinctad.train.core.checkpoint import latest_tag

    p = Path(path)
    for root in (p / "checkpoints", p):
        tag = latest_tag(root)
        if tag:
            return root, tag
    if (p / "config.yaml").is_file() and any(p.glob("*model_states.pt")):
        return p.parent, p.name
    raise SystemExit(f"error: no Stage-II checkpoint in {path} (expected a run directory or checkpoint folder)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from distinctad.common import atomic_write_text, init_logger
    from distinctad.train.core import checkpoint
    from distinctad.train.core import distributed as D
    from distinctad.train.core.config import ConfigError, load_config
    from distinctad.train.core.engine import build_engine
    from distinctad.train.models.captioner import DistinctADCaptioner
    from distinctad.train.models.llm import load_tokenizer
    from distinctad.train.stage2.config import GenerationArgs, Stage2Job
    from distinctad.train.stage2.task import predict

    root, tag = find_checkpoint(args.ckpt)
    try:
        cfg = load_config(Stage2Job, root / tag / "config.yaml")
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    tok_dir = cfg.model.tokenizer or cfg.model.llm
    if not Path(tok_dir).exists() and (root.parent / "tokenizer").is_dir():
        tok_dir = str(root.parent / "tokenizer")  # the run directory was moved
    from distinctad.data.wds_pipeline import expand_shards

    try:
        expand_shards(args.shards)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None

    _, rank, _ = D.init_distributed()
    init_logger(rank=rank)
    tokenizer = load_tokenizer(tok_dir)
    cfg.model.tokenizer = tok_dir
    engine, _ = build_engine(DistinctADCaptioner(cfg.model, tokenizer), cfg.train, cfg.deepspeed)
    checkpoint.load(engine, root, tag, load_optimizer=False)
    gen = GenerationArgs(num_beams=args.num_beams, repetition_penalty=args.repetition_penalty,
                         no_repeat_ngram_size=args.no_repeat_ngram_size, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size)
    engine.eval()
    preds = predict(engine.module, tokenizer, args.shards, gen, max_windows=args.max_windows,
                    zero3=engine.zero_optimization_stage() == 3)
    if D.is_master():
        preds.sort(key=lambda p: (p["movie"], p["ad_index"]))
        atomic_write_text(args.out, "".join(json.dumps(p) + "\n" for p in preds))
        logger.info("wrote %d predictions from %s/%s to %s", len(preds), root, tag, args.out)
    D.shutdown()


if __name__ == "__main__":
    main()
