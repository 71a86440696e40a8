"""Table A.1's direction with tiny stand-ins: the `words` projector reconstructs ADs better than `cls`.

Real MAD-Eval text: train on the ADs of 9 movies, reconstruct every AD of the 10th. The frozen parts are a random
`distinctad-recon-tiny` CLIP text tower (512 wide, 1 layer) and a tiny GPT-2 pre-trained for 1500 steps on the
training ADs with copy rows (``distinctad.train.recon.lm.pretrain_lm``), standing in for pre-trained GPT-2. That
pre-training takes about five minutes of one core, so it was done once and its result is loaded from
``tests/recon/assets/pretrained_lm`` (lm_asset.py beside this file: the recipe, the rebuild command, and the check,
run first, that this code still makes that LM). Both rows use the very same frozen parts and the same projector
recipe; only what the projector sees differs. Scores come from the eval harness.

The loop is a plain PyTorch one, on one thread, over cached CLIP outputs (the tower is frozen, so they never change,
and both rows share them): the job itself (DeepSpeed, checkpoints, MLflow) is covered by test_recon_job.py, and
recomputing the tower every step would make this test several minutes longer. Shorter pre-training recipes were
tried and lost an assertion (400-800 steps with 2-4 projector epochs: `words` lost its lead, or a loss fell < 10%;
500 steps at lr 1e-2 ended at loss 4.2 instead of 2.4, and both rows' BLEU-1 fell to ~1).
"""

from __future__ import annotations

import pytest
import torch

from distinctad.eval import evaluate
from distinctad.train.core.engine import warmup_cosine
from distinctad.train.models.clip_ad import build_clip_ad, text_token_outputs
from distinctad.train.recon import model as recon_model
from distinctad.train.recon.model import ReconModel, collate

from .lm_asset import SEED, load_asset, madeval_split

pytestmark = pytest.mark.slow
CLIP_MODEL = "distinctad-recon-tiny"
EPOCHS, BATCH, LR = 4, 32, 3e-2
NEW_TOKENS = 40


class CachedTower:
    """Memoises the frozen CLIP text tower's outputs per AD (keyed by its CLIP token row), for both rows.

    Stands in for :func:`~distinctad.train.models.clip_ad.text_token_outputs` inside the recon model, so the real
    ``clip_features`` still picks the pooled vector (``cls``) or the word tokens (``words``) from it. Both rows build
    the very same tower (same seed, checked in the fixture), so each AD goes through it once, not once per row.
    Positions after an AD's EOT are stored as zeros: no row reads them (``words`` masks them out).
    """

    def __init__(self):
        self.cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, clip, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [tuple(row.tolist()) for row in tokens]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            per_token, pooled = text_token_outputs(clip, tokens[missing])  # (M, ctx, E), (M, E)
            for j, i in enumerate(missing):
                n = int((tokens[i] != 0).sum())  # SOT .. EOT; open_clip pads with 0
                self.cache[keys[i]] = (per_token[j, :n].clone(), pooled[j])
        per_token = torch.zeros(*tokens.shape, self.cache[keys[0]][1].shape[-1])  # (B, ctx, E)
        for i, k in enumerate(keys):
            per_token[i, : len(self.cache[k][0])] = self.cache[k][0]
        return per_token, torch.stack([self.cache[k][1] for k in keys])  # (B, ctx, E), (B, E)


def train_projector(model: ReconModel, tokenizer, texts: list[str]) -> list[float]:
    """The projector alone, AdamW, EPOCHS passes, warm-up then cosine; returns the step losses."""
    steps = EPOCHS * (len(texts) // BATCH)
    opt = torch.optim.AdamW(model.projector.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 20, steps, 0.1))
    g = torch.Generator().manual_seed(SEED)
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(steps):
        if len(order) < BATCH:
            order += torch.randperm(len(texts), generator=g).tolist()
        batch = collate([texts[j] for j in order[:BATCH]], model, tokenizer)
        order = order[BATCH:]
        loss = model(**batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread gains nothing, and on a busy machine it costs
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(recon_model, "text_token_outputs", CachedTower())
            return build_rows(tmp_path_factory.mktemp("tok"))
    finally:
        torch.set_num_threads(threads)


def build_rows(tok_dir) -> dict[str, dict]:
    train, evals = madeval_split()
    tokenizer, lm = load_asset(tok_dir)  # checked first: the tokenizer and the start of pre-training as recorded
    frozen_lm = {k: v.clone() for k, v in lm.state_dict().items()}
    out, towers = {}, []
    for mode in ("cls", "words"):
        torch.manual_seed(SEED)  # the same random CLIP tower and the same projector init for both rows
        clip = build_clip_ad(CLIP_MODEL, skip_punctuation=False)
        lm.load_state_dict(frozen_lm)
        model = ReconModel(clip, lm, tokenizer, mode)
        towers.append(model.clip.state_dict())
        losses = train_projector(model, tokenizer, train)
        texts = []
        for i in range(0, len(evals), 64):
            texts += model.reconstruct(
                [a.sentence for a in evals[i : i + 64]], tokenizer, max_new_tokens=NEW_TOKENS, no_repeat_ngram_size=3
            )
        preds = [{"movie": a.movie, "ad_index": a.ad_index, "text": t} for a, t in zip(evals, texts, strict=True)]
        metrics = evaluate(preds, evals, metrics=("bleu", "cider"), recall_k=None, progress=False)
        out[mode] = {"losses": losses, "metrics": metrics, "texts": texts}
        print(
            f"{mode}: {len(evals)} eval ADs, projector loss {losses[0]:.2f} -> {sum(losses[-50:]) / 50:.2f}, "
            f"BLEU-1 {metrics['BLEU-1']:.1f}, BLEU-4 {metrics['BLEU-4']:.1f}, CIDEr {metrics['CIDEr']:.1f}"
        )
    assert all(torch.equal(a, b) for a, b in zip(towers[0].values(), towers[1].values(), strict=True))  # CachedTower
    return out


def test_words_projector_reconstructs_better_than_cls(rows):
    cls, words = rows["cls"]["metrics"], rows["words"]["metrics"]
    assert words["BLEU-1"] > cls["BLEU-1"], (words, cls)
    assert words["CIDEr"] > cls["CIDEr"], (words, cls)


def test_both_projectors_learned(rows):
    for mode, row in rows.items():
        first, last = sum(row["losses"][:20]) / 20, sum(row["losses"][-50:]) / 50
        assert last < 0.9 * first, (mode, first, last)
        assert all(t.strip() for t in row["texts"]), mode
    words_loss = sum(rows["words"]["losses"][-50:]) / 50
    cls_loss = sum(rows["cls"]["losses"][-50:]) / 50
    assert words_loss < cls_loss  # the word tokens carry more of the AD than the pooled vector
