"""Resuming a run: what the checkpoint restores, which config is in force, and loading across a change of topology.

**Config: one rule for every key.** The checkpoint restores *state* (weights, optimizer moments, step, epoch, data
position, RNG); the config in force is this launch's, for every key. The LR schedule is rebuilt from ``train.*`` at
the step the saved schedule had reached, and betas, weight decay and clipping are this launch's too
(:func:`~distinctad.train.core.engine.apply_optimizer_settings`), so the tracked params are what the run uses. The
keys that differ from the checkpoint's ``config.yaml`` are listed at start-up with the value in force. One change
cannot be followed: parameters whose names, shapes or trainable set differ (an architecture key such as
``model.hidden``) are refused with one line naming them. ``run.resume_config: checkpoint`` chooses the other base:
the checkpoint's ``config.yaml`` takes the place of the YAML file, and this launch's command-line keys (and its
``run``/``tracking`` sections) apply on top (:func:`checkpoint_config`).

**Topology: decided up front, the same on every rank.** Every checkpoint records its topology (ranks, nodes, ZeRO
stage, precision, micro-batch size) in its client state (older ones: DeepSpeed's own ``dp_world_size`` and
``ds_config``). Rank 0 reads it before the engine is built and :func:`plan` picks one of:

- ``exact``: same ranks, ZeRO stage and precision, or ZeRO-0 fp32 on another number of ranks (its optimizer state is
  not partitioned): DeepSpeed loads everything.
- ``universal``: ZeRO-1/2 -> ZeRO-1/2 or ZeRO-3 -> ZeRO-3 with other ranks or precision. Rank 0 converts the
  checkpoint once with DeepSpeed's ``ds_to_universal`` into ``<tag>/universal``, and the engine loads it with
  ``checkpoint.load_universal``: weights and optimizer state carry over. (DeepSpeed's universal load brings the
  trainable parameters only; buffers such as Stage-II's EMA centres and frozen parameters are loaded into the model
  from the checkpoint's model states before ``deepspeed.initialize``.)
- ``weights``: every other change (ZeRO-0 <-> ZeRO-1/2/3, ZeRO-1/2 <-> ZeRO-3, a precision change at ZeRO-0, a
  16-bit ZeRO-0 run on other ranks), and a universal conversion that fails: the fp32 weights and buffers are loaded
  into the model before ``deepspeed.initialize`` and the optimizer starts afresh, said in one warning line.

Step, epoch, schedule position and the data position carry over in every mode; the data position is rescaled to
the same number of samples when ranks or micro-batch size change, and the RNG streams restart when the number of
ranks does. The number of nodes matters only through the number of ranks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from distinctad.train.core import checkpoint
from distinctad.train.core import distributed as D
from distinctad.train.core.checkpoint import UNIVERSAL, CheckpointError
from distinctad.train.core.config import (
    ConfigError,
    _set_dotted,
    flatten,
    from_dict,
    load_yaml,
    parse_overrides,
    to_dict,
)
from distinctad.train.core.engine import precision_of, reshape_0d_parameters

logger = logging.getLogger(__name__)

EXACT, UNIVERSAL_MODE, WEIGHTS = "exact", "universal", "weights"
ABSENT = "(absent)"
NEW_RUN = "start a new run instead with --run.resume none or another --run.name"


@dataclasses.dataclass(frozen=True)
class Topology:
    """How a run is laid out; recorded in every checkpoint's client state as ``topology``."""

    world_size: int
    zero_stage: int
    precision: str
    nodes: int = 1
    micro_batch_size: int = 0
    """The data position (``micro_in_epoch``) counts micro-batches of this size on each rank; 0: unknown."""

    def __str__(self) -> str:
        ranks = f"{self.world_size} rank{'s' if self.world_size != 1 else ''}"
        if self.nodes > 1:
            ranks += f" on {self.nodes} nodes"
        return f"{ranks}, ZeRO-{self.zero_stage}, {self.precision}"

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def layout(self) -> tuple[int, int, str]:
        """What DeepSpeed's checkpoint layout depends on: ranks, ZeRO stage, precision (not nodes)."""
        return self.world_size, self.zero_stage, self.precision

    @classmethod
    def of_launch(cls, ds_cfg: dict[str, Any], micro_batch_size: int) -> Topology:
        """This launch's topology, from the ds_config it builds its engine with."""
        return cls(
            world_size=D.get_world_size(),
            zero_stage=int(ds_cfg["zero_optimization"]["stage"]),
            precision=precision_of(ds_cfg),
            nodes=int(os.environ.get("CROSS_SIZE") or 1),  # set by the deepspeed launcher
            micro_batch_size=micro_batch_size,
        )

    @classmethod
    def of_checkpoint(cls, state: dict[str, Any]) -> Topology:
        """A checkpoint's topology: our record, or (checkpoints written before it existed) DeepSpeed's own fields."""
        rec = state.get("topology")
        if isinstance(rec, dict):
            return cls(**{f.name: rec[f.name] for f in dataclasses.fields(cls) if f.name in rec})
        ds_cfg = state.get("ds_config") or {}
        return cls(
            world_size=int(state.get("dp_world_size") or 1),
            zero_stage=int(ds_cfg.get("zero_optimization", {}).get("stage", 0)),
            precision=precision_of(ds_cfg),
            micro_batch_size=int(ds_cfg.get("train_micro_batch_size_per_gpu") or 0),
        )


