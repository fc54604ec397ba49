"""Sliding-window inference: segment an image of any size at its native resolution.

The image is covered by `tile`-sized windows (the model's input size) that overlap by at least
`overlap` pixels; windows are spaced evenly so that the first starts at 0 and the last ends at the
border. Each window is segmented with `sampling.predict` (F(I) once per window, its K generations
batched) and the windows' probability and uncertainty maps are blended with per-pixel weights:

- ``linear`` (default): inside a window the weight is 1, except across the strip it shares with a
  neighbour, where it ramps linearly so that the two windows' weights sum to 1 (a cross-fade;
  with overlaps beyond half a window three windows can meet, and dividing by the summed weights
  still gives a weighted mean). A pixel that only one window covers takes that window's value
  unchanged, so with ``overlap=0`` the windows are simply stitched, bit for bit. With an image
  twice the window side that is the MoNuSeg test protocol (Amit et al.; docs/paper.md
  "Inference": resize to 512, sample the four 256x256 quadrants, stitch):
  ``predict_sliding(model, resize_image(image, 512), ..., overlap=0)`` gives exactly what
  `quadrants` + `predict` + `stitch_quadrants` give with the same seeds (bit for bit
  when the four windows share one call, ``max_batch >= 4 K``; else up to float rounding).
- ``gaussian``: a Gaussian centred on the window (sigma = tile / 8, as nnU-Net and MONAI use),
  which favours window centres everywhere; not exact at ``overlap=0``.

The uncertainty (std of the K generations) is blended with the same weights: exact where one
window covers a pixel, a weighted mean of the windows' stds across overlaps.

Sides shorter than `tile` are padded by reflection (replication where the image is too small to
reflect) and the padding is cropped off the result.

Windows are processed a few at a time (as many as fit `max_batch` rows with K generations each,
at least one), so the network's memory is bounded by `max_batch` whatever the image size; only
the blended maps grow with the image.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import SampleConfig
from .sampling import Prediction, draw_seeds, generation_seeds, resolve_sample

Blend = Literal["linear", "gaussian"]
BLENDS: tuple[str, ...] = get_args(Blend)


def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of side `tile` covering [0, length), overlapping >= `overlap`.

    >>> window_starts(512, 256, 0)
    [0, 256]
    >>> window_starts(600, 256, 32)
    [0, 172, 344]
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap={overlap} must be in [0, {tile - 1}] for windows of {tile} px")
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def window_weights(starts: Sequence[int], tile: int, blend: Blend) -> list[Tensor]:
    """One 1-D weight profile (tile,) per window along an axis (float64)."""
    if blend == "gaussian":
        centre, sigma = (tile - 1) / 2, tile / 8
        x = torch.arange(tile, dtype=torch.float64)
        profile = torch.exp(-((x - centre) ** 2) / (2 * sigma**2)).clamp(min=1e-3)
        return [profile for _ in starts]
    if blend != "linear":
        raise ValueError(f"blend={blend!r} is not valid; choose one of {', '.join(BLENDS)}")
    profiles = []
    for j, start in enumerate(starts):
        w = torch.ones(tile, dtype=torch.float64)
        left = starts[j - 1] + tile - start if j > 0 else 0  # pixels shared with the previous window
        right = start + tile - starts[j + 1] if j + 1 < len(starts) else 0
        if left > 0:  # rising 1/(left+1) .. left/(left+1) across the shared strip
            w[:left] = torch.minimum(w[:left], torch.arange(1, left + 1, dtype=torch.float64) / (left + 1))
        if right > 0:  # falling right/(right+1) .. 1/(right+1)
            ramp = torch.arange(right, 0, -1, dtype=torch.float64) / (right + 1)
            w[tile - right:] = torch.minimum(w[tile - right:], ramp)
        profiles.append(w)
    return profiles


def _pad_to(image: Tensor, tile: int) -> Tensor:
    """Pad (C, H, W) at the bottom/right to at least tile x tile (reflect, else replicate)."""
    h, w = image.shape[-2:]
    pad_h, pad_w = max(0, tile - h), max(0, tile - w)
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]


@torch.no_grad()
def predict_sliding(model, image: Tensor, sample: SampleConfig | None = None, *, tile: int | None = None,
                    overlap: int = 0, blend: Blend = "linear", generator: torch.Generator | None = None,
                    image_seed: int | None = None, **overrides) -> Prediction:
    """Segment one image (C, H, W) or (1, C, H, W) of any size with overlapping windows.

    `model` is any `models.Segmenter`; `sample` its sampling settings (keyword `overrides` replace
    fields, as in `sampling.predict`). Returns a `Prediction` of shape (1, C, H, W). Windows are
    taken in row-major order; window i's generation k is seeded with
    `generation_seeds(image_seed, K, i)[k]` when `image_seed` is given (the result then depends on
    (image_seed, i, k) only), else from seeds drawn from `generator` in that order.
    `tile` defaults to the model's input size.
    """
    sample = resolve_sample(sample, overrides)
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"predict_sliding takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    tile = tile or model.config.model.image_size
    h, w = image.shape[-2:]
    padded = _pad_to(image, tile)
    ph, pw = padded.shape[-2:]
    rows, cols = window_starts(ph, tile, overlap), window_starts(pw, tile, overlap)
    row_w, col_w = window_weights(rows, tile, blend), window_weights(cols, tile, blend)
    windows = [(i, j) for i in range(len(rows)) for j in range(len(cols))]  # row-major
    k = model.num_generations(sample)
    if image_seed is not None:
        seeds = [s for n in range(len(windows)) for s in generation_seeds(image_seed, k, n)]
    else:
        seeds = draw_seeds(len(windows) * k, generator)

    # Blending happens on the CPU in float64 (exact for a single window's weight 1; MPS has no float64).
    channels = model.config.model.prob_channels
    prob_sum = torch.zeros(channels, ph, pw, dtype=torch.float64)
    unc_sum = torch.zeros(1 if channels > 1 else channels, ph, pw, dtype=torch.float64)  # multi-class: entropy
    dis_sum = torch.zeros(1, ph, pw, dtype=torch.float64) if channels > 1 else None  # multi-class: mutual information
    weight_sum = torch.zeros(ph, pw, dtype=torch.float64)
    per_call = max(1, sample.max_batch // k)  # windows per call: F(I) memory stays bounded too
    for first in range(0, len(windows), per_call):
        group = windows[first:first + per_call]
        crops = torch.stack([padded[:, rows[i]:rows[i] + tile, cols[j]:cols[j] + tile] for i, j in group])
        pred = Prediction.from_generations(model.generations(crops, seeds[first * k:(first + len(group)) * k], sample))
        for n, (i, j) in enumerate(group):
            weight = row_w[i][:, None] * col_w[j][None, :]  # (tile, tile)
            window = (slice(rows[i], rows[i] + tile), slice(cols[j], cols[j] + tile))
            prob_sum[(slice(None), *window)] += weight * pred.prob[n].cpu()
            unc_sum[(slice(None), *window)] += weight * pred.uncertainty[n].cpu()
            if dis_sum is not None:
                dis_sum[(slice(None), *window)] += weight * pred.disagreement[n].cpu()
            weight_sum[window] += weight
    blended = [(total / weight_sum)[:, :h, :w].float()[None] if total is not None else None
               for total in (prob_sum, unc_sum, dis_sum)]
    return Prediction.from_maps(*blended)


def tiles(x: torch.Tensor, n: int) -> torch.Tensor:
    """Split (..., C, H, W) into an n x n grid of equal tiles (..., n*n, C, H/n, W/n), row-major
    (for n = 2: top-left, top-right, bottom-left, bottom-right)."""
    h, w = x.shape[-2:]
    if x.dim() < 3 or n < 1 or h % n or w % n:
        raise ValueError(f"tiles needs (..., C, H, W) with H and W divisible by {n}, got {tuple(x.shape)}")
    th, tw = h // n, w // n
    grid = x.unflatten(-2, (n, th)).unflatten(-1, (n, tw))  # (..., C, n, th, n, tw)
    return grid.movedim((-4, -2), (-5, -4)).flatten(-5, -4)  # (..., n*n, C, th, tw)


def stitch_tiles(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`tiles`: (..., n*n, C, h, w) -> (..., C, n*h, n*w)."""
    n = math.isqrt(t.shape[-4]) if t.dim() >= 4 else 0
    if n * n != (t.shape[-4] if t.dim() >= 4 else -1) or n == 0:
        raise ValueError(f"stitch_tiles needs (..., n*n, C, h, w), got {tuple(t.shape)}")
    grid = t.unflatten(-4, (n, n))  # (..., n, n, C, h, w)
    grid = grid.movedim((-5, -4), (-4, -2))  # (..., C, n, h, n, w)
    return grid.flatten(-4, -3).flatten(-2, -1)


