"""MoNuSeg 2018 nuclei (H&E, 40x) with the paper's protocol.

Layout (the challenge release, nothing preprocessed)::

    ROOT/monuseg/{train,test}/images/NAME.tif        RGB uint8, 1000x1000 (LZW, PackBits or raw)
    ROOT/monuseg/{train,test}/masks/NAME.png         mode 'LA', values {0, 255}, nuclei = 255
    ROOT/monuseg/test/annotations/NAME.xml           one polygon per nucleus (test release only)

(ROOT may also be the ``monuseg/`` folder itself.) ``train`` and ``test`` are the challenge's;
``val`` is carved from ``train`` by :func:`segdiff.data.carve_validation`.

Scale. Everything is resized to ``resize`` first: by default ``2 * image_size``, 512 for the
paper's 256. Training items are random ``image_size`` crops of it; test and val items the whole
resized image, sampled as ``resize / image_size`` by as many tiles (the paper's four quadrants
when ``resize = 2 * image_size``: :func:`segdiff.sliding.predict_tiles`). Whatever the scale, the
protocol scores at the paper's 512 x 512 (:meth:`MoNuSeg.original_mask`, the probabilities
resized bilinearly first), so a model trained at a lower magnification (the ``monuseg-cpu``
preset: 64 px crops of the image at 256, nuclei a quarter as many pixels across as the paper's)
is scored against the same masks as the paper's.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

from .augment import MONUSEG_AUGMENT, AugmentSpec, augment_pair
from .base import SegmentationDataset, Split, check_option, select_split
from .reading import (DataError, check_file, image_to_tensor, mask_to_tensor, read_image, read_mask, resize_image,
                      resize_mask)

__all__ = ["MoNuSeg", "read_monuseg_xml", "SCORE_SIDE"]

SCORE_SIDE = 512  # the paper scores MoNuSeg at 512 x 512, whatever the model's scale


def read_monuseg_xml(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Rasterise a MoNuSeg annotation XML (one polygon per nucleus) to a bool mask (H, W).

    Each ``Region``'s ``Vertex`` X/Y (floats, pixel units) is filled with Pillow's
    ``ImageDraw.polygon`` (fill only, no outline); regions with fewer than 3 vertices have no
    area and are skipped. This reproduces the shipped PNG masks exactly with Pillow 10.x-11.0;
    Pillow >= 11.2 fills a handful of hairline slivers differently (at most 2 pixels per
    image on the test set, IoU >= 0.99999), Pillow 11.1 differs more.
    """
    path = Path(path)
    check_file(path)
    try:
        regions = ET.parse(path).getroot().iter("Region")
        polygons = [[(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
                    for region in regions]
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: cannot parse MoNuSeg annotation XML ({exc})") from exc
    canvas = Image.new("L", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) >= 3:
            draw.polygon(polygon, fill=1)
    return np.asarray(canvas) > 0


def _find_monuseg_split(root: Path, folder: str) -> Path:
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    base = root / "monuseg" if (root / "monuseg").is_dir() else root
    directory = base / folder
    if not (directory / "images").is_dir():
        raise DataError(f"{directory}/images: MoNuSeg {folder} folder not found; expected "
                        f"ROOT/monuseg/{folder}/images/*.tif and masks/*.png")
    return directory


class MoNuSeg(SegmentationDataset):
    """MoNuSeg 2018 nuclei with the paper's protocol.

    Everything is first resized to ``resize`` (default ``2 * image_size``: 512 for the paper's
    256; a multiple of ``image_size``). ``train`` returns a random ``image_size`` crop of it
    (drawn from the item generator, augmentation or not; ``augment`` adds flips, rotation, scale
    and colour jitter, applied before cropping so that fewer crops see the zero fill). ``test``
    and ``val`` return the whole resized image and mask: sample it as a grid of ``image_size``
    tiles (:func:`segdiff.sliding.predict_tiles`; the four quadrants at the default scale) and
    score against :meth:`original_mask`, the mask at 512. ``mask_source="xml"`` rasterises the
    annotation XMLs instead of reading the PNG masks (only the test release ships XMLs).
    """

    def __init__(self, root: str | Path, split: Split, image_size: int = 256, *, augment: bool = False,
                 val_fraction: float = 0.1, seed: int = 0, mask_source: Literal["png", "xml"] = "png",
                 resize: int = 0, augment_spec: AugmentSpec = MONUSEG_AUGMENT) -> None:
        super().__init__(split, seed=seed)
        check_option("mask_source", mask_source, ("png", "xml"))
        self.directory = _find_monuseg_split(Path(root), "test" if split == "test" else "train")
        self.image_size, self.mask_source = image_size, mask_source
        self.full_size = resize or 2 * image_size
        if self.full_size < image_size or self.full_size % image_size:
            raise DataError(f"MoNuSeg: resize={resize} must be a multiple of the crop side {image_size} "
                            "(the test images are covered by whole tiles)")
        self.augment_spec = augment_spec if augment and split == "train" else None
        stems = sorted(p.stem for p in (self.directory / "images").glob("*.tif"))
        if not stems:
            raise DataError(f"{self.directory / 'images'}: no .tif images found")
        for stem in stems:
            check_file(self._mask_path(stem))
        self._set_names(stems if split == "test"
                        else select_split(stems, split, val_fraction, seed, self.directory))

    def _mask_path(self, stem: str) -> Path:
        if self.mask_source == "xml":
            return self.directory / "annotations" / f"{stem}.xml"
        return self.directory / "masks" / f"{stem}.png"

    def _read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, Path]:
        stem = self.names[index]
        image = read_image(self.directory / "images" / f"{stem}.tif")
        if self.mask_source == "xml":
            return image, read_monuseg_xml(self._mask_path(stem), image.shape[:2]), self._mask_path(stem)
        return image, read_mask(self._mask_path(stem)), self._mask_path(stem)

    def original_mask(self, index: int) -> torch.Tensor:
        """The mask (1, 512, 512) of item `index`: what the protocol scores, at any ``resize``."""
        return resize_mask(mask_to_tensor(self._decoded(index)[1]), SCORE_SIDE)

    def _resized(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item `index`'s image and mask at ``full_size``, computed once per dataset object (the
        1000 px resize costs more than a training step's augmentation and crop)."""
        cache = self.__dict__.setdefault("_resized_cache", {})
        if index not in cache:
            image_np, mask_np = self._decoded(index)
            cache[index] = (resize_image(image_to_tensor(image_np), self.full_size),
                            resize_mask(mask_to_tensor(mask_np), self.full_size))
        return cache[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._resized(index)
        if self.split != "train":
            return image.clone(), mask.clone()
        generator = self._next_generator(index)
        if self.augment_spec is not None:
            image, mask = augment_pair(image, mask, self.augment_spec, generator)
        span = self.full_size - self.image_size + 1
        top, left = torch.randint(span, (2,), generator=generator).tolist()
        window = (slice(None), slice(top, top + self.image_size), slice(left, left + self.image_size))
        return image[window].clone(), mask[window].clone()
