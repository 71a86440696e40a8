"""Run under ``deepspeed --num_gpus 2`` (two gloo CPU ranks): the streaming reader across ranks.

Usage: ``ds_reader_check.py SHARD_DIR OUT_DIR``. Each rank writes ``OUT_DIR/rank{r}.json`` with the keys it saw in
eval mode (valid entries only), its batch counts in eval and train mode, and the skipped-sample counter.
"""

import argparse
import json

import torch.distributed as dist

from distinctad.data.wds_pipeline import get_wds_loader


def main(shards: str, out: str) -> None:
    from distinctad.train.core.distributed import init_distributed

    init_distributed()  # gloo on CPU, without DeepSpeed's leaking shared-memory buffers
    rank = dist.get_rank()
    result = {"rank": rank, "world": dist.get_world_size()}

    ev = get_wds_loader(shards, "window", 3, is_train=False, num_workers=2)
    keys, batches = [], 0
    for batch in ev.dataloader:
        batches += 1
        keys += [k for k, v in zip(batch["key"], batch["valid"].tolist()) if v]
        assert all(k == "" for k, v in zip(batch["key"], batch["valid"].tolist()) if not v)
    result.update(eval_keys=keys, eval_batches=batches, eval_num_batches=ev.num_batches, eval_skipped=ev.num_skipped)

    tr = get_wds_loader(shards, "window", 2, is_train=True, num_workers=2, seed=7)
    counts = []
    for epoch in range(2):
        tr.set_epoch(epoch)
        counts.append(sum(1 for _ in tr.dataloader))
    result.update(train_batches=counts, train_num_batches=tr.num_batches, train_skipped=tr.num_skipped)
    dist.barrier()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards", help="Window shard folder.")
    parser.add_argument("out", help="Folder for the per-rank JSON results.")
    args, _ = parser.parse_known_args()  # deepspeed adds --local_rank=N
    main(args.shards, args.out)
