"""Checkpoints: one safetensors file, loadable without executing code.

Layout of `NAME.safetensors`:
    tensors   ``ema/<param>`` the EMA weights (the ones evaluated, as in the paper),
              ``model/<param>`` the raw weights, ``optim/<i>/<key>`` AdamW state (training only),
              ``rng/<name>`` random generator states as uint8 tensors (training only)
    metadata  ``format`` = "segdiff", ``version``, ``config`` (ExperimentConfig as JSON),
              ``state`` (JSON: step, data position, optimizer param_groups, anything resumable)

Files are written to a temporary name in the same folder, fsynced and renamed, so a crash never
leaves a half-written checkpoint under the real name.

A training run folder holds ``last-<step>.safetensors`` (the newest ``train.keep_last`` full
checkpoints), ``last.safetensors`` (the newest of them, a hard link) and ``best.safetensors``
(best validation IoU); see :func:`save_last` and :func:`find_resume_checkpoint`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import ExperimentConfig
from .io import atomic_write

FORMAT = "segdiff"
VERSION = "1"


class CheckpointError(ValueError):
    """A file that is not a usable segdiff checkpoint; the message names the file."""


@dataclass
class Checkpoint:
    config: ExperimentConfig
    ema: dict[str, Tensor]
    model: dict[str, Tensor] = field(default_factory=dict)
    optim: dict[str, Tensor] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Tensor] = field(default_factory=dict)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    tensors: dict[str, Tensor] = {}
    for prefix, group in (("ema", ckpt.ema), ("model", ckpt.model), ("optim", ckpt.optim), ("rng", ckpt.rng)):
        for name, value in group.items():
            tensors[f"{prefix}/{name}"] = value.detach().to("cpu").contiguous()
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(ckpt.config.to_dict()),
        "state": json.dumps(ckpt.state),
    }
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def read_config(path: str | Path) -> ExperimentConfig:
    """The config a checkpoint carries, read without loading its tensors."""
    return load_checkpoint(path, config_only=True).config


def run_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of a run folder that inference reads: best.safetensors, else last.safetensors
    (None when it has neither)."""
    return next((c for c in (run_dir / "best.safetensors", run_dir / "last.safetensors") if c.exists()), None)