@dataclasses.dataclass(frozen=True)
class Plan:
    mode: str
    """``exact``, ``universal`` or ``weights`` (module docstring)."""
    why: str = ""
    """For ``weights``: why the optimizer state cannot come along (one clause)."""


def _family(stage: int) -> str:
    """DeepSpeed lays optimizer state out one way for ZeRO-0, one for ZeRO-1/2, one for ZeRO-3."""
    return "0" if stage == 0 else "1/2" if stage in (1, 2) else "3"


def plan(saved: Topology, now: Topology) -> Plan:
    """How a checkpoint written on ``saved`` loads on ``now`` (pure: every rank computes the same)."""
    if saved.layout() == now.layout():
        return Plan(EXACT)
    before, after = _family(saved.zero_stage), _family(now.zero_stage)
    if before == after == "0":
        if saved.precision == now.precision == "fp32":
            return Plan(EXACT)  # only the ranks changed; ZeRO-0 fp32 keeps the whole optimizer state on every rank
        if saved.precision != now.precision:
            why = f"DeepSpeed keeps ZeRO-0 optimizer state differently in {saved.precision} and {now.precision}"
        else:
            why = f"DeepSpeed has no conversion of {now.precision} ZeRO-0 optimizer state to another number of ranks"
        return Plan(WEIGHTS, why)
    if before == after:
        return Plan(UNIVERSAL_MODE)
    return Plan(
        WEIGHTS,
        f"DeepSpeed's universal checkpoint cannot move optimizer state from ZeRO-{saved.zero_stage} to "
        f"ZeRO-{now.zero_stage}",
    )


# ---------------------------------------------------------------- reading a checkpoint up front


def model_states_file(folder: Path) -> Path:
    """The file holding a checkpoint's client state: ``mp_rank_00_model_states.pt`` (ZeRO 0-2) or rank 0's
    ``zero_pp_rank_0_mp_rank_00_model_states.pt`` (ZeRO-3)."""
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"checkpoint {folder} has no model states file (mp_rank_00_model_states.pt)")


def _saved_shapes(state: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], list[str] | None]:
    """(every saved tensor's shape, the trainable parameters' names or None when the checkpoint does not say)."""
    shapes = {k: tuple(v.shape) for k, v in (state.get("module") or {}).items() if hasattr(v, "shape")}
    trainable = None
    if state.get("param_shapes"):  # ZeRO 1-3: the true shapes (ZeRO-3 saves empty placeholders as the module)
        trainable = [name for group in state["param_shapes"] for name in group]
        shapes.update({name: tuple(s) for group in state["param_shapes"] for name, s in group.items()})
    shapes.update({name: tuple(s) for name, s in (state.get("frozen_param_shapes") or {}).items()})
    # a checkpoint without its frozen parameters records their shapes itself (checkpoint.frozen_record)
    shapes.update({name: tuple(s) for name, s in (state.get(checkpoint.FROZEN) or {}).get("shapes", {}).items()})
    return shapes, trainable


def read_checkpoint(root: Path, tag: str) -> dict[str, Any]:
    """Collective: rank 0 reads a checkpoint's client state, tensor shapes and ``config.yaml``; every rank gets the
    same copy, so every rank takes the same decisions (or raises the same :class:`CheckpointError`)."""
    meta, error = None, None
    if D.is_master():
        try:
            state = checkpoint.safe_load(model_states_file(root / tag), map_location="cpu", mmap=True)
            shapes, trainable = _saved_shapes(state)
            skip = {"module", "optimizer", "param_shapes", "frozen_param_shapes", "frozen_param_fragments"}
            meta = {k: v for k, v in state.items() if k not in skip and k not in ("shared_params", "buffer_names")}
            meta.update(shapes=shapes, trainable=trainable, topology=Topology.of_checkpoint(state))
            cfg_file = root / tag / "config.yaml"
            meta["config"] = load_yaml(cfg_file) if cfg_file.is_file() else None
        except (CheckpointError, ConfigError) as e:
            error = str(e)
    meta, error = D.broadcast_object((meta, error))
    if error:
        raise CheckpointError(error)
    return meta


