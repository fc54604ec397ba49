"""Splits and the dataset base class every dataset module builds on.

- Splits: ``train`` and ``test`` are the benchmark's own; ``val`` is carved from the training
  data by :func:`carve_validation` (fixed seed, deterministic, disjoint from the train
  remainder). The test split is never used for validation (the reference code's flaw).
- Every random draw of an item (augmentation, crop position, crop expansion) comes from a
  generator derived from (seed, k, index) for the k-th fetch of the item (see
  :class:`SegmentationDataset`): new draws each epoch, reproducible under the seed, identical
  with or without DataLoader workers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..seeding import derive_seed
from .augment import item_generator
from .reading import DataError

__all__ = ["SPLITS", "SegmentationDataset", "Split", "carve_validation", "check_option", "check_split", "select_split"]

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


def carve_validation(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split training ids into (train, val), deterministically.

    Each id is ranked by `seeding.derive_seed("validation", seed, id)` and the round(val_fraction * n) lowest (at least
    one when the fraction is > 0 and n >= 2) form val. The result depends only on the ids and
    the seed, not on library versions or listing order; both parts keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(names)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    ranked = sorted(names, key=lambda s: derive_seed("validation", seed, s))
    val = set(ranked[:n_val])
    return [s for s in names if s not in val], [s for s in names if s in val]


def select_split(
    train_ids: Sequence[str], split: str, val_fraction: float, seed: int, where: Path
) -> list[str]:
    """The ids for ``split`` ("train" or "val") out of the training ids."""
    train, val = carve_validation(train_ids, val_fraction, seed)
    chosen = train if split == "train" else val
    if not chosen:
        raise DataError(f"{where}: the {split} split is empty ({len(train_ids)} training samples, "
                        f"val_fraction={val_fraction})")
    return chosen


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of :data:`SPLITS`."""
    check_option("split", split, SPLITS)


def check_option(name: str, value: str, valid: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``name`` and the valid values unless ``value`` is one of them."""
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}, got {value!r}")


class SegmentationDataset(Dataset):
    """Shared state: sample ids and reproducible per-item randomness.

    Item ``i``'s k-th fetch draws from ``item_generator(seed, k, i)``. The fetch counts live in
    a shared-memory tensor, so they advance the same way whether items are decoded in the main
    process or in DataLoader workers (persistent ones included): every epoch gets new draws
    without any call, and a fresh dataset with the same seed replays the same sequence.
    :meth:`set_epoch` sets every count, e.g. to resume a run at epoch ``e``.
    """

    names: list[str]

    def __init__(self, split: str, *, seed: int = 0) -> None:
        check_split(split)
        self.split = split
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)

    def _set_augmentation(self, spec, augment: bool, classes) -> None:
        """`augment_spec` (training split only) and `multiclass`: with more than two classes (`classes`,
        a ClassList or None) masks are label maps, so they are augmented as labels (nearest, never
        thresholded)."""
        self.multiclass = classes is not None and classes.num_classes > 2
        self.augment_spec = spec if augment and self.split == "train" else None
        if self.multiclass and self.augment_spec is not None:
            self.augment_spec = replace(self.augment_spec, mask_mode="labels")

    def _set_names(self, names: list[str]) -> None:
        """Set the sample ids; creates the draw counters, so it must run in the main process."""
        self.names = names
        self._draws = torch.zeros(len(names), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Make the next fetch of every item use the draws of epoch ``epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._draws.fill_(int(epoch))

    def generator(self, index: int) -> torch.Generator:
        """The generator the next fetch of item ``index`` will use (does not advance)."""
        index = range(len(self))[index]  # negative indices count from the end, as for lists
        return item_generator(self.seed, int(self._draws[index]), index)

    def _next_generator(self, index: int) -> torch.Generator:
        """The generator for this fetch of item ``index``; advances its count."""
        generator = self.generator(index)
        self._draws[range(len(self))[index]] += 1
        return generator

    def __len__(self) -> int:
        return len(self.names)

    def _decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index`'s (image, mask) arrays, decoded once per dataset object (the benchmarks are
        small: each DataLoader worker decodes each file once), sizes checked. A dataset that caches
        defines `_read_pair(index) -> (image (H, W, 3) uint8, mask (H, W) bool, the mask's path)`."""
        cache = self.__dict__.setdefault("_cache", {})
        if index not in cache:
            image, mask, mask_path = self._read_pair(index)
            if image.shape[:2] != mask.shape:
                raise DataError(f"{mask_path}: mask {mask.shape} and image {image.shape[:2]} differ in size")
            cache[index] = (image, mask)
        return cache[index]
