"""A dataset's test protocol: how one item is fed to a model, and at what size it is scored.

One `Protocol` object per dataset (docs/paper.md, "Inference"), shared by training validation,
`segdiff evaluate` and the U-Net baseline, so a change here moves every score alike:

- ``vaihingen``, ``folder``, ``nnunet``, ``synthetic``: the whole image. The dataset is built at
  the scoring side (`score_size`, default the model's input); an image larger than the input is
  resized to it (bilinear, antialiased) for the model, and the probabilities are resized back
  (bilinear) to the scoring size before any threshold.
- ``monuseg``: items are the whole resized image, 2S x 2S by default (512 for S = 256), or
  `resize` (a multiple of S); it is covered by S x S tiles (the paper's four quadrants at 2S),
  each segmented separately, and stitched (`sliding.predict_tiles`); scored at the paper's 512
  (`dataset.original_mask(i)`, the probabilities resized bilinearly first when the side differs).
- ``camvid``: the whole frame, resized to S x S for the model; the class probabilities are resized
  bilinearly back to the 480x360 labels (`dataset.original_mask(i)`) before the argmax.
- ``cityscapes``: instance crops sampled at the model's input, the probability resized bilinearly
  to each crop's original size and scored against `dataset.original_mask(i)`; the mean over each
  class's instances, then over classes.

Seeds: generation k of an item named NAME (of its quadrant q for MoNuSeg) is seeded with
`sampling.generation_seeds(derive_seed(seed, NAME), K, q)[k]`: it depends on (seed, NAME, q, k)
alone, so a score depends neither on the order of the items, nor on how they are batched, nor on
how many processes share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import DATASETS, resize_image
from .sampling import Prediction, generation_seeds
from .sliding import predict_tiles

# The paper's reported numbers (Amit et al. 2021, arXiv 2112.00390, Tables 1-3; docs/paper.md), in
# percent: test splits, K = 30 generations, DDPM with all T steps. The paper's WCov column is filed
# under `wcov_size_ratio` because the authors' code, which produced it, computes
# min(|P|,|G|)/max(|P|,|G|), not the DSAC/DarNet weighted coverage it is compared with there.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "vaihingen": {"f1": 95.14, "iou": 91.12, "wcov_size_ratio": 93.83, "boundf": 85.09},
    "monuseg": {"f1": 81.59, "iou": 69.00},
    "cityscapes-expansion": {"iou": 76.44},  # mean of the eight per-class mIoUs below
    "cityscapes-tight": {"iou": 76.19},
}
# The baselines the paper sets beside SegDiff on MoNuSeg (docs/paper.md, "Reference numbers"), percent.
PAPER_MONUSEG_BASELINES: dict[str, dict[str, float]] = {
    "U-Net": {"f1": 79.43, "iou": 65.99},
    "Medical Transformer": {"f1": 79.55, "iou": 66.17},
}
# Cityscapes crops, expansion setting: mIoU per class (mean over the class's instances).
PAPER_CITYSCAPES_IOU: dict[str, float] = {
    "bicycle": 69.80, "bus": 85.97, "person": 76.09, "train": 75.95, "truck": 80.68,
    "motorcycle": 67.06, "car": 83.40, "rider": 72.57,
}

# Published CamVid test results (11 classes, SegNet's split, 233 test images), per-class IoU in
# percent, in CamVid's class order (data.camvid.CAMVID_CLASSES: sky ... bicyclist). From Yu & Koltun,
# "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016 (arXiv:1511.07122), Table 5:
# Dilation8 is theirs; SegNet (Badrinarayanan et al., arXiv 2015) and DeepLab-LargeFOV (Chen et al.,
# 2015) are that table's comparison rows. Those models train at 640x480, not 480x360.
CAMVID_PUBLISHED_SOURCE = "Yu & Koltun, ICLR 2016 (arXiv:1511.07122), Table 5; test split, 640x480, percent"
CAMVID_PUBLISHED_IOU: dict[str, tuple[float, ...]] = {
    "Dilation8": (89.9, 82.6, 23.4, 92.2, 75.3, 76.2, 46.9, 35.8, 84.0, 56.3, 55.5),
    "DeepLab-LFOV": (89.0, 81.5, 14.3, 92.2, 75.4, 74.6, 42.3, 27.2, 82.2, 48.4, 50.1),
    "SegNet": (87.0, 68.7, 16.0, 86.2, 60.5, 52.0, 13.4, 17.9, 58.5, 25.3, 24.8),
}
CAMVID_PUBLISHED_MIOU: dict[str, float] = {"Dilation8": 65.3, "DeepLab-LFOV": 61.6, "SegNet": 46.4}


def resize_probabilities(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (..., H, W) probability maps to `size`, clamped to [0, 1].

    No antialiasing, as the reference does; the one way a prediction is brought to another size
    (scoring, `segdiff predict`) before the 0.5 threshold.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).clamp(0.0, 1.0)


def item_names(dataset) -> list[str]:
    """The datasets' sample ids (`.names`), or image_00000, ... for a dataset without them."""
    return list(getattr(dataset, "names", None) or [f"image_{i:05d}" for i in range(len(dataset))])