# ---------------------------------------------------------------- config


def config_changes(saved: dict[str, Any] | None, cfg: Any) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint's value, value in force)`` for every key that differs from the checkpoint's config."""
    if saved is None:
        return []
    old, new = flatten(saved), flatten(to_dict(cfg))
    keys = [*new, *(k for k in old if k not in new)]
    return [(k, old.get(k, ABSENT), new.get(k, ABSENT)) for k in keys if old.get(k, ABSENT) != new.get(k, ABSENT)]


def describe_changes(changes: list[tuple[str, Any, Any]], where: Path, mode: str) -> str:
    n = f"{len(changes)} config keys differ" if len(changes) != 1 else "1 config key differs"
    head = f"resume: {n} from {where}; the value in force is this launch's (run.resume_config={mode}):"
    return "\n".join([head, *(f"  {k}: {_show(old)} -> {_show(new)} (in force)" for k, old, new in changes)])


def _show(value: Any) -> str:
    return ABSENT if value is ABSENT else repr(value)


def checkpoint_config(cls: type, cfg: Any, overrides: list[str]) -> Any:
    """``run.resume_config: checkpoint``: the checkpoint's ``config.yaml`` in place of the YAML file, with this
    launch's ``run`` and ``tracking`` sections and command-line ``overrides`` on top. Without a checkpoint to resume
    (or without its config.yaml) ``cfg`` is returned unchanged.

    Raises:
        ConfigError: a ``preset`` key on the command line (the checkpoint's config sets every key it would fill in,
            so it could not take effect); or the merged config is invalid.
    """
    found = checkpoint.find_resume(cfg.run.resume, Path(cfg.run.out_dir) / "checkpoints")
    if found is None or not (found[0] / found[1] / "config.yaml").is_file():
        return cfg
    given = parse_overrides(overrides)
    presets = [k for k in given if k == "preset" or k.endswith(".preset")]
    if presets:
        raise ConfigError(
            f"--{presets[0]} cannot apply with run.resume_config=checkpoint (the checkpoint's config sets every key "
            "a preset fills in); give the keys themselves, or use run.resume_config=new"
        )
    data = load_yaml(found[0] / found[1] / "config.yaml")
    data.update(run=to_dict(cfg.run), tracking=to_dict(cfg.tracking))
    for key, value in given.items():
        _set_dotted(data, key, value)
    return from_dict(cls, data)


# ---------------------------------------------------------------- architecture


def check_model(model: torch.nn.Module, meta: dict[str, Any], changes: list[tuple[str, Any, Any]], where: Path):
    """Refuse (one line) a model whose parameters differ from the checkpoint's in names, shapes or trainable set."""
    now = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    now.update({k: (1,) for k, p in params.items() if p.dim() == 0})  # saved after reshape_0d_parameters
    saved: dict[str, tuple[int, ...]] = meta["shapes"]
    problems = []
    missing, new = [k for k in saved if k not in now], [k for k in now if k not in saved]
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if new:
        problems.append(f"{len(new)} new, e.g. {new[0]}")
    reshaped = [k for k in saved if k in now and saved[k] != now[k]]
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} reshaped, e.g. {k} {list(saved[k])} -> {list(now[k])}")
    if meta["trainable"] is not None and not missing and not new:
        was, now_trainable = set(meta["trainable"]), {k for k, p in params.items() if p.requires_grad}
        if was != now_trainable:
            moved = sorted(was ^ now_trainable)
            problems.append(f"{len(moved)} changed between trainable and frozen, e.g. {moved[0]}")
    if not problems:
        return
    keys = [c for c in changes if c[0].startswith("model.")] or changes
    hint = "; changed keys: " + ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in keys[:4]) if keys else ""
    raise CheckpointError(
        f"cannot resume from {where}: the model's parameters differ from the checkpoint's ({'; '.join(problems)})"
        f"{hint}. Restore those keys, or {NEW_RUN}"
    )


# ---------------------------------------------------------------- loading across topologies


