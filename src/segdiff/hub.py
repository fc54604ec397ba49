"""Where a model comes from: checkpoints, run folders, model folders and Hugging Face Hub repos.

A *model folder* is what `segdiff export` writes (`export.py`), in the layout
segmentation_models_pytorch and diffusers use, so that it can be pushed to the Hugging Face Hub as is:

    config.json        the full ExperimentConfig (model, diffusion, data, train, sample, preset) plus
                       ``format`` ("segdiff-model"), ``format_version``, ``model_kind``, ``classes``
                       (names, background first), ``input_size`` and ``training`` (steps, elapsed_s,
                       best_val_iou). Its ``sample`` section is the recommended sampler settings, the
                       ones `segdiff predict` and `segdiff evaluate` use unless a flag overrides them.
    model.safetensors  the evaluated weights only (SegDiff's EMA), plain parameter names; metadata
                       ``format`` = "pt" (the tensors' framework, as the Hub's tools read it) and
                       ``segdiff_format`` / ``segdiff_format_version``
    README.md          the model card

A *model source* is any of: a checkpoint file, a run folder (its best, else last checkpoint), a
model folder, or a Hub repo id "user/name" (a path that does not exist here), which
`huggingface_hub.snapshot_download` resolves: it downloads the three files into the Hugging Face
cache or, offline (HF_HUB_OFFLINE=1), finds them there. Reading a source never executes code:
configs are JSON and weights safetensors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub.utils import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from .checkpoint import CheckpointError, load_checkpoint, run_checkpoint
from .config import ExperimentConfig

FORMAT = "segdiff-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)  # everything a model folder holds

# config.json's keys beside the ExperimentConfig's own.
_CONFIG_SECTIONS = ("model", "diffusion", "data", "train", "sample", "preset")
_EXTRA_KEYS = ("format", "format_version", "model_kind", "classes", "input_size", "training")

# Checkpoints of `segdiff baseline` from before model kinds lived in the config named the U-Net in
# their state; they load as kind "unet".
_LEGACY_BASELINE = "monai.BasicUNet"

# "user/name" as the Hub spells repo ids: one slash, letters, digits, '-', '_', '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelSource:
    """What a model source holds: its config, its evaluated weights and how long it trained."""

    name: str  # as the user gave it (a path or a repo id), for messages
    path: Path  # the checkpoint file or model folder read
    config: ExperimentConfig
    weights: dict[str, Tensor] = field(default_factory=dict)  # plain parameter names; empty when config only
    training: dict[str, Any] = field(default_factory=dict)  # steps, elapsed_s, best_val_iou (None: unknown)


def training_summary(state: dict[str, Any]) -> dict[str, Any]:
    """The training state a model card reports, from a checkpoint's state JSON."""
    best = state.get("best_val_iou")
    return {"steps": state.get("step"), "elapsed_s": state.get("elapsed_s"),
            "best_val_iou": best if best is not None and best >= 0 else None}  # -1: never validated


def folder_config(config: ExperimentConfig, training: dict[str, Any]) -> dict[str, Any]:
    """The content of a model folder's config.json (see the module docstring)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_kind": config.model.kind,
        "classes": list(config.model.classes),
        "input_size": config.model.image_size,
        "training": training,
        **config.to_dict(),
    }


def read_folder_config(path: Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """(config, training) from a model folder's config.json; CheckpointError naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON model config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    unknown = sorted(set(data) - set(_CONFIG_SECTIONS) - set(_EXTRA_KEYS))
    if unknown:
        raise CheckpointError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: "
                              f"{', '.join(sorted([*_CONFIG_SECTIONS, *_EXTRA_KEYS]))}")
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a segdiff model config (format {data.get('format')!r} version "
                              f"{data.get('format_version')!r}; expected {FORMAT!r} version {FORMAT_VERSION})")
    try:
        config = ExperimentConfig.from_dict({k: data[k] for k in _CONFIG_SECTIONS if k in data})
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    # The summary keys restate the config; a file where they disagree was edited by hand.
    expected = {"model_kind": config.model.kind, "input_size": config.model.image_size,
                "classes": list(config.model.classes)}
    for key, value in expected.items():
        if key in data and data[key] != value:
            raise CheckpointError(f"{path}: {key}={data[key]!r} disagrees with its config, which gives {value!r}")
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise CheckpointError(f"{path}: 'training' must be an object, found {type(training).__name__}")
    return config, training


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS_NAME).is_file()