def running_means(generations: Tensor) -> Tensor:
    """(K, ...) generations in [0, 1] -> (K, ...): row k-1 is the mean of the first k.

    Each row is `generations[:k].mean(dim=0)`, the same reduction `Prediction.from_generations`
    applies to all K, so row K-1 is the ensemble's probability and row 0 is generation 0.
    """
    return torch.stack([generations[:k].mean(dim=0) for k in range(1, generations.shape[0] + 1)])


@dataclass(frozen=True)
class Protocol:
    """How a dataset is tested: how items are fed to a model and at what size they are scored."""

    name: str  # one of data.DATASETS
    image_size: int  # the model's input side S
    feed: Literal["whole", "tiles"]  # whole image (resized to S) or MoNuSeg's grid of S x S tiles
    tiled_side: int | None = None  # "tiles": the side of the items, a multiple of S
    score_size: int | None = None  # whole-image protocols: the side masks are scored at (None: S)
    target_from_dataset: bool = False  # Cityscapes: score against dataset.original_mask(i)
    per_class: bool = False  # aggregate per instance class, then over classes (Cityscapes)
    setting: str | None = None  # the Cityscapes crops ("expansion" or "tight") the paper row is for
    paper_key: str | None = None  # key of PAPER_RESULTS, or "camvid" (CAMVID_PUBLISHED_IOU)
    description: str = ""

    @property
    def dataset_size(self) -> int:
        """The `image_size` to build the dataset at: items then come at the protocol's sizes."""
        return self.score_size or self.image_size

    @property
    def item_size(self) -> int:
        """The side of the images the dataset gives (MoNuSeg: the resized image, 2S by default)."""
        return self.tiled_side if self.feed == "tiles" else self.dataset_size

    def check_dataset(self, dataset) -> None:
        """Raise ValueError when `dataset` was built for another setting than this protocol's."""
        built = getattr(dataset, "setting", None)
        if self.setting is not None and built is not None and built != self.setting:
            raise ValueError(f"the {self.name} protocol is for {self.setting!r} crops but the dataset gives "
                             f"{built!r} crops; build both with the same setting")

    def check_item(self, name: str, image: Tensor, mask: Tensor) -> None:
        """Raise ValueError naming the item when it does not have the protocol's shape."""
        side = self.item_size
        if image.ndim != 3 or tuple(image.shape[-2:]) != (side, side):
            raise ValueError(f"{name}: the dataset gives an image of shape {tuple(image.shape)}, the {self.name} "
                             f"protocol needs (C, {side}, {side}); build the dataset at "
                             f"image_size={self.dataset_size}")
        if mask.ndim != 3:
            raise ValueError(f"{name}: expected a mask of shape (C, H, W), found {tuple(mask.shape)}")
        if not self.target_from_dataset and mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"{name}: image and mask differ in size: {tuple(image.shape[-2:])} and "
                             f"{tuple(mask.shape[-2:])}")

    def target(self, dataset, index: int, mask: Tensor) -> Tensor:
        """The mask (C, h, w) item `index` is scored against."""
        return dataset.original_mask(index) if self.target_from_dataset else mask

    def predict_items(self, model, images: list[Tensor], sample, image_seeds: list[int],
                      sizes: list[tuple[int, int]]) -> list[tuple[Tensor, Tensor]]:
        """For each item: the running means (K, C, h, w) of its generations and the uncertainty
        (C, h, w), at its scoring size in `sizes`; `model` is any `models.Segmenter`, `sample` a
        SampleConfig. The items are sampled in one batch; each generation's noise comes from its
        own seed, so an item's result does not depend on its batch beyond float rounding."""
        k = model.num_generations(sample)
        if self.feed == "tiles":
            count = (self.tiled_side // self.image_size) ** 2
            seeds = [s for seed in image_seeds for tile in range(count) for s in generation_seeds(seed, k, tile)]
            pred = predict_tiles(model, torch.stack(images), sample, tile=self.image_size, seeds=seeds,
                                 keep_generations=True)
            return [(resize_probabilities(running_means(g.cpu()), size), resize_probabilities(u.cpu(), size))
                    for g, u, size in zip(pred.generations, pred.uncertainty, sizes)]
        batch = torch.stack([resize_image(image, self.image_size) for image in images])
        seeds = [s for seed in image_seeds for s in generation_seeds(seed, k)]
        generations = model.generations(batch, seeds, sample).cpu()  # (B, K, C, S, S)
        uncertainty = Prediction.from_generations(generations).uncertainty
        return [(resize_probabilities(running_means(g), size), resize_probabilities(u, size))
                for g, u, size in zip(generations, uncertainty, sizes)]

    def predict_item(self, model, image: Tensor, sample, image_seed: int,
                     size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """`predict_items` for one item."""
        return self.predict_items(model, [image], sample, [image_seed], [size])[0]


def protocol_for(dataset: str, image_size: int, *, score_size: int | None = None,
                 setting: str = "expansion", resize: int = 0) -> Protocol:
    """The test protocol of dataset `dataset` (a name in data.DATASETS) for a model of input `image_size`.

    `score_size` applies to the whole-image protocols; MoNuSeg and Cityscapes fix their own
    scoring resolution. `setting` names the Cityscapes crops ("expansion" or "tight"); `resize`
    the side MoNuSeg's images are resized to (0: 2 x `image_size`, the paper's; DataConfig.resize).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")
    if score_size is not None and dataset in ("monuseg", "cityscapes"):
        raise ValueError(f"score_size applies to images scored whole at one size; the {dataset} "
                         "protocol fixes its own scoring resolution")
    side = f"{image_size}x{image_size}"
    if dataset == "monuseg":
        full = resize or 2 * image_size
        if full < image_size or full % image_size:
            raise ValueError(f"MoNuSeg: resize={resize} must be a multiple of the model input {image_size}")
        n = full // image_size
        grid = "four" if n == 2 else f"{n}x{n}"
        scored = "metrics at 512x512" if full == 512 else "the probabilities resized to 512x512 and scored there"
        return Protocol("monuseg", image_size, "tiles", tiled_side=full, target_from_dataset=True, paper_key="monuseg",
                        description=f"MoNuSeg: images resized to {full}x{full}, {grid} {side} tiles sampled separately "
                        f"and stitched, {scored} (paper: 512 from four 256 quadrants)")
    if dataset == "cityscapes":
        return Protocol("cityscapes", image_size, "whole", target_from_dataset=True, per_class=True,
                        setting=setting, paper_key=f"cityscapes-{setting}",
                        description=f"Cityscapes instance crops ({setting}): sampled at {side}, the probability "
                        "resized bilinearly to each crop's original size before the 0.5 threshold; mean over "
                        "the instances of each class, then over classes")
    if dataset == "camvid":
        if score_size is not None:
            raise ValueError("score_size: the camvid protocol scores at the labels' own 480x360")
        return Protocol("camvid", image_size, "whole", target_from_dataset=True, paper_key="camvid",
                        description=f"CamVid: sampled at {side}, the class probabilities resized bilinearly to "
                        "the 480x360 labels before the argmax; void ignored; one confusion matrix over the split")
    scored = (f"images and masks at the model input, {side}" if score_size in (None, image_size) else
              f"sampled at the model input {side}, the probabilities resized bilinearly to "
              f"{score_size}x{score_size} and scored against the {score_size}x{score_size} masks")
    what = {"vaihingen": "Vaihingen buildings", "folder": "image folder", "nnunet": "nnU-Net raw dataset",
            "synthetic": "built-in synthetic shapes"}
    return Protocol(dataset, image_size, "whole", score_size=score_size,
                    paper_key="vaihingen" if dataset == "vaihingen" else None,
                    description=f"{what.get(dataset, dataset)}: {scored}")
