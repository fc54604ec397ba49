"""Joint image/mask augmentation in plain torch, reproducible under an explicit generator.

The paper trains with rotation, scaling, flips and colour jitter (docs/paper.md, "Training"); the
reference code gets them from torchvision on PIL images and the global RNG. Here:

- Geometry (rotation about the centre, isotropic scale, flips) is one affine map applied to the
  image and the mask with the same sampling grid (``affine_grid`` + ``grid_sample``), so the two
  cannot drift apart. Pixels that come from outside the input are 0 in both (black image,
  background mask), as torchvision's ``RandomAffine`` fills them.
- The mask is resampled bilinearly and thresholded at 0.5 (``mask_mode="bilinear"``, default:
  smoother edges than nearest, still exactly {0, 1}) or resampled with nearest neighbour. Label
  maps of more than two classes (``mask_mode="labels"``) are resampled with nearest neighbour and
  never thresholded, and pixels from outside the input are ignored (`labels.IGNORE`), not class 0.
- Colour jitter follows torchvision's ``ColorJitter`` definitions on [0, 1] RGB (brightness,
  contrast, saturation factors drawn from [max(0, 1 - v), 1 + v], hue shift from [-h, h], the four
  applied in a random order) and never touches the mask.
- Every random draw takes a ``torch.Generator``; nothing reads global RNG state. Datasets derive
  one generator per item from (seed, epoch, index) with :func:`item_generator`, so an epoch of
  augmented samples is a pure function of those three numbers, whatever the DataLoader workers.

Shapes: image (3, H, W) float in [0, 1]; mask (1, H, W) float in {0, 1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..labels import IGNORE
from ..seeding import seeded_generator

__all__ = [
    "AugmentSpec",
    "AffineParams",
    "VAIHINGEN_AUGMENT",
    "MONUSEG_AUGMENT",
    "CITYSCAPES_AUGMENT",
    "FOLDER_AUGMENT",
    "item_generator",
    "sample_affine",
    "apply_affine",
    "color_jitter",
    "augment_pair",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
]

MaskMode = Literal["bilinear", "nearest", "labels"]


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges of the random augmentations; each field's default means "off".

    ``rotation`` is a range in degrees, ``scale`` a range of zoom factors (> 1 enlarges),
    ``hflip``/``vflip`` probabilities, ``brightness``/``contrast``/``saturation``/``hue`` the
    torchvision ``ColorJitter`` arguments (hue at most 0.5).
    """

    rotation: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    hflip: float = 0.0
    vflip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    mask_mode: MaskMode = "bilinear"

    def __post_init__(self) -> None:
        if self.rotation[0] > self.rotation[1]:
            raise ValueError(f"rotation range must be (low, high), got {self.rotation}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale range must be 0 < low <= high, got {self.scale}")
        for name in ("hflip", "vflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if self.mask_mode not in ("bilinear", "nearest", "labels"):
            raise ValueError(f"mask_mode must be 'bilinear', 'nearest' or 'labels', got {self.mask_mode!r}")


# The paper's per-dataset augmentations (docs/paper.md, "Training"; reference code datasets/*.py).
VAIHINGEN_AUGMENT = AugmentSpec(
    rotation=(0.0, 360.0), scale=(0.75, 1.5), hflip=0.5, vflip=0.5,
    brightness=0.6, contrast=0.5, saturation=0.4, hue=0.025,
)
MONUSEG_AUGMENT = AugmentSpec(
    rotation=(-22.0, 22.0), scale=(0.75, 1.25), hflip=0.5, vflip=0.5,
    brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
)
CITYSCAPES_AUGMENT = AugmentSpec(rotation=(-22.0, 22.0), scale=(0.75, 1.25), hflip=0.5)
# Users' own data: our choice, not the paper's. Mild and orientation-preserving (no vertical
# flip: street scenes and portraits are not upside-down); pass an AugmentSpec to change it.
FOLDER_AUGMENT = AugmentSpec(
    rotation=(-22.0, 22.0), scale=(0.75, 1.25), hflip=0.5,
    brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02,
)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Return a CPU generator seeded from (seed, epoch, index) (`seeding.derive_seed`: neighbouring
    items and epochs get unrelated streams; seed + index would make item i of seed s equal item
    i-1 of seed s+1)."""
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {(seed, epoch, index)}")
    return seeded_generator("augment", seed, epoch, index)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass(frozen=True)
class AffineParams:
    """One concrete geometric transform: rotate by ``angle`` degrees and zoom by ``scale`` about
    the image centre, then flip."""

    angle: float = 0.0
    scale: float = 1.0
    hflip: bool = False
    vflip: bool = False


def sample_affine(spec: AugmentSpec, generator: torch.Generator) -> AffineParams:
    """Draw rotation, scale and flips from ``spec`` (always four draws, so later draws from the
    same generator do not depend on which augmentations are switched on)."""
    angle = _uniform(*spec.rotation, generator)
    scale = _uniform(*spec.scale, generator)
    hflip = float(torch.rand((), generator=generator)) < spec.hflip
    vflip = float(torch.rand((), generator=generator)) < spec.vflip
    return AffineParams(angle=angle, scale=scale, hflip=hflip, vflip=vflip)


def _affine_theta(params: AffineParams, height: int, width: int) -> torch.Tensor:
    """The (1, 2, 3) matrix mapping output to input normalised coordinates for ``affine_grid``.

    In centred pixel units the forward map is p_out = scale * R(angle) p_in, so each output
    pixel samples p_in = R(-angle) p_out / scale. ``affine_grid`` works in coordinates
    normalised to [-1, 1] per axis, hence the conjugation by D = diag(W/2, H/2), which keeps
    rotations rigid on non-square images.
    """
    a = math.radians(params.angle)
    cos, sin = math.cos(a) / params.scale, math.sin(a) / params.scale
    inverse = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64)  # R(-a) / scale
    d = torch.diag(torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64))
    linear = torch.linalg.inv(d) @ inverse @ d
    theta = torch.cat([linear, torch.zeros(2, 1, dtype=torch.float64)], dim=1)
    return theta.unsqueeze(0).float()


def apply_affine(
    image: torch.Tensor, mask: torch.Tensor, params: AffineParams, *, mask_mode: MaskMode = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one geometric transform to an image (C, H, W) and its mask (1, H, W) together.

    The mask comes back exactly {0, 1}: bilinear resampling thresholded at 0.5, or nearest; a label
    map ("labels") keeps its class indices (nearest), with IGNORE where the input had no pixel.
    Ignored pixels (`labels.IGNORE`) are resampled as a map of their own and win where at least
    half of a pixel's footprint was ignored; pixels brought in from outside the image are background.
    """
    _, height, width = image.shape
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
    if params.angle % 360.0 != 0.0 or params.scale != 1.0:
        theta = _affine_theta(params, height, width)
        grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
        image = F.grid_sample(
            image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )[0].clamp_(0.0, 1.0)
        if mask_mode == "labels":  # shifted by one so the zero padding comes back as IGNORE (-1)
            mask = F.grid_sample((mask - IGNORE)[None].float(), grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False)[0] + IGNORE
        else:
            ignored = mask < 0
            maps = torch.cat([mask.clamp(min=0), ignored.float()]) if ignored.any() else mask
            sampled = F.grid_sample(
                maps[None].float(), grid, mode=mask_mode, padding_mode="zeros", align_corners=False
            )[0] >= 0.5
            channels = mask.shape[0]
            mask = (torch.where(sampled[channels:], IGNORE, sampled[:channels].float()) if ignored.any()
                    else sampled.float())
    if params.hflip:
        image, mask = image.flip(-1), mask.flip(-1)
    if params.vflip:
        image, mask = image.flip(-2), mask.flip(-2)
    return image.contiguous(), mask.contiguous()


# Colour jitter, with torchvision's definitions (torchvision.transforms.functional), on [0, 1] RGB.

def _grayscale(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, (1, H, W): the weights torchvision and PIL use."""
    r, g, b = image.unbind(0)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(0)


def _blend(image: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * image + (1.0 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply by ``factor`` (0 gives black, 1 the original)."""
    return _blend(image, torch.zeros_like(image), factor)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean grey level of the image (0 gives a uniform grey image)."""
    return _blend(image, _grayscale(image).mean().expand_as(image), factor)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's own greyscale version (0 gives greyscale)."""
    return _blend(image, _grayscale(image).expand_as(image), factor)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image.unbind(0)
    maxc, _ = image.max(0)
    minc, _ = image.min(0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0.0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(0)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    # Sector i of the hue circle picks which of (v, t, p, q) goes to R, G and B.
    choices = torch.stack([
        torch.stack([v, q, p, p, t, v]),
        torch.stack([t, v, v, q, p, p]),
        torch.stack([p, p, t, v, v, q]),
    ])  # (3, 6, H, W)
    return choices.gather(1, i.expand(3, 1, *i.shape)).squeeze(1)


def adjust_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]) in HSV space."""
    if not -0.5 <= shift <= 0.5:
        raise ValueError(f"hue shift must be in [-0.5, 0.5], got {shift}")
    hsv = _rgb_to_hsv(image)
    hsv = torch.stack([(hsv[0] + shift) % 1.0, hsv[1], hsv[2]])
    return _hsv_to_rgb(hsv).clamp(0.0, 1.0)


def color_jitter(image: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue changes in a random order, as
    torchvision's ``ColorJitter``; a no-op (and no draws) when all four ranges are 0."""
    if image.shape[0] != 3:
        raise ValueError(f"colour jitter needs a 3-channel RGB image, got {tuple(image.shape)}")
    ops = []
    for name, fn in (("brightness", adjust_brightness), ("contrast", adjust_contrast),
                     ("saturation", adjust_saturation)):
        v = getattr(spec, name)
        if v > 0:
            ops.append((fn, _uniform(max(0.0, 1.0 - v), 1.0 + v, generator)))
    if spec.hue > 0:
        ops.append((adjust_hue, _uniform(-spec.hue, spec.hue, generator)))
    if not ops:
        return image
    for k in torch.randperm(len(ops), generator=generator).tolist():
        fn, value = ops[k]
        image = fn(image, value)
    return image


def augment_pair(
    image: torch.Tensor, mask: torch.Tensor, spec: AugmentSpec, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometry on both, then colour on the image only: the dataset-facing entry point."""
    params = sample_affine(spec, generator)
    image, mask = apply_affine(image, mask, params, mask_mode=spec.mask_mode)
    return color_jitter(image, spec, generator), mask