def _download(repo_id: str) -> Path:
    """The local snapshot folder of Hub repo `repo_id`: downloaded, or from the cache when offline."""
    offline = huggingface_hub.constants.HF_HUB_OFFLINE  # read now: tests and callers may set it after import
    try:
        folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=list(FOLDER_FILES), library_name="segdiff",
                                                   local_files_only=offline)
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such file or folder here, and no model repo of that name on the Hugging "
                              "Face Hub (a private or gated repo needs `hf auth login`)") from None
    except LocalEntryNotFoundError as exc:
        if offline:
            raise CheckpointError(f"{repo_id}: not in the local Hugging Face cache "
                                  f"({huggingface_hub.constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set, so it "
                                  "cannot be downloaded (offline); download it once online, or pass a local "
                                  "model folder") from None
        raise CheckpointError(f"{repo_id}: no such file or folder here, and the Hugging Face Hub could not be "
                              f"reached ({str(exc).splitlines()[0]})") from None
    except (HfHubHTTPError, HFValidationError) as exc:
        raise CheckpointError(f"{repo_id}: could not be read from the Hugging Face Hub ({exc})") from None
    return Path(folder)


def locate(source: str | Path) -> Path:
    """The local path of a model source: the path itself, or a Hub repo's snapshot folder."""
    path = Path(source)
    if path.exists():
        return path
    if isinstance(source, str) and _REPO_ID.match(source) and not source.endswith(".safetensors"):
        return _download(source)
    raise CheckpointError(f"{source}: no such checkpoint file, run folder or model folder (nor a Hub repo id "
                          "'user/name')")


def _read_folder(name: str, folder: Path, weights: bool) -> ModelSource:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: a model folder without {CONFIG_NAME}")
    config, training = read_folder_config(config_path)
    tensors: dict[str, Tensor] = {}
    if weights:
        try:
            tensors = load_file(str(folder / WEIGHTS_NAME))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{folder / WEIGHTS_NAME}: its tensors cannot be read ({exc})") from None
    return ModelSource(name=name, path=folder, config=config, weights=tensors, training=training)


def read_source(source: str | Path, *, weights: bool = True) -> ModelSource:
    """Read a model source (module docstring); `weights=False` reads the config and training state alone."""
    path = locate(source)
    if is_model_folder(path):
        return _read_folder(str(source), path, weights)
    if path.is_dir() and run_checkpoint(path) is None and (path / CONFIG_NAME).is_file() \
            and (path / CARD_NAME).is_file():
        raise CheckpointError(f"{path}: a model folder without {WEIGHTS_NAME}")
    ckpt = load_checkpoint(path, weights_only=True) if weights else load_checkpoint(path, config_only=True)
    config = ckpt.config
    if ckpt.state.get("baseline") == _LEGACY_BASELINE:
        config = replace(config, model=replace(config.model, kind="unet",
                                               unet_features=tuple(ckpt.state["features"])))
    return ModelSource(name=str(source), path=path, config=config, weights=ckpt.ema,
                       training=training_summary(ckpt.state))


def source_config(source: str | Path) -> ExperimentConfig:
    """The ExperimentConfig of any model source, read without its tensors."""
    return read_source(source, weights=False).config


def load_weights(net: nn.Module, source: ModelSource) -> None:
    """Load `source`'s weights into `net` (built from its config); CheckpointError naming the source
    and the first mismatches (missing, unexpected or differently shaped parameters) when they do not fit."""
    try:
        net.load_state_dict(source.weights, strict=True)
    except RuntimeError as exc:
        first = " ".join(line.strip() for line in str(exc).splitlines()[1:4])
        config = source.config
        where = source.name if source.name == str(source.path) else f"{source.name} ({source.path})"
        raise CheckpointError(f"{where}: weights do not match its config (kind {config.model.kind!r}, preset "
                              f"{config.preset!r}): {first}") from None
