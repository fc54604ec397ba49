"""A folder of the user's own images and masks, paired by file stem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..labels import ClassFileError, ClassList, find_class_file, read_class_file
from .augment import FOLDER_AUGMENT, AugmentSpec, augment_pair
from .base import SegmentationDataset, Split, select_split
from .reading import (IMAGE_SUFFIXES, DataError, image_to_tensor, labels_to_mask, mask_to_tensor, read_image,
                      read_label_mask, read_mask, read_size, resize_image, resize_labels, resize_mask)

__all__ = ["FolderDataset", "pair_folder"]


def _list_images(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in found:
                raise DataError(f"{p}: two files share the stem {p.stem!r} ({found[p.stem].name}); "
                                "images and masks are paired by stem, so stems must be unique")
            found[p.stem] = p
    return found


def pair_folder(directory: Path) -> dict[str, tuple[Path, Path]]:
    """`directory`/images and `directory`/masks paired by stem, checked from the headers (every image has a
    mask and vice versa, the same size); also what `nnunet.folder_to_nnunet` converts."""
    image_dir, mask_dir = directory / "images", directory / "masks"
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found; expected {directory}/images/ and "
                            f"{directory}/masks/ with files paired by stem")
    images, masks = _list_images(image_dir), _list_images(mask_dir)
    if not images:
        raise DataError(f"{image_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    for stem, path in images.items():
        if stem not in masks:
            raise DataError(f"{path}: no mask with the same stem in {mask_dir}")
    for stem, path in masks.items():
        if stem not in images:
            raise DataError(f"{path}: no image with the same stem in {image_dir}")
    for stem, image_path in images.items():
        image_hw, mask_hw = read_size(image_path), read_size(masks[stem])
        if image_hw != mask_hw:
            raise DataError(f"{masks[stem]}: mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but its "
                            f"image {image_path.name} is {image_hw[1]}x{image_hw[0]}")
    return {stem: (images[stem], masks[stem]) for stem in images}


class FolderDataset(SegmentationDataset):
    """Your own data: ``ROOT/images/`` and ``ROOT/masks/`` paired by file stem.

    Formats: PNG, JPEG, TIFF, BMP; images 8-bit RGB or greyscale (replicated to RGB); masks
    binarised by :func:`read_mask` / :func:`binarise_mask` (so save masks losslessly, not as
    JPEG). Layout: either ``ROOT/images`` + ``ROOT/masks`` (all of it is training data; a
    ``test`` split must then be given explicitly as its own folder) or ``ROOT/train/`` and
    ``ROOT/test/`` each holding ``images/`` + ``masks/``. ``val`` is carved from train.

    With a class file in ROOT (`labels.CLASS_FILES`: names and an optional ignore index) the masks
    are label masks: one class index per pixel (8-bit single-channel or palette PNG/TIFF), or RGB
    colour-coded with the class file's colours; pixels with the ignore index (or ignore colour) are
    marked `labels.IGNORE` and never trained on or scored. Two classes: index 1 is the foreground;
    more: the mask is a label map, resized with nearest neighbour (never thresholded).

    The whole folder is checked when the dataset is built, from file headers only: every
    image has a mask and vice versa, both are readable and the same size. Pixel values are
    checked when an item is decoded; call :meth:`verify` to decode everything up front.
    """

    def __init__(self, root: str | Path, split: Split, image_size: int = 256, *, augment: bool = False,
                 val_fraction: float = 0.1, seed: int = 0, augment_spec: AugmentSpec = FOLDER_AUGMENT) -> None:
        super().__init__(split, seed=seed)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: folder does not exist")
        self.image_size = image_size
        has_split_dirs = (root / "train").is_dir() or (root / "test").is_dir()
        if has_split_dirs:
            self.directory = root / ("test" if split == "test" else "train")
            if not self.directory.is_dir():
                raise DataError(f"{self.directory}: folder not found; a folder with train/ or "
                                "test/ subfolders needs both for those splits")
        elif split == "test":
            raise DataError(f"{root}: has images/ and masks/ but no test/ folder; without "
                            "train/ and test/ subfolders everything is training data, so pass "
                            "your test folder as its own root")
        else:
            self.directory = root
        try:
            class_file = find_class_file(root)
            self.classes: ClassList | None = read_class_file(class_file) if class_file else None
        except ClassFileError as exc:
            raise DataError(str(exc)) from None
        self._set_augmentation(augment_spec, augment, self.classes)  # more than two classes: label maps
        pairs = pair_folder(self.directory)
        ids = sorted(pairs)
        self._set_names(ids if split == "test"
                        else select_split(ids, split, val_fraction, seed, self.directory))
        self._pairs = [pairs[n] for n in self.names]

    def verify(self) -> None:
        """Decode every image and mask of this split now, raising the first problem found."""
        for index in range(len(self)):
            self._decode(index)

    def _decode(self, index: int) -> tuple[np.ndarray, torch.Tensor]:
        """(image (H, W, 3) uint8, mask (1, H, W) float at the file's size)."""
        image_path, mask_path = self._pairs[index]
        image = read_image(image_path, allow_gray=True)
        if self.classes is None:
            return image, mask_to_tensor(read_mask(mask_path))
        return image, labels_to_mask(read_label_mask(mask_path, self.classes), self.classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_np, mask = self._decode(index)
        image = resize_image(image_to_tensor(image_np), self.image_size)
        mask = resize_labels(mask, self.image_size) if self.multiclass else resize_mask(mask, self.image_size)
        if self.augment_spec is not None:
            image, mask = augment_pair(image, mask, self.augment_spec, self._next_generator(index))
        return image, mask
