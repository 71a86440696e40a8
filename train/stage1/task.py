"""The Stage-I job: CLIP-AD adaptation of the CLIP vision tower on (clip frames, AD) pairs (DESIGN §4).

``deepspeed launch/stage1.sh [CONFIG.yaml] [--section.key VALUE ...]`` runs :class:`Stage1Task` through the shared
loop (:func:`distinctad.train.core.loop.fit`): DeepSpeed ZeRO-1/2, checkpoint/resume, MLflow. What this module adds:

- **Data**: ``frames`` shards streamed by :func:`distinctad.data.wds_pipeline.get_wds_loader`, each frame through
  open_clip's train transform (RandomResizedCrop) or, with augmentation off and for evaluation, its eval transform.
  With no shards configured the embedded SynthMAD default is generated and sharded under ``data.synth_dir``.
- **Loss**: :class:`~distinctad.train.stage1.losses.Stage1Loss` (global video–AD InfoNCE + frame–word MIL-NCE,
  negatives gathered across ranks); both terms are logged separately.
- **Evaluation** (every ``train.eval_every`` steps and at the end): video→text and text→video R@1/5/10 over the
  whole held-out split (embeddings gathered from every rank, padding rows dropped); the same for the vanilla model
  (the CLIP as built, before any step) once, as the baseline; optionally on training clips; and on rank 0 the
  Fig. B.2 similarity PNG of one eval movie, logged to MLflow with its band means.
- **Export**: at the end, rank 0 writes the adapted model with :func:`save_clip` to ``<run dir>/clip_ad/``, the
  folder ``distinctad-extract --pretrained`` loads. Trainable weights come from DeepSpeed's fp32 master copy and
  frozen ones from the model as built, so a bf16 run exports full-precision weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distinctad.common import atomic_write_json
from distinctad.data.jpeg import TensorTransform, batch_frames, nvjpeg_works
from distinctad.data.kinds import escape_movie
from distinctad.data.paths import PathProblem, check_dir, check_output_dir, check_run_paths, check_shards, check_weights
from distinctad.data.shardlist import expand_shards
from distinctad.data.wds_pipeline import DataInfo, get_wds_loader
from distinctad.train.core import distributed as D
from distinctad.train.core.config import ConfigError
from distinctad.train.core.engine import use_pin_memory
from distinctad.train.core.loop import engine_dtype
from distinctad.train.core.task import Task
from distinctad.train.models.clip_ad import (
    CLIPAD,
    TINY_MODEL,
    WeightsNotFoundError,
    build_clip_ad,
    clip_transforms,
    pool_video,
    save_clip,
)
from distinctad.train.stage1.config import EXPORT_DIR, Stage1DataArgs, Stage1Job
from distinctad.train.stage1.fig_b2 import figure_embeddings, similarity_figure, video_embeddings
from distinctad.train.stage1.losses import Stage1Loss
from distinctad.train.stage1.retrieval import retrieval_metrics

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Data


def check_paths(cfg: Stage1Job) -> None:
    """Every path setting, before SynthMAD is built, a model loaded or tracking started.

    Raises:
        ConfigError: ``KEY: PATH: problem``, one line.
    """
    d, m = cfg.data, cfg.model
    try:
        check_run_paths(cfg)
        if d.train_shards:
            check_shards("data.train_shards", d.train_shards)
        else:
            check_output_dir("data.synth_dir", d.synth_dir)
        if d.eval_shards:
            check_shards("data.eval_shards", d.eval_shards)
        check_weights("model.pretrained", m.pretrained)
        if m.cache_dir:
            check_dir("model.cache_dir", m.cache_dir, "cache folder")
    except PathProblem as e:
        raise ConfigError(str(e)) from None


def resolve_shards(data: Stage1DataArgs) -> tuple[str, str]:
    """(train, eval) shard specs; generates the SynthMAD default on rank 0 when none are configured (collective)."""
    if data.train_shards:
        return data.train_shards, data.eval_shards
    dirs = None
    if D.is_master():
        from distinctad.data.synth_default import ensure_synthmad

        dirs = ensure_synthmad(
            data.synth_dir, kinds=("frames",), movies=data.synth_movies, ads_per_movie=data.synth_ads_per_movie
        )
    dirs = D.broadcast_object(dirs)
    return dirs["frames-train"], dirs["frames-eval"]


def _shard_movies(urls: list[str]) -> dict[str, list[str]] | None:
    """shard path -> movies it holds, from the ``manifest.json`` beside the shards (None without one)."""
    folder = os.path.dirname(urls[0])
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        return None
    records = {r["file"]: r.get("movies", []) for r in json.loads(Path(path).read_text()).get("shards", [])}
    return {u: records.get(os.path.basename(u), []) for u in urls}


def read_movie_clips(
    shards: str, preprocess, movie: str = "", max_clips: int = 32
) -> tuple[str, torch.Tensor, list[str], list[int]]:
    """The first ``max_clips`` clips (in AD order) of one movie of a frames shard set, read on this rank alone.

    Only the shards the manifest lists for the movie are read. Returns (movie, images (n, T, 3, H, W),
    sentences, ad_indices).
    """
    urls = expand_shards(shards)
    movies = _shard_movies(urls)
    if movies is not None:
        movie = movie or next((m for u in urls for m in movies[u]), "")
        urls = [u for u in urls if movie in movies[u]] or urls
    info = get_wds_loader(
        urls, "frames", 16, is_train=False, pad_eval=False, preprocess=preprocess, rank=0, world_size=1
    )
    found: dict[int, tuple[torch.Tensor, str]] = {}
    for batch in info.dataloader:
        for i, m in enumerate(batch["movie"]):
            movie = movie or m
            if m == movie:
                found[int(batch["ad_index"][i])] = (batch["images"][i], batch["sentence"][i])
    if len(found) < 2:
        raise ConfigError(f"eval.figure_movie: movie {movie!r} has {len(found)} clip(s) in {shards}; need 2")
    order = sorted(found)[:max_clips]
    return movie, torch.stack([found[i][0] for i in order]), [found[i][1] for i in order], order


# ---------------------------------------------------------------------------------------------------------------
# Task


class Stage1Task(Task):
    """The Stage-I :class:`~distinctad.train.core.task.Task`: frames shards in, CLIP-AD trained, retrieval out."""

    def __init__(self, cfg: Stage1Job):
        self.cfg = cfg
        self.run_dir = Path(cfg.run.out_dir)
        self.train_spec, self.eval_spec = resolve_shards(cfg.data)
        if not self.eval_spec:
            logger.warning("no data.eval_shards: retrieval and Fig. B.2 are skipped")
        self.loss_fn = Stage1Loss(cfg.loss, rank=D.get_rank(), world_size=D.get_world_size())
        self.vanilla: CLIPAD | None = None
        self.train_info: DataInfo | None = None
        self._eval_sets: dict[str, DataInfo] | None = None
        self._vanilla_metrics: dict[str, float] | None = None
        self._figure: dict[str, Any] | None = None

    def datasets(self) -> list[dict]:
        """The train and eval frames shards as MLflow datasets (source folder, manifest digest, counts)."""
        from distinctad.data.provenance import dataset_record

        pairs = ((self.train_spec, "training"), (self.eval_spec, "evaluation"))
        return [r for spec, ctx in pairs if spec and (r := dataset_record(spec, ctx)) is not None]

    # -- model ---------------------------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        if not m.pretrained and m.name != TINY_MODEL:
            logger.warning(
                "model.pretrained is empty: %s starts from random weights (only useful for tests and "
                "benchmarks; Stage-I adapts a pretrained CLIP)",
                m.name,
            )
        try:
            model = build_clip_ad(
                m.name,
                m.pretrained or None,
                trainable_vision_blocks=m.trainable_vision_blocks,
                skip_punctuation=m.skip_punctuation,
                grad_checkpointing=m.grad_checkpointing,
                cache_dir=m.cache_dir or None,
                image_size=m.image_size or None,
            )
        except (WeightsNotFoundError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
        # The model as built, before any step (and before a resumed checkpoint is loaded): the "vanilla CLIP" of
        # the baseline metrics and of Fig. B.2, and the source of the frozen weights at export (fp32, whatever the
        # engine's precision). It costs one more copy of the model in memory (~600 MB for ViT-B/32).
        # open_clip's logit_scale is 0-d: build_engine makes it (1,) for DeepSpeed (reshape_0d_parameters); the
        # vanilla copy keeps it 0-d, so export() writes it back in that shape.
        self.vanilla = copy.deepcopy(model).eval().requires_grad_(False)
        aug = {"scale": tuple(self.cfg.data.aug_scale)}
        self.train_tf, self.eval_tf = clip_transforms(model, aug)
        self._setup_jpeg_decode()
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        logger.info(
            "CLIP-AD %s: %.2fM of %.2fM parameters trainable (text tower frozen)", m.name, n_train / 1e6, n_all / 1e6
        )
        return model

    def _setup_jpeg_decode(self) -> None:
        """Resolve ``data.jpeg_decode``; with 'device', the tensor versions of the transforms (:mod:`data.jpeg`)."""
        mode = self.cfg.data.jpeg_decode
        why_not = None
        if mode != "workers":  # the nvJPEG probe (a CUDA decode at start-up) only where its answer matters
            cuda = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
            why_not = nvjpeg_works(cuda) if cuda is not None else "no CUDA device"
        if mode == "auto":
            mode = "workers" if why_not else "device"
        elif mode == "device" and why_not:
            logger.warning(
                "data.jpeg_decode=device: %s; frames are decoded with torchvision's CPU decoder in the rank's "
                "process (data.jpeg_decode=workers decodes them in the loader workers instead)",
                why_not,
            )
        self.jpeg_on_device = mode == "device"
        self.device_tf: dict[str, TensorTransform] = {}
        if self.jpeg_on_device:
            try:
                self.device_tf = {
                    "train": TensorTransform.from_compose(self.train_tf if self.cfg.data.augment else self.eval_tf),
                    "eval": TensorTransform.from_compose(self.eval_tf),
                }
            except ValueError as e:
                raise ConfigError(f"data.jpeg_decode=device: {e}; use data.jpeg_decode=workers") from None
        logger.info(
            "frames decoded %s",
            "on the rank's device (JPEG bytes from the loader)" if mode == "device" else "in the loader workers (PIL)",
        )

    def images(self, batch: dict, device, train: bool) -> torch.Tensor:
        """The batch's (B, T, 3, S, S) frames on ``device`` (decoded there with ``data.jpeg_decode=device``)."""
        return batch_frames(batch, device, self.device_tf.get("train" if train else "eval"))

    # -- training ------------------------------------------------------------------------------------------------

    def batches(self, epoch: int, skip: int) -> Iterator[dict]:
        if self.train_info is None:
            d = self.cfg.data
            self.train_info = get_wds_loader(
                self.train_spec,
                "frames",
                self.cfg.train.micro_batch_size,
                is_train=True,
                num_workers=d.num_workers,
                seed=self.cfg.run.seed,
                preprocess=self.train_tf if d.augment else self.eval_tf,
                jpeg_bytes=self.jpeg_on_device,
                pin_memory=use_pin_memory(self.cfg.train.host_memory),
            )
            logger.info(
                "training on %d clips/epoch: %d batches per rank",
                self.train_info.num_samples,
                self.train_info.num_batches,
            )
        self.train_info.set_epoch(epoch, skip)
        yield from self.train_info.dataloader

    def loss(self, engine, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        images = self.images(batch, engine.device, train=True).to(engine_dtype(engine))  # (B, T, 3, H, W)
        out = self.loss_fn(**engine(images, batch["sentence"]))
        return out["loss"], {
            "global_loss": out["global_loss"].item(),
            "mil_loss": out["mil_loss"].item(),
            "logit_scale": engine.module.logit_scale.item(),
        }

    def samples_in(self, batch: dict) -> int:
        return len(batch["sentence"])

    def skipped_samples(self) -> int:
        """Corrupt or unusable clips this rank's reader skipped (the loop sums them over ranks)."""
        return self.train_info.num_skipped if self.train_info is not None else 0

    # -- evaluation ----------------------------------------------------------------------------------------------

    def _eval_loaders(self) -> dict[str, DataInfo]:
        if self._eval_sets is None:
            bs = self.cfg.data.eval_batch_size or self.cfg.train.micro_batch_size

            def loader(shards) -> DataInfo:
                return get_wds_loader(
                    shards,
                    "frames",
                    bs,
                    is_train=False,
                    num_workers=self.cfg.data.num_workers,
                    preprocess=self.eval_tf,
                    jpeg_bytes=self.jpeg_on_device,
                )

            sets = {}
            if self.eval_spec:
                sets[""] = loader(self.eval_spec)
            k = self.cfg.eval.train_shards
            if k:
                urls = expand_shards(self.train_spec)
                sets["train_"] = loader(urls if k < 0 else urls[:k])
            self._eval_sets = sets
        return self._eval_sets

    def _autocast(self, engine):
        """Eval forwards of the fp32 vanilla copy and the (maybe bf16) engine module in the engine's precision."""
        dtype = engine_dtype(engine)
        return torch.autocast(engine.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def _embed(self, info: DataInfo, models: dict[str, CLIPAD], device) -> dict[str, Any]:
        """Pooled video embeddings of every model and AD text embeddings over one eval set, gathered from all ranks.

        Returns {"key": [N], "text": (N, E), <model name>: (N, E), "skipped": clips lost to corrupt data} on the
        CPU, rows sorted by key.
        """
        keys: list[str] = []
        outs: dict[str, list[torch.Tensor]] = {name: [] for name in [*models, "text"]}
        for batch in info.dataloader:
            valid = batch["valid"]
            if not valid.any():
                continue
            images = self.images(batch, device, train=False)[valid.to(device)]  # (b, T, 3, H, W)
            sentences = [s for s, v in zip(batch["sentence"], valid.tolist()) if v]
            keys += [k for k, v in zip(batch["key"], valid.tolist()) if v]
            for name, model in models.items():
                outs[name].append(pool_video(model.encode_video(images)).float().cpu())
            outs["text"].append(next(iter(models.values())).encode_text(sentences).float().cpu())
        local = (keys, {n: torch.cat(v) if v else None for n, v in outs.items()})
        gathered = D.all_gather_object(local)
        all_keys = [k for ks, _ in gathered for k in ks]
        order = sorted(range(len(all_keys)), key=all_keys.__getitem__)
        # Clips sizes.json promises that no rank could read (corrupt ones, the cut-off rest of a truncated shard).
        skipped = max(info.num_samples - len(all_keys), 0)
        result: dict[str, Any] = {"key": [all_keys[i] for i in order], "skipped": skipped}
        for name in outs:
            parts = [t[name] for _, t in gathered if t[name] is not None]
            result[name] = torch.cat(parts)[order] if parts else torch.empty(0)
        return result

    def evaluate(self, engine, tracker, step: int) -> dict[str, float]:
        """Retrieval on the held-out split (and optionally training clips), Fig. B.2, export at the end."""
        metrics: dict[str, float] = {}
        model: CLIPAD = engine.module
        want_vanilla = self.cfg.eval.vanilla_baseline and self._vanilla_metrics is None
        if self.vanilla is not None:
            self.vanilla.to(engine.device)
        with self._autocast(engine):
            for prefix, info in self._eval_loaders().items():
                models = {"adapted": model, **({"vanilla": self.vanilla} if want_vanilla else {})}
                emb = self._embed(info, models, engine.device)
                n = len(emb["key"])
                # Corrupt clips were skipped by the reader (as in training): counted, and the metrics marked partial.
                metrics[f"{prefix}skipped_samples"] = float(emb["skipped"])
                metrics[f"{prefix}partial"] = float(emb["skipped"] > 0)
                if emb["skipped"]:
                    logger.warning(
                        "eval set %r: %d corrupt or unreadable clip(s) skipped; retrieval is over the %d readable "
                        "ones (partial)",
                        prefix or "eval",
                        emb["skipped"],
                        n,
                    )
                if n < 2:
                    logger.warning("eval set %r has %d clip(s): no retrieval metrics", prefix or "eval", n)
                    continue
                metrics.update({f"{prefix}{k}": v for k, v in retrieval_metrics(emb["adapted"], emb["text"]).items()})
                metrics[f"{prefix}clips"] = float(n)
                metrics[f"{prefix}chance_R@1"] = 100.0 / n
                if want_vanilla:
                    van = retrieval_metrics(emb["vanilla"], emb["text"])
                    self._vanilla_metrics = {
                        **(self._vanilla_metrics or {}),
                        **{f"vanilla_{prefix}{k}": v for k, v in van.items()},
                    }
            metrics.update(self._vanilla_metrics or {})
            if self.cfg.eval.figure and self.eval_spec:
                metrics.update(self._fig_b2(engine, tracker, step))
        return metrics

    def _fig_b2(self, engine, tracker, step: int) -> dict[str, float]:
        """Rank 0 draws the figure; every rank returns its band means (so all summaries agree)."""
        stats: dict[str, float] = {}
        if D.is_master() and self._figure is None:
            e = self.cfg.eval
            try:
                movie, images, sentences, _ = read_movie_clips(
                    self.eval_spec, self.eval_tf, e.figure_movie, e.figure_clips
                )
                self._figure = {"movie": movie, "images": images, "sentences": sentences}
            except ConfigError as err:  # e.g. the movie's clips are in a corrupt shard: no figure, the run goes on
                logger.warning("Fig. B.2 skipped: %s", err)
                self._figure = {}
        if D.is_master() and self._figure:
            e = self.cfg.eval
            fig = self._figure
            if "vanilla" in fig:  # the vanilla model and the text tower never change: embedded once
                adapted = video_embeddings(engine.module, fig["images"])
            else:
                vanilla = self.vanilla if self.vanilla is not None else engine.module
                fig["vanilla"], adapted, fig["text"] = figure_embeddings(
                    vanilla, engine.module, fig["images"], fig["sentences"]
                )
            # The id escaped as in sample keys: a movie id may hold "/", dots, spaces or unicode.
            png = self.run_dir / "fig_b2" / f"{escape_movie(fig['movie'])}_step{step:08d}.png"
            out = similarity_figure(
                fig["vanilla"],
                adapted,
                fig["text"],
                png,
                band=e.figure_band,
                title=f"{fig['movie']}: {len(fig['images'])} consecutive clips, step {step}",
            )
            tracker.log_artifact(png, artifact_path="fig_b2")
            logger.info("Fig. B.2 written to %s", png)
            stats = {f"fig_{k}": v for k, v in out.items() if k.endswith("band_mean")}
        return D.broadcast_object(stats)

    # -- export --------------------------------------------------------------------------------------------------

    def export(self, engine, step: int) -> None:
        """Save the adapted model to ``<run dir>/clip_ad`` with :func:`save_clip` (collective; rank 0 writes).

        Skipped when ``model.export`` is off.
        Trainable parameters: DeepSpeed's fp32 master weights (``safe_get_full_fp32_param``, a collective under
        ZeRO-1/2); frozen ones: the model as built, so neither is rounded to bf16.
        """
        from deepspeed.utils import safe_get_full_fp32_param

        if not self.cfg.model.export:
            return
        trained = {}
        for name, p in engine.module.named_parameters():
            if p.requires_grad:
                full = safe_get_full_fp32_param(p)
                trained[name] = (full if full is not None else p).detach().float().cpu()
        if not D.is_master():
            return
        export = copy.deepcopy(self.vanilla if self.vanilla is not None else engine.module).float().cpu()
        state = export.state_dict()
        missing = set(trained) - set(state)
        if missing:
            raise RuntimeError(f"export: trained parameters not in the model: {sorted(missing)[:3]}")
        state.update({k: v.reshape(state[k].shape) for k, v in trained.items()})  # logit_scale back to 0-d
        export.load_state_dict(state)
        out_dir = self.run_dir / EXPORT_DIR
        weights = save_clip(export, out_dir, self.cfg.model.name)
        atomic_write_json(
            out_dir / "stage1_export.json",
            {
                "model": self.cfg.model.name,
                "pretrained": self.cfg.model.pretrained,
                "step": step,
                "run_dir": str(self.run_dir),
                "weights": weights.name,
            },
        )
        logger.info("exported CLIP-AD (step %d) to %s", step, out_dir)


def build_task(cfg: Stage1Job) -> Stage1Task:
    """The registry's task builder: checks the paths and what Stage-I cannot run under, then the task (collective)."""
    from distinctad.train.core.engine import build_ds_config

    check_paths(cfg)
    if cfg.train.micro_batch_size < 2 and D.get_world_size() < 2:
        raise ConfigError("train.micro_batch_size must be >= 2 on one rank: the contrastive loss needs negatives")
    if build_ds_config(cfg.deepspeed, cfg.train)["zero_optimization"]["stage"] == 3:
        # ZeRO-3 would partition the logit scale the loss reads every step; a ViT-B tower fits any GPU anyway.
        raise ConfigError("Stage-I runs under ZeRO 0, 1 or 2: set deepspeed.zero_stage to 1 or 2")
    return Stage1Task(cfg)
