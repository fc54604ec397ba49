"""Boundary maps and the DAVIS boundary F-measure, batched in torch.

The lower-level half of `segdiff.metrics`: everything here takes bool tensors of shape
(B, H, W) that are already validated. Call `segdiff.metrics.boundary_f` /
`boundary_f_mean` for the checked public API with the project's empty-mask rule.

Definitions follow the DAVIS evaluation (Perazzi et al. 2016; `db_eval_boundary` and
`seg2bmap` of the davis-2017 toolkit), re-implemented so that a whole batch runs as a few
tensor operations instead of a Python loop per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["boundary_map", "disk_footprint", "dilate", "boundary_f_from_maps"]


def boundary_map(masks: Tensor) -> Tensor:
    """Return the one-pixel boundary map of each mask, as DAVIS's `seg2bmap` draws it.

    A pixel is a boundary pixel when its value differs from its east, south or south-east
    neighbour. Outside the image every pixel is taken to equal its nearest inside pixel
    (replicate padding), so the image border itself is never a boundary: a mask that
    touches the border has no boundary along it, and an all-foreground mask has none at
    all. This places the boundary half a pixel towards the origin: on the background side
    of top and left edges, on the foreground side of bottom and right edges.

    masks: bool (B, H, W). Returns bool (B, H, W).
    """
    padded = torch.cat([masks, masks[:, :, -1:]], dim=2)  # replicate the last column
    padded = torch.cat([padded, padded[:, -1:, :]], dim=1)  # then the last row: (B, H+1, W+1)
    centre = padded[:, :-1, :-1]  # (B, H, W)
    east = padded[:, :-1, 1:]
    south = padded[:, 1:, :-1]
    south_east = padded[:, 1:, 1:]
    return (centre != east) | (centre != south) | (centre != south_east)


def disk_footprint(radius: int, device: torch.device | str | None = None) -> Tensor:
    """Return the disk of the given radius as a float32 (2r+1, 2r+1) 0/1 kernel.

    Offsets (dy, dx) with dy² + dx² <= r², the same set as `skimage.morphology.disk(r)`,
    which DAVIS uses for its matching tolerance.
    """
    offsets = torch.arange(-radius, radius + 1, device=device)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).to(torch.float32)


def dilate(maps: Tensor, radius: int) -> Tensor:
    """Dilate bool maps (B, H, W) by a disk of `radius` pixels; outside the image is empty.

    A convolution with the 0/1 disk kernel counts the set pixels under the disk; any
    positive count means a set pixel lies within the radius. The counts are small integers,
    exact in float32.
    """
    if radius == 0:
        return maps.clone()
    kernel = disk_footprint(radius, device=maps.device)[None, None]  # (1, 1, 2r+1, 2r+1)
    counts = F.conv2d(maps[:, None].to(torch.float32), kernel, padding=radius)  # (B, 1, H, W)
    return counts[:, 0] > 0.5


def boundary_f_from_maps(
    pred_boundary: Tensor, target_boundary: Tensor, radius: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Return DAVIS boundary (F, precision, recall), each float64 (B,), from boundary maps.

    precision = |B_P ∩ dilate(B_G, r)| / |B_P|   (predicted boundary pixels near a true one)
    recall    = |B_G ∩ dilate(B_P, r)| / |B_G|   (true boundary pixels near a predicted one)
    F = 2 P R / (P + R), and 0 when P + R = 0.

    Empty boundary maps follow `db_eval_boundary`: both empty gives P = R = 1; only the
    prediction's empty gives P = 1, R = 0; only the target's empty gives P = 0, R = 1 (so F = 0
    whenever exactly one is empty). `segdiff.metrics.boundary_f` adds the mask-level rule.
    """
    pred_matched = (pred_boundary & dilate(target_boundary, radius)).sum(dim=(1, 2))
    target_matched = (target_boundary & dilate(pred_boundary, radius)).sum(dim=(1, 2))
    n_pred = pred_boundary.sum(dim=(1, 2)).to(torch.float64)
    n_target = target_boundary.sum(dim=(1, 2)).to(torch.float64)

    # An empty map scores 1 on its own side; the other side then has nothing to match
    # (its dilation is empty), which yields the 0 of the one-empty cases.
    precision = torch.where(n_pred > 0, pred_matched / n_pred.clamp(min=1), 1.0)
    recall = torch.where(n_target > 0, target_matched / n_target.clamp(min=1), 1.0)

    total = precision + recall
    f_measure = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-300), 0.0)
    return f_measure, precision, recall