@contextlib.contextmanager
def _quiet():
    """DeepSpeed's conversion tools print progress bars; keep them out of the job's log."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield sink


def to_universal(root: Path, tag: str) -> Path:
    """Convert ``<root>/<tag>`` to DeepSpeed's universal format in ``<root>/<tag>/universal`` (once; rank 0 only).

    Reads go through :func:`~distinctad.train.core.checkpoint.weights_only_loads`. The folder is written as
    ``universal.tmp`` and renamed when complete, so an interrupted conversion is redone, never half-used.
    """
    from deepspeed.checkpoint import ds_to_universal

    folder = root / tag
    out, tmp = folder / UNIVERSAL, folder / f"{UNIVERSAL}.tmp"
    if (out / "zero").is_dir():
        return out
    shutil.rmtree(tmp, ignore_errors=True)  # DeepSpeed walks the whole tag folder: no leftovers in it
    args = argparse.Namespace(
        input_folder=str(folder),
        output_folder=str(tmp),
        num_extract_workers=1,  # in this process: no worker pool, and the weights-only loads apply
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our checkpoints are not Megatron's: DeepSpeed adds the version record itself
    )
    with checkpoint.weights_only_loads(), _quiet():
        ds_to_universal.main(args)
    (folder / "latest_universal").unlink(missing_ok=True)  # ds_to_universal's pointer; we name the folder ourselves
    os.replace(tmp, out)
    return out


def _universal_on_rank0(root: Path, tag: str) -> str:
    """Collective: rank 0 converts; returns '' on success or why DeepSpeed's converter failed (the same on every
    rank). A file that is missing or not plain data is no converter limitation: :class:`CheckpointError` everywhere.
    """
    why, refused = "", ""
    if D.is_master():
        try:
            to_universal(root, tag)
        except CheckpointError as e:
            refused = str(e)
        except Exception as e:  # noqa: BLE001 - whatever DeepSpeed's converter raises becomes the fallback's reason
            why = f"{type(e).__name__}: {checkpoint._first_line(e)}"
        if why or refused:
            shutil.rmtree(root / tag / f"{UNIVERSAL}.tmp", ignore_errors=True)
    why, refused = D.broadcast_object((why, refused))
    if refused:
        raise CheckpointError(refused)
    return why


def saved_weights(root: Path, tag: str, saved: Topology, fp32_masters: bool = True) -> dict[str, torch.Tensor]:
    """The checkpoint's weights and buffers as an fp32 state dict.

    The model-states file holds every buffer and, up to ZeRO-2, every parameter (in the run's precision). With
    ``fp32_masters``, ZeRO-3 and 16-bit runs take their parameters from the fp32 optimizer partitions instead
    (DeepSpeed's ``zero_to_fp32``); without it, ZeRO-3's empty parameter placeholders are left out.
    """
    state = checkpoint.safe_load(model_states_file(root / tag), map_location="cpu")
    weights = {k: v for k, v in (state.get("module") or {}).items() if hasattr(v, "shape") and v.numel() > 0}
    if fp32_masters and (saved.zero_stage == 3 or (saved.zero_stage > 0 and saved.precision != "fp32")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            with checkpoint.weights_only_loads(), _quiet():
                weights.update(get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag))
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"cannot read the weights of {root / tag} ({type(e).__name__}: {checkpoint._first_line(e)}); "
                f"relaunch with the checkpoint's topology ({saved}), or {NEW_RUN}"
            ) from None
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def load_weights_into(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], where: Path, trainable_too: bool = True
) -> None:
    """Load ``weights`` into the plain model (before ``deepspeed.initialize``). Frozen parameters a ZeRO-1
    checkpoint does not hold keep their built values (they are frozen, so the same); without ``trainable_too``
    the trainable parameters may be missing as well (a universal load brings them)."""
    reshape_0d_parameters(model)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad} if trainable_too else set()
    lost = [k for k in missing if k in trainable]
    if lost or unexpected:
        raise CheckpointError(
            f"cannot resume from {where}: its weights do not fit the model ({len(lost)} trainable parameters "
            f"missing, {len(unexpected)} unexpected, e.g. {(lost + list(unexpected))[0]}); {NEW_RUN}"
        )


@dataclasses.dataclass
class Prepared:
    """What :func:`prepare` decided and read; :func:`restore` finishes the resume on the built engine."""

    root: Path
    tag: str
    meta: dict[str, Any]
    saved: Topology
    now: Topology
    plan: Plan
    changes: list[tuple[str, Any, Any]]

    @property
    def where(self) -> Path:
        return self.root / self.tag


def prepare(model: torch.nn.Module, cfg: Any, now: Topology, root: Path, tag: str) -> Prepared:
    """Collective, before the engine is built: read the checkpoint, list the config keys that differ, refuse an
    incompatible model, pick the topology plan, convert to universal or load the weights as the plan says."""
    meta = read_checkpoint(root, tag)
    saved: Topology = meta["topology"]
    where = root / tag
    changes = config_changes(meta["config"], cfg)
    if changes and D.is_master():  # every rank has the same list; say it once
        logger.warning("%s", describe_changes(changes, where / "config.yaml", cfg.run.resume_config))
    elif meta["config"] is None and D.is_master():
        logger.warning("resume: %s has no config.yaml; this launch's config is in force", where)
    check_model(model, meta, changes, where)
    chosen = plan(saved, now)
    if chosen.mode == UNIVERSAL_MODE:
        why = _universal_on_rank0(root, tag)
        if why:
            chosen = Plan(WEIGHTS, f"DeepSpeed could not convert the checkpoint to its universal format ({why})")
    if chosen.mode != EXACT:
        # DeepSpeed's universal load brings the trainable parameters only: buffers (Stage-II's EMA centres) and frozen
        # parameters come from the checkpoint here, before deepspeed.initialize; in 'weights' mode everything does.
        full = chosen.mode == WEIGHTS
        load_weights_into(model, saved_weights(root, tag, saved, fp32_masters=full), where, trainable_too=full)
    return Prepared(root, tag, meta, saved, now, chosen, changes)


def restore(engine, prep: Prepared) -> dict[str, Any]:
    """Collective, on the built engine: load what the plan says; returns the client state (step, epoch, ...)."""
    if prep.plan.mode == WEIGHTS:
        # the weights are in the module already; the rest of the state comes from the client state read up front
        client = {k: v for k, v in prep.meta.items() if k not in ("shapes", "trainable", "topology", "config")}
        checkpoint.check_frozen(getattr(engine, "distinctad_frozen", None), client.get(checkpoint.FROZEN), prep.where)
        rng = client.pop("rng", None)
        if rng is not None and len(rng) == D.get_world_size():
            checkpoint.set_rng_state(rng[D.get_rank()])
        sched = client.get("lr_scheduler") or {}
        engine.lr_scheduler.last_epoch = int(sched.get("last_epoch", client.get("step", 0)))
        engine.global_steps = int(client.get("global_steps", client.get("step", 0)))
        engine.global_samples = int(client.get("global_samples", 0))
        logger.info("resumed from %s (step %s)", prep.where, client.get("step"))
        return client
    try:
        return checkpoint.load(engine, prep.root, prep.tag, universal=prep.plan.mode == UNIVERSAL_MODE)
    except CheckpointError as e:
        if prep.saved.layout() == prep.now.layout():
            raise
        raise CheckpointError(f"{e}; relaunch with the checkpoint's topology ({prep.saved}), or {NEW_RUN}") from None


def rescale_position(micro_in_epoch: int, saved: Topology, now: Topology) -> tuple[int, str]:
    """The micro-batch of this launch that starts where the checkpoint stopped in its epoch (same number of samples
    consumed), and a note for the log ('' when nothing changed)."""
    if not saved.micro_batch_size or (saved.world_size, saved.micro_batch_size) == (
        now.world_size,
        now.micro_batch_size,
    ):
        return micro_in_epoch, ""
    samples = micro_in_epoch * saved.micro_batch_size * saved.world_size
    per_micro = now.micro_batch_size * now.world_size
    micro, repeat = divmod(samples, per_micro)
    note = f"data position rescaled to micro-batch {micro} ({samples} samples into the epoch"
    return micro, note + (f"; {repeat} of them are seen again)" if repeat else ")")


def summary(prep: Prepared, notes: list[str]) -> tuple[int, str]:
    """(log level, the one line that says how the resume went beyond the plain case), or (0, '')."""
    saved, now, mode = prep.saved, prep.now, prep.plan.mode
    if saved.world_size != now.world_size:
        notes = [*notes, "RNG streams restart"]  # one stream per rank was saved
    tail = "".join(f"; {n}" for n in notes)
    changed = saved.layout() != now.layout()
    if mode == WEIGHTS:
        return logging.WARNING, (
            f"resume: topology changed ({saved} -> {now}): {prep.plan.why}, so the optimizer state is "
            f"re-initialised (AdamW moments restart from zero); weights, step, LR schedule and data position are "
            f"restored{tail}"
        )
    if mode == UNIVERSAL_MODE:
        return logging.INFO, (
            f"resume: topology changed ({saved} -> {now}): weights and optimizer state loaded through DeepSpeed's "
            f"universal checkpoint {prep.where / UNIVERSAL}{tail}"
        )
    if changed:
        return logging.INFO, f"resume: topology changed ({saved} -> {now}): DeepSpeed loads it as it is{tail}"
    if notes:
        return logging.INFO, "resume: " + "; ".join(notes)
    return 0, ""
