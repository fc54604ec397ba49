"""Vaihingen buildings (the DSAC layout): 168 tiles of 512x512 IR-R-G, one central building each.

Layout: ``ROOT/vaihingen/buildings/building_NNN.tif`` and ``building_mask_NNN.tif`` (ROOT may
also be the ``vaihingen/`` or ``buildings/`` folder). Files 001-100 are training data (``val``
carved from them), 101-168 the test split, as in DSAC, DarNet and SegDiff.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .augment import VAIHINGEN_AUGMENT, AugmentSpec, augment_pair
from .base import SegmentationDataset, Split, check_option, select_split
from .reading import (DataError, check_file, image_to_tensor, mask_to_tensor, read_image, read_mask, resize_image,
                      resize_mask)

__all__ = ["VAIHINGEN_TRAIN_LAST", "Vaihingen"]

_VAIHINGEN_RE = re.compile(r"^building_(\d{3})\.tif$")
VAIHINGEN_TRAIN_LAST = 100  # 001-100 train, 101-168 test (DSAC, DarNet, SegDiff)


def _find_vaihingen_dir(root: Path) -> Path:
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    for candidate in (root / "vaihingen" / "buildings", root / "buildings", root):
        if candidate.is_dir() and any(candidate.glob("building_[0-9][0-9][0-9].tif")):
            return candidate
    raise DataError(
        f"{root}: no Vaihingen files found; expected ROOT/vaihingen/buildings/building_NNN.tif "
        "and building_mask_NNN.tif, with ROOT the data root, its vaihingen/ or buildings/ folder"
    )


class Vaihingen(SegmentationDataset):
    """Vaihingen buildings: 168 tiles of 512x512 IR-R-G, one central building mask each.

    Split by file number: 001-100 train (``val`` carved from it), 101-168 test.
    ``preprocessing="clean"`` resizes as :mod:`segdiff.data.reading` says. ``"reference"`` is the
    authors' code: image nearest neighbour, mask bilinear without antialiasing, then every
    non-zero pixel set to 1, which slightly enlarges the ground truth their test scores use;
    offered only to reproduce those numbers.
    """

    def __init__(self, root: str | Path, split: Split, image_size: int = 256, *, augment: bool = False,
                 val_fraction: float = 0.1, seed: int = 0, preprocessing: Literal["clean", "reference"] = "clean",
                 augment_spec: AugmentSpec = VAIHINGEN_AUGMENT) -> None:
        super().__init__(split, seed=seed)
        check_option("preprocessing", preprocessing, ("clean", "reference"))
        self.directory = _find_vaihingen_dir(Path(root))
        self.image_size, self.preprocessing = image_size, preprocessing
        self.augment_spec = augment_spec if augment and split == "train" else None
        numbers = sorted(int(m.group(1)) for p in self.directory.iterdir()
                         if (m := _VAIHINGEN_RE.match(p.name)))
        for n in numbers:
            check_file(self.directory / f"building_mask_{n:03d}.tif")
        if split == "test":
            names = [f"building_{n:03d}" for n in numbers if n > VAIHINGEN_TRAIN_LAST]
        else:
            train = [f"building_{n:03d}" for n in numbers if n <= VAIHINGEN_TRAIN_LAST]
            names = select_split(train, split, val_fraction, seed, self.directory)
        if not names:
            raise DataError(f"{self.directory}: no Vaihingen files for the {split} split")
        self._set_names(names)

    def _read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, Path]:
        name = self.names[index]
        mask_path = self.directory / f"building_mask_{name.removeprefix('building_')}.tif"
        return read_image(self.directory / f"{name}.tif"), read_mask(mask_path), mask_path

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_np, mask_np = self._decoded(index)
        image, mask = image_to_tensor(image_np), mask_to_tensor(mask_np)
        if self.preprocessing == "reference":
            image = resize_image(image, self.image_size, mode="nearest")
            if tuple(mask.shape[-2:]) != (self.image_size, self.image_size):
                soft = F.interpolate(mask[None], size=(self.image_size,) * 2, mode="bilinear",
                                     align_corners=False)[0]
                mask = (soft > 0).float()
        else:
            image, mask = resize_image(image, self.image_size), resize_mask(mask, self.image_size)
        if self.augment_spec is not None:
            image, mask = augment_pair(image, mask, self.augment_spec, self._next_generator(index))
        return image, mask
