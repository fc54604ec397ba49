"""A procedurally generated segmentation task: textured objects on textured, noisy backgrounds.

The built-in default dataset (the demo, the tests, first contact with the library): generated
from a seed, shipped as code, not files. It is made so that the mask cannot be had by thresholding
intensity: the objects carry an oriented stripe texture whose mean equals the local background,
every image has its own brightness, contrast and a smooth illumination field, and the background
has its own fine grain. A network must look at local texture and shape, as on real data.

Each sample is a pure function of (seed, index), so the dataset is reproducible, needs no disk,
and any worker can make any item. With `num_classes` > 2 the shapes carry classes told apart by
their texture's period (the multi-class demo, `segdiff demo --classes N`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..labels import ClassList
from ..seeding import seeded_generator


def _smooth_field(g: torch.Generator, size: int, cells: int, channels: int) -> Tensor:
    """Low-frequency random field (channels, size, size), roughly N(0, 1) valued."""
    coarse = torch.randn(1, channels, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]


def make_sample(seed: int, index: int, size: int = 32, num_classes: int = 2) -> tuple[Tensor, Tensor]:
    """One (image (3, S, S) in [0, 1], mask (1, S, S)) pair: the mask in {0, 1}, or with `num_classes`
    > 2 a label map whose shapes carry classes 1..C-1 (0 is the background)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (the background and at least one class), got {num_classes}")
    if num_classes > 2:
        return _make_multiclass(seed, index, size, num_classes)
    g = seeded_generator("synthetic", seed, index)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731

    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    mask = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        mask |= _shape(g, u, yy, xx, size)

    # Background: a colour, a smooth illumination field and fine grain.
    base = torch.rand(3, 1, 1, generator=g) * 0.4 + 0.3
    illumination = 0.12 * _smooth_field(g, size, 3, 1)
    grain = 0.06 * torch.randn(3, size, size, generator=g)
    # Objects: a zero-mean oriented stripe texture (period 3-5 px), so their mean intensity is the
    # background's; a faint tint that alone is far from enough.
    theta, period = u(0, math.pi), u(3.0, 5.0)
    stripes = torch.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + u(0, 2 * math.pi))
    texture = 0.16 * stripes * (torch.rand(3, 1, 1, generator=g) * 0.5 + 0.75) + 0.03 * torch.randn(3, 1, 1, generator=g)

    image = base + illumination + grain + mask * texture
    contrast, brightness = u(0.7, 1.3), u(-0.1, 0.1)
    image = ((image - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    return image, mask[None].float()


def _shape(g: torch.Generator, u, yy: Tensor, xx: Tensor, size: int) -> Tensor:
    """A random ellipse or rotated rectangle (even odds), 20-48 % of the side across, as a bool map."""
    cy, cx = u(0.2, 0.8) * size, u(0.2, 0.8) * size
    ry, rx = u(0.10, 0.24) * size, u(0.10, 0.24) * size
    angle = u(0, math.pi)
    dy, dx = yy - cy, xx - cx
    a = (dx * math.cos(angle) + dy * math.sin(angle)) / rx
    b = (-dx * math.sin(angle) + dy * math.cos(angle)) / ry
    if torch.rand((), generator=g) < 0.5:
        return a**2 + b**2 <= 1  # ellipse
    return (a.abs() <= 1) & (b.abs() <= 1)  # rotated rectangle


def _make_multiclass(seed: int, index: int, size: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """The multi-class variant: 1-3 shapes, each of a random class c in 1..C-1, drawn in order (a
    later shape covers an earlier one). A class is told by its texture: stripes whose period grows
    with c (2.5 px for class 1, +1.5 px per class) at a random orientation, zero-mean like the
    binary task's, so intensity alone does not give the labels."""
    g = seeded_generator("synthetic-classes", seed, index, num_classes)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    base = torch.rand(3, 1, 1, generator=g) * 0.4 + 0.3
    image = base + 0.12 * _smooth_field(g, size, 3, 1) + 0.06 * torch.randn(3, size, size, generator=g)
    labels = torch.zeros(size, size)
    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        c = int(torch.randint(1, num_classes, (), generator=g))
        shape = _shape(g, u, yy, xx, size)
        theta, period = u(0, math.pi), 2.5 + 1.5 * (c - 1)
        stripes = torch.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + u(0, 2 * math.pi))
        texture = 0.18 * stripes * (torch.rand(3, 1, 1, generator=g) * 0.5 + 0.75)
        image = torch.where(shape, base + 0.06 * torch.randn(3, size, size, generator=g) + texture, image)
        labels[shape] = c
    contrast, brightness = u(0.7, 1.3), u(-0.1, 0.1)
    image = ((image - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    return image, labels[None]


class SyntheticShapes(Dataset):
    """`length` generated samples; `seed` separates train, validation and test sets."""

    def __init__(self, length: int, image_size: int = 32, seed: int = 0, num_classes: int = 2):
        self.length, self.image_size, self.seed, self.num_classes = length, image_size, seed, num_classes
        self.names = [f"synthetic_{seed}_{i:05d}" for i in range(length)]
        if num_classes > 2:  # the multi-class variant names its classes (a binary dataset has no class list)
            self.classes = ClassList(("background", *(f"shape {c}" for c in range(1, num_classes))))
        elif num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (the background and at least one class), got {num_classes}")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return make_sample(self.seed, index, self.image_size, self.num_classes)


# Seeds of the three synthetic splits: disjoint by construction.
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