def quadrants(x: torch.Tensor) -> torch.Tensor:
    """Split (..., C, H, W) into its four quadrants (..., 4, C, H/2, W/2): ``tiles(x, 2)``.

    Order: top-left, top-right, bottom-left, bottom-right. The MoNuSeg test protocol samples
    the four 256x256 quadrants of the 512x512 image separately (:func:`predict_quadrants`).
    """
    h, w = x.shape[-2:]
    if x.dim() < 3 or h % 2 or w % 2:
        raise ValueError(f"quadrants needs (..., C, H, W) with even H and W, got {tuple(x.shape)}")
    return tiles(x, 2)


def stitch_quadrants(q: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quadrants`: (..., 4, C, h, w) -> (..., C, 2h, 2w)."""
    if q.dim() < 4 or q.shape[-4] != 4:
        raise ValueError(f"stitch_quadrants needs (..., 4, C, h, w), got {tuple(q.shape)}")
    return stitch_tiles(q)


@torch.no_grad()
def predict_tiles(model, images: Tensor, sample: SampleConfig | None = None, *, tile: int,
                  seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                  keep_generations: bool = False, **overrides) -> Prediction:
    """Segment (B, C_in, nS, nS) images as an n x n grid of S x S tiles (S = `tile`), each
    sampled separately by `model` (any `models.Segmenter`), and stitch every output back.

    The MoNuSeg protocol: n = 2 is the paper's four quadrants (:func:`predict_quadrants`); a CPU
    model trained on smaller crops covers the image with more tiles. The rows
    `model.generations` sees are image-major, then tile (row-major), then generation, so
    `seeds[(i * n*n + q) * K + k]` seeds generation k of tile q of image i.
    """
    sample = resolve_sample(sample, overrides)
    side = images.shape[-1]
    if images.dim() != 4 or images.shape[-2] != side or side % tile:
        raise ValueError(f"predict_tiles needs square (B, C, H, W) images with a side divisible by the tile "
                         f"{tile}, got {tuple(images.shape)}")
    n = side // tile
    parts = tiles(images, n).flatten(0, 1)  # (n*n B, C_in, S, S)
    k = model.num_generations(sample)
    seeds = draw_seeds(len(parts) * k, generator) if seeds is None else seeds
    generations = model.generations(parts, seeds, sample)  # (n*n B, K, C, S, S)
    # (B, n*n, K, C, S, S) -> (B, K, n*n, C, S, S) -> (B, K, C, nS, nS)
    stitched = stitch_tiles(generations.unflatten(0, (-1, n * n)).transpose(1, 2))
    return Prediction.from_generations(stitched, keep=keep_generations)


@torch.no_grad()
def predict_quadrants(model, images: Tensor, sample: SampleConfig | None = None, *,
                      seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                      keep_generations: bool = False, **overrides) -> Prediction:
    """MoNuSeg's test protocol on (B, C_in, 2S, 2S) images: each image's four S x S quadrants are
    segmented by `model` (any `models.Segmenter`) and every output is stitched back to 2S x 2S.

    The rows `model.generations` sees are image-major, then quadrant (`quadrants` order), then
    generation, so `seeds[(i * 4 + q) * K + k]` seeds generation k of quadrant q of image i.
    """
    return predict_tiles(model, images, sample, tile=images.shape[-1] // 2, seeds=seeds, generator=generator,
                         keep_generations=keep_generations, **overrides)
