"""Datasets for SegDiff: Vaihingen buildings, MoNuSeg nuclei, Cityscapes instance crops, CamVid road
scenes (11 classes), folders,
nnU-Net raw dataset folders and the built-in synthetic shapes; the registry and the one entry
point, :func:`build_dataset`.

One concept per module: :mod:`.reading` (files, tensors, resizing), :mod:`.base` (splits, the
dataset base class), :mod:`.augment`, then one module per dataset (:mod:`.vaihingen`,
:mod:`.monuseg`, :mod:`.cityscapes`, :mod:`.camvid`, :mod:`.folder`, :mod:`.nnunet`, :mod:`.synthetic`).
Dependencies point one way: the dataset modules import reading/base/augment (:mod:`.nnunet`
also :mod:`.folder`, to convert folders), this package imports the dataset modules.
docs/datasets.md gives each dataset's layout and rules.

Conventions (other modules depend on them):
- Every dataset is a ``torch.utils.data.Dataset`` whose ``__getitem__`` returns ``(image, mask)``:
  image float32 (3, H, W) in [0, 1]; mask float32 (1, H, W) with values exactly {0., 1.} (binary)
  or the class indices of a label map (more classes: CamVid, folders with a class file), and
  ``labels.IGNORE`` (-1) on ignored pixels; both square at ``image_size`` unless a test protocol
  says otherwise (MoNuSeg test/val: the full 2 * image_size image, see :class:`MoNuSeg`).
  ``.names`` lists the sample ids in item order; datasets with a class list have ``.classes``.
- One entry point, :func:`build_dataset`; ``DATASETS`` holds the valid names.
  :func:`make_dataset` builds the dataset an :class:`~segdiff.config.ExperimentConfig` describes.
- Splits: ``train`` and ``test`` are the benchmark's own; ``val`` is carved from the training
  data by :func:`carve_validation` (fixed seed, deterministic, disjoint from the train
  remainder). The test split is never used for validation (the reference code's flaw).
- Resizing ("clean", the default): image bilinear with antialiasing; mask bilinear with
  antialiasing, then >= 0.5, i.e. a pixel is foreground when at least half of its footprint
  was. Vaihingen also offers the authors' "reference" preprocessing (see :class:`Vaihingen`).
- Augmentation (``augment=True``, training splits only) uses :mod:`.augment`; every random draw
  (augmentation, crop position, crop expansion) comes from a generator derived from
  (seed, k, index) for the k-th fetch of the item (see :class:`SegmentationDataset`): new draws
  each epoch, reproducible under the seed, identical with or without DataLoader workers.
- Bad input raises :class:`DataError` (a ``ValueError``) naming the file and the problem.
- Nothing is ever written into a data folder. Decoding happens in ``__getitem__``; no file
  handle stays open. Decoded arrays are cached per dataset object where the data is small
  (Vaihingen, MoNuSeg), so each DataLoader worker decodes each file once.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from ..config import ConfigError, DataConfig, ExperimentConfig
from ..labels import ClassList
from .base import SPLITS, SegmentationDataset, Split, carve_validation, check_split, select_split
from .camvid import CAMVID_CLASSES, CamVid
from .cityscapes import CITYSCAPES_CLASSES, CityscapesInstances
from .folder import FolderDataset
from .monuseg import MoNuSeg, read_monuseg_xml
from .nnunet import NNUNetRaw
from .reading import (
    IMAGE_SUFFIXES,
    DataError,
    binarise_mask,
    image_to_tensor,
    mask_to_tensor,
    read_image,
    read_mask,
    read_size,
    resize_image,
    resize_mask,
)
from .synthetic import SPLIT_SEEDS, SyntheticShapes
from .vaihingen import Vaihingen

__all__ = [
    "CAMVID_CLASSES", "CamVid", "CITYSCAPES_CLASSES", "DATASETS", "IMAGE_SUFFIXES", "SPLITS", "CityscapesInstances", "DataError",
    "FolderDataset", "MoNuSeg", "NNUNetRaw", "SegmentationDataset", "Split", "SyntheticShapes", "Vaihingen",
    "binarise_mask", "build_dataset", "carve_validation", "image_to_tensor", "make_dataset",
    "mask_to_tensor", "read_image", "read_mask", "read_monuseg_xml", "read_size", "resize_image",
    "resize_mask", "select_split", "with_dataset_classes",
]


def _build_synthetic(root: Path, split: Split, image_size: int, *, num_train: int = 2000, num_test: int = 64,
                     val_fraction: float = 0.1, num_classes: int = 2, **_: Any) -> Dataset:
    """The built-in generated dataset (synthetic.py); `root` is unused. It needs no augmentation:
    every image is new. Each split has its own generator seed, so the splits are disjoint.
    `num_classes` > 2 gives the multi-class variant (`make_dataset` passes the model's count)."""
    length = {"train": num_train, "val": max(16, round(num_train * val_fraction)), "test": num_test}[split]
    return SyntheticShapes(length, image_size, SPLIT_SEEDS[split], num_classes)


_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "vaihingen": Vaihingen,
    "monuseg": MoNuSeg,
    "cityscapes": CityscapesInstances,
    "camvid": CamVid,
    "folder": FolderDataset,
    "nnunet": NNUNetRaw,
    "synthetic": _build_synthetic,
}
DATASETS: tuple[str, ...] = tuple(_REGISTRY)


