"""Checkpoints: one safetensors file, loadable without executing code.

Layout of `NAME.safetensors`:
    tensors   ``ema/<param>`` the EMA weights (the ones evaluated, as in the paper),
              ``model/<param>`` the raw weights, ``optim/<i>/<key>`` AdamW state (training only)
    metadata  ``format`` = "segdiff", ``version``, ``config`` (ExperimentConfig as JSON),
              ``state`` (JSON: step, optimizer hyper-parameters, RNG states, anything resumable)

Files are written to a temporary name in the same folder, fsynced and renamed, so a crash never
leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
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


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    tensors: dict[str, Tensor] = {}
    for prefix, group in (("ema", ckpt.ema), ("model", ckpt.model), ("optim", ckpt.optim)):
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
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_checkpoint(path: str | Path, *, weights_only: bool = False) -> Checkpoint:
    """Read a checkpoint; `weights_only` skips the raw weights and optimizer state (inference)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "best.safetensors", path / "last.safetensors"]
        found = next((c for c in candidates if c.exists()), None)
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
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: its tensors cannot be read ({exc})") from None
    groups: dict[str, dict[str, Tensor]] = {"ema": {}, "model": {}, "optim": {}}
    for key, value in tensors.items():
        prefix, _, name = key.partition("/")
        if prefix in groups and not (weights_only and prefix != "ema"):
            groups[prefix][name] = value
    if not groups["ema"]:
        raise CheckpointError(f"{path}: holds no ema/ weights")
    return Checkpoint(config=config, state=state, **groups)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """The EMA network of a checkpoint, in eval mode, with the checkpoint's config.

    Returns (model, config). Weights that do not fit the config raise CheckpointError.
    """
    from .model import SegDiff

    ckpt = load_checkpoint(path, weights_only=True)
    model = SegDiff(ckpt.config.model)
    try:
        model.load_state_dict(ckpt.ema, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{path}: weights do not match its config (preset {ckpt.config.preset!r}): "
                              f"{' '.join(first)}") from None
    return model.to(device).eval(), ckpt.config
