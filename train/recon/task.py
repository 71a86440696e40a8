"""AD reconstruction (supplementary A, Table A.1): can a frozen LM rebuild an AD from its frozen CLIP text embedding?

    deepspeed launch/recon.sh [CONFIG.yaml] [--section.key VALUE ...]

The frozen CLIP text tower encodes an AD; either its pooled [CLS] (EOT) vector or the per-token outputs of all its
word tokens go through ONE learnable linear projector into the LM's embedding space; the frozen LM (GPT-2) then
reads ``[projected CLIP vector(s)][<BOS>]`` and is trained to continue with ``[AD][<EOS>]``
(:class:`~distinctad.train.recon.model.ReconModel`). Only the projector learns, so the scores measure how much of the
AD the CLIP text embedding still holds: in Table A.1 the [CLS] vector keeps far less of it than the word tokens
(our reading: what motivates Stage-I's fine-grained word loss).

Evaluation generates every eval AD back from its embedding, scores the reconstructions with the eval harness and
writes the Table A.1 row next to the paper's numbers (``eval/step_*_table_a1.md``, also an MLflow artifact;
:mod:`~distinctad.train.recon.evaluate`). ``python -m distinctad.train.recon.table --runs RUN_DIR ...`` puts the
rows of several runs into one table.

Without real weights (``model.clip_pretrained`` / ``model.llm`` empty or tiny), the CLIP tower is random and the
LM is a tiny GPT-2 pre-trained on the training ADs for ``model.pretrain_steps`` steps
(:func:`~distinctad.train.recon.lm.pretrain_lm`): a stand-in for pre-trained GPT-2. Both are saved into the run
directory on first use and loaded from there (:func:`resolve_models`), so a resumed run and a later generation use
the very same frozen weights.

The package, one concern per module: ``config`` (dataclasses, torch-free), ``data`` (the ADs), ``model`` (the
model, projector save/load), ``lm`` (the stand-in LM), ``evaluate`` (reconstruct and score), ``table`` (Table A.1
and its command), and this module (the job).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from distinctad.common import resolve_path
from distinctad.data.paths import PathProblem, check_dir, check_file, check_output_dir, check_run_paths, check_weights
from distinctad.train.core import distributed as D
from distinctad.train.core.config import ConfigError
from distinctad.train.core.engine import build_ds_config
from distinctad.train.core.task import Task
from distinctad.train.core.tracking import Tracker
from distinctad.train.models.clip_ad import TINY_MODEL, WeightsNotFoundError, create_clip, save_clip
from distinctad.train.models.llm import (
    TINY_LLMS,
    build_llm,
    load_tokenizer,
    resolve_local,
    save_llm,
    train_bpe_tokenizer,
)
from distinctad.train.recon.config import ReconJob
from distinctad.train.recon.data import ReconData, load_data
from distinctad.train.recon.evaluate import eval_loss, predict, score
from distinctad.train.recon.lm import pretrain_lm
from distinctad.train.recon.model import (
    ReconModel,
    build_recon_model,
    check_only_projector_trainable,
    collate,
    save_projector,
)
from distinctad.train.recon.table import describe_models

logger = logging.getLogger(__name__)


def check_paths(cfg: ReconJob) -> None:
    """Every path setting, before SynthMAD is built, an LM pre-trained or tracking started.

    Annotation files are looked up as :func:`~distinctad.train.recon.data.load_data` reads them (a relative path
    missing from the working directory is taken from the source checkout).

    Raises:
        ConfigError: ``KEY: PATH: problem``, one line.
    """
    d, m = cfg.data, cfg.model
    try:
        check_run_paths(cfg)
        for key, value in (
            ("data.train_annotations", d.train_annotations),
            ("data.eval_annotations", d.eval_annotations),
        ):
            if value and not resolve_path(value).is_file():
                check_file(key, value, "annotation file")  # names the path as given
        if not d.train_annotations:
            check_output_dir("data.synth_dir", d.synth_dir)
        check_weights("model.clip_pretrained", m.clip_pretrained)
        if m.clip_cache_dir:
            check_dir("model.clip_cache_dir", m.clip_cache_dir, "cache folder")
    except PathProblem as e:
        raise ConfigError(str(e)) from None
    for key, name in (("model.llm", m.llm), ("model.tokenizer", m.tokenizer)):
        if name and name not in TINY_LLMS:
            try:
                resolve_local(name, key)
            except FileNotFoundError as e:
                raise ConfigError(str(e)) from None


def resolve_models(cfg: ReconJob, train_texts: Sequence[str]) -> None:
    """Make every frozen part a local path (rank 0 creates what is missing; the others wait).

    - ``model.clip_pretrained`` empty: a random tower (seed ``run.seed``) is saved to <run dir>/clip.
    - ``model.llm`` tiny, or ``model.pretrain_steps`` > 0: the LM (with, for tiny-gpt2, a BPE tokenizer trained on
      the training ADs) is pre-trained on the training ADs and saved to <run dir>/lm.

    Both are reused when already there, so a resumed run freezes exactly the same weights.
    """
    m = cfg.model
    run_dir = Path(cfg.run.out_dir)
    clip_dir, lm_dir = run_dir / "clip", run_dir / "lm"
    make_lm = m.llm in TINY_LLMS or m.pretrain_steps > 0
    error = None
    if D.is_master():
        try:
            if not m.clip_pretrained and not (clip_dir / "open_clip_config.json").is_file():
                if m.clip_model != TINY_MODEL:
                    logger.warning(
                        "model.clip_pretrained is empty: %s gets random weights (Table A.1 needs the "
                        "pre-trained tower)",
                        m.clip_model,
                    )
                torch.manual_seed(cfg.run.seed)
                save_clip(create_clip(m.clip_model), clip_dir, m.clip_model)
                logger.info("random %s text tower saved to %s", m.clip_model, clip_dir)
            if make_lm and not (lm_dir / "config.json").is_file():
                if m.llm in TINY_LLMS and not m.tokenizer:
                    logger.info(
                        "training a %d-token BPE tokenizer on %d training ADs", m.tokenizer_vocab, len(train_texts)
                    )
                    tokenizer = train_bpe_tokenizer(train_texts, m.tokenizer_vocab, run_dir / "tokenizer")
                else:
                    tokenizer = load_tokenizer(m.tokenizer or m.llm)
                torch.manual_seed(cfg.run.seed)
                llm = build_llm(m.llm, tokenizer)
                if m.pretrain_steps:
                    losses = pretrain_lm(
                        train_texts,
                        tokenizer,
                        llm.to(D.device()),
                        steps=m.pretrain_steps,
                        batch_size=m.pretrain_batch_size,
                        block_size=m.pretrain_block_size,
                        lr=m.pretrain_lr,
                        repeat=m.pretrain_repeat,
                        seed=cfg.run.seed,
                    )
                    logger.info(
                        "LM pre-trained for %d steps on the training ADs: loss %.3f -> %.3f",
                        len(losses),
                        losses[0],
                        sum(losses[-10:]) / len(losses[-10:]),
                    )
                else:
                    logger.warning(
                        "model.llm=%s is random and model.pretrain_steps is 0: the frozen LM knows no language", m.llm
                    )
                save_llm(llm.cpu(), tokenizer, lm_dir)
        except (WeightsNotFoundError, FileNotFoundError, ValueError) as e:
            error = str(e).splitlines()[0]
    error = D.broadcast_object(error)
    if error:
        raise ConfigError(f"model: {error}")
    if not m.clip_pretrained:
        m.clip_pretrained = str(clip_dir.resolve())
    if make_lm:
        m.llm = m.tokenizer = str(lm_dir.resolve())


class ReconTask(Task):
    """The reconstruction experiment as a :class:`~distinctad.train.core.task.Task`."""

    def __init__(self, cfg: ReconJob, tokenizer, data: ReconData, models: str = ""):
        self.cfg = cfg
        self.models = models
        self.tokenizer = tokenizer
        self.data = data
        self.train_texts = [a.sentence.strip() for a in data.train]
        self.model: ReconModel | None = None
        self.n_trainable = 0

    def batches_per_epoch(self) -> int:
        """Micro-batches per rank per epoch (the same on every rank; the remainder is dropped)."""
        return len(self.train_texts) // D.get_world_size() // self.cfg.train.micro_batch_size

    def build_model(self) -> nn.Module:
        self.model = build_recon_model(self.cfg.model, self.tokenizer)
        self.n_trainable = check_only_projector_trainable(self.model)
        n_all = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "reconstruction model (%s): %d trainable parameters (the projector) of %d; CLIP text tower and LM frozen",
            self.cfg.model.projector_input,
            self.n_trainable,
            n_all,
        )
        return self.model

    def batches(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        mb, world, rank = self.cfg.train.micro_batch_size, D.get_world_size(), D.get_rank()
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1000 + epoch)
        mine = torch.randperm(len(self.train_texts), generator=g)[rank::world].tolist()
        for i in range(skip, self.batches_per_epoch()):
            texts = [self.train_texts[j] for j in mine[i * mb : (i + 1) * mb]]
            yield collate(texts, self.model, self.tokenizer, self.cfg.model.max_ad_tokens)

    def samples_in(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["text_ids"].shape[0])

    def loss(self, engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = engine(**{k: v.to(engine.device) for k, v in batch.items()})
        return out["loss"], {"prefix_len": float(out["prefix_len"])}

    def params(self) -> dict[str, int]:
        """Logged with the config at start-up: the projector is all that trains."""
        return {"trainable_params": self.n_trainable}

    def evaluate(self, engine, tracker: Tracker, step: int) -> dict[str, float]:
        model: ReconModel = engine.module
        loss = eval_loss(
            model, self.tokenizer, self.data.eval, self.cfg.eval.generation.batch_size, self.cfg.model.max_ad_tokens
        )
        preds = predict(model, self.tokenizer, self.data.eval, self.cfg.eval.generation)
        if not D.is_master():
            return {}
        run_dir = Path(self.cfg.run.out_dir)
        save_projector(model, run_dir / "projector", self.cfg.model)
        metrics = score(
            preds,
            self.data.eval,
            self.cfg,
            run_dir / "eval" / f"step_{step:08d}",
            tracker,
            len(self.train_texts),
            self.n_trainable,
            self.models,
            loss,
        )
        return {**metrics, "eval/loss": loss}


def build_task(cfg: ReconJob) -> ReconTask:
    """The registry's task builder (:mod:`distinctad.train.jobs`): data and frozen parts resolved, the step budget
    set from ``epochs`` (collective)."""
    check_paths(cfg)
    if build_ds_config(cfg.deepspeed, cfg.train)["zero_optimization"]["stage"] == 3:
        raise ConfigError("recon does not support ZeRO-3 (only the small projector trains; use zero_stage 0-2)")
    data = load_data(cfg)
    models = describe_models(cfg.model)
    resolve_models(cfg, [a.sentence.strip() for a in data.train])
    try:
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.llm)
    except FileNotFoundError as e:
        raise ConfigError(f"model: {e}") from None
    task = ReconTask(cfg, tokenizer, data, models)
    if task.batches_per_epoch() < 1:
        raise ConfigError(
            f"{len(data.train)} training ADs are too few for micro batch {cfg.train.micro_batch_size}"
            f" x world {D.get_world_size()}"
        )
    if cfg.epochs:
        steps_per_epoch = task.batches_per_epoch() // cfg.train.grad_accum
        if steps_per_epoch < 1:
            raise ConfigError("an epoch holds fewer micro-batches than train.grad_accum")
        cfg.train.max_steps = cfg.epochs * steps_per_epoch
        logger.info("%d epochs x %d steps = %d optimizer steps", cfg.epochs, steps_per_epoch, cfg.train.max_steps)
    return task


if __name__ == "__main__":  # the table command's former name, kept working: see distinctad.train.recon.table
    import sys

    from distinctad.train.recon.table import main

    main(sys.argv[1:])