def load_checkpoint(path: str | Path, *, weights_only: bool = False, config_only: bool = False) -> Checkpoint:
    """Read a checkpoint; `weights_only` skips the raw weights, optimizer and RNG state (inference),
    `config_only` reads the config and JSON state alone (no tensors)."""
    path = Path(path)
    if path.is_dir():
        found = run_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: a folder without best.safetensors or last.safetensors; "
                                  "pass a checkpoint file or a segdiff run folder")
        path = found
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        metadata = _read_metadata(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a segdiff checkpoint (metadata format={metadata.get('format')!r}, "
                              f"expected {FORMAT!r})")
    try:
        config = ExperimentConfig.from_dict(json.loads(metadata["config"]))
        state = json.loads(metadata.get("state", "{}"))
    except (KeyError, json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its config cannot be read ({exc})") from None
    if config_only:
        return Checkpoint(config=config, ema={}, state=state)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: its tensors cannot be read ({exc})") from None
    groups: dict[str, dict[str, Tensor]] = {"ema": {}, "model": {}, "optim": {}, "rng": {}}
    for key, value in tensors.items():
        prefix, _, name = key.partition("/")
        if prefix in groups and not (weights_only and prefix != "ema"):
            groups[prefix][name] = value
    if not groups["ema"]:
        raise CheckpointError(f"{path}: holds no ema/ weights")
    return Checkpoint(config=config, state=state, **groups)


# --- optimizer state -------------------------------------------------------------------------------
def optimizer_to_checkpoint(state_dict: dict) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (``<i>/<key>``) and JSON (param_groups, scalars)."""
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_checkpoint(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict:
    """The inverse of :func:`optimizer_to_checkpoint`: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta.get("scalars", {}).items()]:
        index, _, key = name.partition("/")
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# --- run folders ---------------------------------------------------------------------------------------
_STEP_NAME = re.compile(r"^last-(\d+)\.safetensors$")


def step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The run folder's ``last-<step>.safetensors`` files as (step, path), oldest first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("last-*.safetensors") if (m := _STEP_NAME.match(p.name))]
    return sorted(found)


def save_last(run_dir: str | Path, step: int, ckpt: Checkpoint, keep_last: int) -> Path:
    """Write ``last-<step>.safetensors``, point ``last.safetensors`` at it, keep the newest `keep_last`.

    ``last.safetensors`` is a hard link (no second copy of a large file), replaced atomically; where
    the file system has no hard links it is a copy.
    """
    run_dir = Path(run_dir)
    path = save_checkpoint(run_dir / f"last-{step}.safetensors", ckpt)
    fd, tmp = tempfile.mkstemp(prefix=".last.", suffix=".tmp.safetensors", dir=run_dir)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(path, tmp)
        os.replace(tmp, run_dir / "last.safetensors")
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        atomic_write(run_dir / "last.safetensors", lambda t: shutil.copyfile(path, t))
    for _, old in step_checkpoints(run_dir)[:-keep_last]:
        old.unlink()
    return path


# What `io.atomic_write` (mkstemp, prefix ".<stem>.", suffix ".tmp<suffix>") and `save_last` (prefix
# ".last.") name a checkpoint while it is written: tempfile's 8 random characters in between.
_TEMPORARY_NAME = re.compile(r"^\.[^/]+\.[a-z0-9_]{8}\.tmp\.safetensors$")


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the checkpoint temporaries a killed run left in `run_dir`; returns what was removed.

    A run killed while writing a checkpoint leaves ``.NAME.XXXXXXXX.tmp.safetensors`` behind (as
    large as a checkpoint: 2.5 GB at the paper's size), which nothing else ever removes. Only
    regular files of exactly that pattern, directly in `run_dir`, are touched. Call it where a run
    starts or resumes in the folder, before anything writes there.
    """
    run_dir = Path(run_dir)
    removed = []
    for path in sorted(run_dir.glob(".*.tmp.safetensors")):
        if _TEMPORARY_NAME.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def find_resume_checkpoint(path: str | Path) -> Path:
    """The checkpoint to resume from: `path` itself, or a run folder's newest full checkpoint.

    Raises CheckpointError when the folder is not a segdiff run or holds no checkpoint yet.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file")
    last = path / "last.safetensors"
    steps = step_checkpoints(path)
    if last.exists():
        # save_last writes last-<step> (atomically) before it re-points last.safetensors, so a run
        # killed between the two holds a complete step checkpoint newer than last.safetensors.
        try:
            last_step = load_checkpoint(last, config_only=True).state.get("step", -1)
        except CheckpointError:
            return last  # unreadable: load_resume_checkpoint names the other checkpoints to try
        return steps[-1][1] if steps and steps[-1][0] > last_step else last
    if steps:
        return steps[-1][1]
    if (path / "config.json").exists():
        raise CheckpointError(f"{path}: a segdiff run with no checkpoint yet (it stopped before its first save); "
                              "start it again without --resume")
    raise CheckpointError(f"{path}: not a segdiff run folder (no last.safetensors, last-<step>.safetensors or "
                          "config.json); pass a folder written by `segdiff train` or a checkpoint file")


def load_resume_checkpoint(path: str | Path, *, config_only: bool = False) -> tuple[Path, Checkpoint]:
    """:func:`find_resume_checkpoint` then :func:`load_checkpoint`; returns (file, checkpoint).

    When the file cannot be read, the error names the run's other step checkpoints to try instead.
    """
    found = find_resume_checkpoint(path)
    try:
        return found, load_checkpoint(found, config_only=config_only)
    except CheckpointError as exc:
        others = [p.name for _, p in step_checkpoints(found.parent) if not p.samefile(found)]
        hint = f"; other checkpoints of this run: {', '.join(others)} (pass one to --resume)" if others else ""
        raise CheckpointError(f"{exc}{hint}") from None