def build_dataset(
    name: str,
    root: str | Path,
    split: Split,
    image_size: int,
    *,
    augment: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Build dataset ``name``'s ``split`` at ``image_size``; the one entry point.

    ``options`` go to the dataset class: ``setting="tight"|"expansion"``, ``index_cache`` and
    ``classes`` for Cityscapes, ``preprocessing`` for Vaihingen, ``mask_source`` for MoNuSeg,
    ``augment_spec`` for all. Example::

        train = build_dataset("vaihingen", "DATA", "train", 256, augment=True)
        image, mask = train[0]  # (3, 256, 256) in [0, 1], (1, 256, 256) in {0, 1}
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    check_split(split)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return _REGISTRY[name](Path(root), split, image_size, augment=augment,
                           val_fraction=val_fraction, seed=seed, **options)


def _config_options(d: DataConfig) -> dict[str, Any]:
    """The fields of `d` that apply to `d.dataset`, as :func:`build_dataset` options."""
    if d.dataset == "vaihingen":
        return {"preprocessing": d.preprocessing}
    if d.dataset == "monuseg":
        return {"mask_source": d.mask_source, "resize": d.resize}
    if d.dataset == "cityscapes":
        return {"setting": d.setting, "index_cache": d.index_cache or None}
    if d.dataset == "synthetic":
        return {"num_train": d.num_train, "num_test": d.num_test}
    if d.dataset in ("folder", "nnunet", "camvid"):
        return {}
    raise ValueError(f"unknown dataset {d.dataset!r}; valid names: {', '.join(DATASETS)}")


def with_dataset_classes(cfg: ExperimentConfig, dataset: Dataset) -> ExperimentConfig:
    """`cfg` with the class count and names of `dataset` (a CamVid, a folder with a class file, ...).

    A config that names no classes (no `class_names`, and binary or the dataset's count) takes the dataset's;
    one that names them must agree, or ConfigError says what differs. Datasets without a class
    list (binary masks) leave `cfg` as it is.
    """
    classes = getattr(dataset, "classes", None)
    m = cfg.model
    if not isinstance(classes, ClassList):  # binary masks; Cityscapes' `classes` are its instance classes
        return cfg
    if (m.num_classes, m.class_names) == (classes.num_classes, classes.names):
        return cfg
    if not m.class_names and m.num_classes in (2, classes.num_classes):
        return dataclasses.replace(cfg, model=dataclasses.replace(m, num_classes=classes.num_classes,
                                                                  class_names=classes.names,
                                                                  class_colours=classes.colours))
    raise ConfigError(f"the config's classes ({m.num_classes}: {', '.join(m.classes)}) differ from the data's "
                      f"({classes.num_classes}: {', '.join(classes.names)}); set model.num_classes and "
                      "model.class_names to the data's, or leave them at their defaults to take the data's")


def make_dataset(cfg: ExperimentConfig, split: Split, *, augment: bool = False,
                 image_size: int | None = None) -> Dataset:
    """The dataset `cfg.data` describes: its `split` at `image_size` (default: the model's input).

    The options of `cfg.data` that apply to the dataset go with it (Cityscapes' `setting` and
    `index_cache`, Vaihingen's `preprocessing`, MoNuSeg's `mask_source`), and `cfg.train.seed`
    carves the validation split, so training, the baseline and `segdiff evaluate` see the same
    data. An empty `data.root` means $SEGDIFF_DATA.
    """
    d = cfg.data
    root = d.root or os.environ.get("SEGDIFF_DATA", "")
    if not root and d.dataset != "synthetic":
        raise DataError(f"dataset {d.dataset!r} needs a data folder: pass --data DIR or set SEGDIFF_DATA")
    options = _config_options(d)
    if d.dataset == "synthetic":
        options["num_classes"] = cfg.model.num_classes  # the generated data has the model's classes
    return build_dataset(d.dataset, root, split, cfg.model.image_size if image_size is None else image_size,
                         augment=augment, val_fraction=d.val_fraction, seed=cfg.train.seed, **options)
