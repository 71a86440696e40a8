"""Up-front checks of the paths a job or a command is given: one line naming the setting and the path, before any work.

Every job (``build_task`` of stage1, stage2, recon) and every CLI (``distinctad-shards``, ``distinctad-eval``,
``distinctad-generate``, ``distinctad-extract``) checks its paths here first, so a missing folder, an empty one, a
file where a folder is expected or a glob that matches nothing is ``error: KEY: PATH: what is wrong`` before any
data is built, any model loaded or any tracking run opened, never a traceback from deep inside a reader.

The checks raise :class:`PathProblem` (a ``ValueError``); jobs turn it into a ``ConfigError``, CLIs into
``SystemExit("error: ...")``.
"""

from __future__ import annotations

import os
from pathlib import Path

from distinctad.data.shardlist import expand_shards, is_remote


class PathProblem(ValueError):
    """A path setting that cannot work; the message is ``KEY: PATH: problem``, one line."""

    def __init__(self, key: str, path: str | os.PathLike, problem: str):
        self.key, self.path, self.problem = key, str(path), problem
        super().__init__(f"{key}: {path}: {problem}")


def _a(what: str) -> str:
    """``what`` with its indefinite article."""
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def _what_is(path: Path) -> str:
    return "folder" if path.is_dir() else "file" if path.exists() else "missing"


def _missing_parent(path: Path) -> Path | None:
    """The first component above ``path`` that exists but is not a folder (so nothing can be created below it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_file(key: str, path: str | os.PathLike, what: str = "file") -> Path:
    """An existing file (``what`` names it in the message, e.g. "annotation file")."""
    p = Path(path)
    found = _what_is(p)
    if found == "missing":
        raise PathProblem(key, path, f"no such {what}")
    if found == "folder":
        raise PathProblem(key, path, f"is a folder, expected {_a(what)}")
    return p


def check_dir(key: str, path: str | os.PathLike, what: str = "folder") -> Path:
    """An existing folder."""
    p = Path(path)
    found = _what_is(p)
    if found == "missing":
        raise PathProblem(key, path, f"no such {what}")
    if found == "file":
        raise PathProblem(key, path, f"is a file, expected {_a(what)}")
    return p


def check_output_dir(key: str, path: str | os.PathLike) -> Path:
    """A folder to write into: it exists as a folder or can be created (no file in the way)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise PathProblem(key, path, "is a file, expected an output folder")
    blocker = _missing_parent(p)
    if blocker is not None:
        raise PathProblem(key, path, f"cannot create it: {blocker} is a file")
    return p


def check_output_file(key: str, path: str | os.PathLike) -> Path:
    """A file to write: not a folder, and its folder exists or can be created."""
    p = Path(path)
    if p.is_dir():
        raise PathProblem(key, path, "is a folder, expected an output file")
    blocker = _missing_parent(p)
    if blocker is not None:
        raise PathProblem(key, path, f"cannot create it: {blocker} is a file")
    return p


def check_path(key: str, path: str | os.PathLike, what: str = "file or folder") -> Path:
    """An existing file or folder (settings that take either, e.g. a checkpoint or a model)."""
    p = Path(path)
    if not p.exists():
        raise PathProblem(key, path, f"no such {what}")
    return p


def check_shards(key: str, spec: str | list[str]) -> list[str]:
    """The shard paths of a shard setting, every one an existing file; raises :class:`PathProblem` otherwise.

    ``spec`` is what the readers take (:func:`~distinctad.data.shardlist.expand_shards`): a folder of ``*.tar``,
    a glob, a brace pattern, one ``.tar`` or a list. Remote URLs (``pipe:``, ``s3://``...) are not checked.
    """
    if isinstance(spec, str) and not spec.strip():
        raise PathProblem(key, repr(spec), "empty shard setting")
    if isinstance(spec, str) and not is_remote(spec):
        p = Path(spec)
        if p.is_file() and not spec.endswith((".tar", ".tar.gz", ".tgz")):
            raise PathProblem(key, spec, "is a file, expected a folder of .tar shards, a .tar shard or a pattern")
        if not p.exists() and not any(c in spec for c in "*?[{"):
            raise PathProblem(key, spec, "no such shard folder or file")
    try:
        urls = expand_shards(spec)
    except ValueError:
        if isinstance(spec, str) and Path(spec).is_dir():
            raise PathProblem(key, spec, "folder holds no .tar shards") from None
        raise PathProblem(key, spec, "pattern matches no shard") from None
    for url in urls:
        if is_remote(url):
            continue
        found = _what_is(Path(url))
        if found != "file":
            where = url if url == str(spec) else f"{url} (from {spec})"
            raise PathProblem(
                key, where, "no such shard" if found == "missing" else "is a folder, expected a .tar shard"
            )
    return urls


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_path(value: str) -> bool:
    """Whether a setting that takes a path *or* a name (an open_clip tag, a hub id) was given a path."""
    if value.startswith("hf-hub:"):
        return False
    return value.startswith((".", "~")) or "/" in value or os.sep in value or value.endswith(WEIGHT_SUFFIXES)


def check_weights(key: str, value: str) -> None:
    """A weights setting (file, folder or a tag): when it is a path, it must exist."""
    if value and looks_like_path(value):
        check_path(key, Path(value).expanduser(), "weights file or folder")


def check_run_paths(cfg) -> None:
    """The path settings every job shares: ``run.out_dir`` (a folder to write) and ``deepspeed.config`` (a JSON
    file, looked up in the source checkout when relative, as the engine does)."""
    from distinctad.common import resolve_path

    check_output_dir("run.out_dir", cfg.run.out_dir)
    ds = resolve_path(cfg.deepspeed.config)
    if not ds.is_file():
        raise PathProblem("deepspeed.config", cfg.deepspeed.config, "is a folder" if ds.is_dir() else "no such file")
