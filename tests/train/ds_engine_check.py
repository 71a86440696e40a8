"""Run under ``deepspeed --num_gpus 2``: ZeRO 1, 2 and 3 on the trivial model, one fixed batch.

Each rank writes ``<out>/rank{r}.json`` with, per stage, the loss curve and a checksum of the full (gathered)
parameters, which the test compares across ranks.
"""

import json
import sys

import deepspeed
import torch

from distinctad.train.core import distributed as D
from distinctad.train.core.engine import build_engine
from distinctad.train.core.params import DeepSpeedArgs, TrainArgs
from distinctad.train.trivial.config import TrivialModelArgs
from distinctad.train.trivial.task import MLP, make_data


def main(out: str) -> None:
    D.init_distributed()
    rank = D.get_rank()
    x, y = make_data(TrivialModelArgs(), seed=0)
    # A different fixed batch per rank: only correct gradient averaging keeps the replicas identical.
    xb, yb = x[rank * 16 : (rank + 1) * 16], y[rank * 16 : (rank + 1) * 16]
    results = {}
    for stage in (1, 2, 3):
        torch.manual_seed(0)
        model = MLP(16, 64)
        train = TrainArgs(max_steps=30, micro_batch_size=16, lr=1e-2, warmup_steps=0, grad_clip=1.0)
        engine, _ = build_engine(model, train, DeepSpeedArgs(zero_stage=stage))
        losses = []
        for _ in range(30):
            loss = torch.nn.functional.mse_loss(engine(xb), yb)
            engine.backward(loss)
            engine.step()
            losses.append(D.all_reduce_mean(loss.item()))
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=stage == 3):
            flat = torch.cat([p.detach().flatten().double() for p in params])
        results[stage] = {
            "losses": losses,
            "param_sum": float(flat.sum()),
            "param_l2": float(flat.norm()),
            "numel": flat.numel(),
            "first": flat[:8].tolist(),
        }
        del engine
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"world_size": D.get_world_size(), "stages": results}, f)
    D.shutdown()


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if not a.startswith("--local_rank")][0])
