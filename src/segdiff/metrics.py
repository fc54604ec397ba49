"""Per-image metrics for binary segmentation, as the SegDiff paper reports them, and the
confusion-matrix scores of label maps (multi-class, the Cityscapes/CamVid convention).

Conventions (they hold for every function here):
- Masks are torch tensors or numpy arrays of shape (B, H, W), or (H, W) for one image
  (treated as B = 1), or (B, C, H, W) with a class axis: one binary map per class (one-hot
  masks, or per-class probabilities). Values are bool or numeric {0, 1}; anything else raises
  ValueError naming the values found. Prediction and target must have the same shape.
- Probabilities (calibration functions) are floats in [0, 1] of the same shapes.
- Every score function returns a float64 tensor of shape (B,), one score per image, or (B, C),
  one per image and class, for (B, C, H, W) inputs (each class map scored as its own binary
  mask, with the same empty-mask rule), on the prediction's device. Aggregation is a separate call: `mean_over_images`, or
  `mean_over_classes` for Cityscapes (mean over instances of a class, then over classes).
- Empty masks: when prediction and target are both empty the score is perfect (1.0); when
  exactly one is empty it is 0.0. Each docstring repeats what that means for its metric.
- Inputs are never written to; nothing is cached between calls.

Label maps (section "Label maps"): integer class maps (B, H, W), pixels equal to `ignore_index`
left out. `confusion_matrix` counts (truth, prediction) pairs, summed over a split by the caller;
`confusion_scores` gives per-class IoU TP / (TP + FP + FN), their mean (mIoU), pixel accuracy
and mean class accuracy from it: one ratio per class over the whole split, so a class absent
from an image costs nothing there. `mean_iou_per_image` is the second view: each image's mean
over the classes present in its prediction or its target, then the mean over images.

Uncertainty of a prediction (section "Per-image uncertainty"): one number per image from its K
generations, with no ground truth, to rank images by how much to trust them: `mean_entropy` (of
the mean prediction, over all pixels) and `boundary_disagreement` (the generations' variance on
the predicted object and a band around it; binary only). Section "Failure detection" scores
such a per-image score against the images' true quality over a split: `spearman`,
`failure_auroc` (does it pick out the worst images?) and `risk_coverage_area`.

Two coverages are offered because the literature and the SegDiff reference code disagree:
`weighted_coverage` is the definition the DSAC / DarNet tables use, `size_ratio_coverage` is
what the SegDiff authors' code computes under the name WCov.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from segdiff.encoding import entropy
from segdiff.metrics_boundary import boundary_f_from_maps, boundary_map, dilate

__all__ = [
    "iou",
    "f1",
    "boundary_f",
    "boundary_f_mean",
    "weighted_coverage",
    "size_ratio_coverage",
    "calibration_score",
    "expected_calibration_error",
    "ece_from_bins",
    "reliability_diagram",
    "ReliabilityDiagram",
    "mean_over_images",
    "mean_over_classes",
    "confusion_matrix",
    "confusion_scores",
    "mean_iou_per_image",
    "top_label_bins",
    "brier_score",
    "mean_entropy",
    "boundary_disagreement",
    "spearman",
    "worst_fraction",
    "failure_auroc",
    "risk_coverage_area",
]

ArrayLike = Tensor | np.ndarray


# ---------------------------------------------------------------------------------------------
# Input checks


def _as_tensor(x: ArrayLike, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        # A copy only when numpy's strides are negative or odd; torch never writes to it.
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, found {type(x).__name__}")


def _class_axis(metric: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Let a per-image `metric` take (B, C, H, W) inputs and return (B, C): each class map is
    scored as its own binary mask (image b, class c is row b * C + c of the flattened batch)."""
    first = metric.__code__.co_varnames[0]  # "pred" or "prob", for the error messages

    @functools.wraps(metric)
    def with_class_axis(x: ArrayLike, target: ArrayLike, *args, **kwargs) -> Tensor:
        x_t, target_t = _as_tensor(x, first), _as_tensor(target, "target")
        if x_t.ndim != 4:
            return metric(x_t, target_t, *args, **kwargs)
        _check_same_shape(x_t, target_t, (first, "target"))
        return metric(x_t.flatten(0, 1), target_t.flatten(0, 1), *args, **kwargs).reshape(x_t.shape[:2])

    return with_class_axis


def _check_same_shape(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, found "
            f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)}"
        )


def _check_shapes(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    _check_same_shape(a, b, names)
    if a.ndim not in (2, 3):
        raise ValueError(
            f"expected masks of shape (B, H, W), (H, W) or (B, C, H, W), found {a.ndim} dimensions "
            f"{tuple(a.shape)}"
        )
    if a.shape[-1] == 0 or a.shape[-2] == 0 or (a.ndim == 3 and a.shape[0] == 0):
        raise ValueError(
            f"expected at least one image of at least one pixel, found {tuple(a.shape)}"
        )


def _to_mask(x: Tensor, name: str) -> Tensor:
    """Return a bool (B, H, W) copy of a validated {0, 1} mask."""
    if x.dtype != torch.bool:
        if x.is_complex() or not bool(((x == 0) | (x == 1)).all()):
            found = torch.unique(x.detach().cpu().flatten())
            shown = ", ".join(f"{v:g}" for v in found[:8].tolist())
            more = f" and {found.numel() - 8} more" if found.numel() > 8 else ""
            raise ValueError(
                f"{name}: expected a binary mask with values in {{0, 1}} (or bool), found "
                f"{found.numel()} distinct values: {shown}{more}; threshold it first"
            )
    masks = x != 0  # a new tensor: the input is never modified
    return masks[None] if masks.ndim == 2 else masks


def _mask_pair(pred: ArrayLike, target: ArrayLike) -> tuple[Tensor, Tensor]:
    """Validate a (prediction, target) pair; return bool (B, H, W) tensors on pred's device."""
    pred_t, target_t = _as_tensor(pred, "pred"), _as_tensor(target, "target")
    _check_shapes(pred_t, target_t, ("pred", "target"))
    return _to_mask(pred_t, "pred"), _to_mask(target_t, "target").to(pred_t.device)


def _apply_empty_rule(score: Tensor, pred: Tensor, target: Tensor) -> Tensor:
    """Both masks empty: 1.0; exactly one empty: 0.0; otherwise the score unchanged."""
    pred_empty = ~pred.flatten(1).any(dim=1)
    target_empty = ~target.flatten(1).any(dim=1)
    score = torch.where(pred_empty & target_empty, 1.0, score)
    return torch.where(pred_empty ^ target_empty, 0.0, score)


# ---------------------------------------------------------------------------------------------
# Overlap


@_class_axis
def iou(pred: ArrayLike, target: ArrayLike) -> Tensor:
    """Foreground intersection over union per image: |P∩G| / |P∪G|, float64 (B,).

    The paper's "mIoU" is the mean of this over images. Both masks empty: 1.0 (0/0 taken as
    a perfect match; the reference code returns 0 there). Exactly one empty: 0.0.
    """
    p, g = _mask_pair(pred, target)
    intersection = (p & g).flatten(1).sum(dim=1).to(torch.float64)
    union = (p | g).flatten(1).sum(dim=1).to(torch.float64)
    return _apply_empty_rule(intersection / union.clamp(min=1), p, g)


@_class_axis
def f1(pred: ArrayLike, target: ArrayLike) -> Tensor:
    """Foreground pixel F1 (Dice) per image: 2|P∩G| / (|P| + |G|), float64 (B,).

    Both masks empty: 1.0. Exactly one empty: 0.0.
    """
    p, g = _mask_pair(pred, target)
    intersection = (p & g).flatten(1).sum(dim=1).to(torch.float64)
    sizes = (p.flatten(1).sum(dim=1) + g.flatten(1).sum(dim=1)).to(torch.float64)
    return _apply_empty_rule(2 * intersection / sizes.clamp(min=1), p, g)


# ---------------------------------------------------------------------------------------------
# Boundary


def _check_radius(radius: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be an integer number of pixels >= 0, found {radius!r}")


@_class_axis
def boundary_f(pred: ArrayLike, target: ArrayLike, radius: int) -> Tensor:
    """DAVIS boundary F-measure at a tolerance of `radius` pixels, float64 (B,).

    Boundary: the one-pixel map of DAVIS's `seg2bmap`: a pixel is on the boundary when it
    differs from its east, south or south-east neighbour, and the image border is never a
    boundary (pixels outside the image copy their nearest inside pixel). A predicted
    boundary pixel is matched when a target boundary pixel lies within the disk
    dy² + dx² <= radius² around it (precision), and vice versa (recall);
    F = 2PR / (P + R), 0 when P + R = 0. See `segdiff.metrics_boundary` for the maps.

    Empty masks: both empty: 1.0; exactly one empty: 0.0. This extends DAVIS, which looks
    only at boundary maps and would give 1.0 to an empty prediction of a full-image target
    (neither has a boundary). Non-empty masks with no boundary (all foreground) follow DAVIS:
    both boundaries empty: 1.0, one empty: 0.0.

    This is per image; DarNet's evaluation pools matched-pixel counts over the whole test set
    before dividing, which weights images by boundary length.
    """
    _check_radius(radius)
    p, g = _mask_pair(pred, target)
    f_measure, _, _ = boundary_f_from_maps(boundary_map(p), boundary_map(g), int(radius))
    return _apply_empty_rule(f_measure, p, g)


@_class_axis
def boundary_f_mean(
    pred: ArrayLike, target: ArrayLike, radii: Sequence[int] = (1, 2, 3, 4, 5)
) -> Tensor:
    """The paper's BoundF: `boundary_f` averaged over radii d = 1..5 px, float64 (B,).

    Same boundary definition and empty-mask rule as `boundary_f` (both empty: 1.0, exactly
    one empty: 0.0); the boundary maps are computed once for all radii.
    """
    if len(radii) == 0:
        raise ValueError("radii must name at least one radius, found an empty sequence")
    for radius in radii:
        _check_radius(radius)
    p, g = _mask_pair(pred, target)
    pred_boundary, target_boundary = boundary_map(p), boundary_map(g)
    per_radius = [boundary_f_from_maps(pred_boundary, target_boundary, int(r))[0] for r in radii]
    return _apply_empty_rule(torch.stack(per_radius).mean(dim=0), p, g)


# ---------------------------------------------------------------------------------------------
# Coverage

# 8-connectivity: pixels touching at a corner belong to the same region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _weighted_coverage_one(pred: np.ndarray, target: np.ndarray) -> float:
    target_labels, n_target = ndimage.label(target, structure=_EIGHT_CONNECTED)
    pred_labels, n_pred = ndimage.label(pred, structure=_EIGHT_CONNECTED)
    if n_target == 0 or n_pred == 0:
        return 0.0  # the empty-mask rule settles these cases
    # overlap[j, i] = |G_j ∩ P_i|, label 0 being background on both sides.
    overlap = np.bincount(
        (target_labels * (n_pred + 1) + pred_labels).ravel(),
        minlength=(n_target + 1) * (n_pred + 1),
    ).reshape(n_target + 1, n_pred + 1)[1:, 1:]
    target_sizes = np.bincount(target_labels.ravel(), minlength=n_target + 1)[1:]
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)[1:]
    region_iou = overlap / (target_sizes[:, None] + pred_sizes[None, :] - overlap)
    return float((target_sizes * region_iou.max(axis=1)).sum() / target_sizes.sum())


@_class_axis
def weighted_coverage(pred: ArrayLike, target: ArrayLike) -> Tensor:
    """Weighted coverage (WCov) as DSAC / DarNet report it, float64 (B,).

    WCov = Σ_j |G_j| / Σ_k |G_k| · max_i IoU(G_j, P_i), where the G_j are the connected
    components of the target foreground and the P_i those of the predicted foreground
    (8-connectivity, via scipy.ndimage.label): each ground-truth region is credited with its
    best-matching predicted region, weighted by its size: the size-weighted coverage of the
    instance-segmentation literature (e.g. Silberman et al., ECCV 2014), the WCov column of
    Marcos et al. (DSAC, CVPR 2018) and Cheng et al. (DarNet, CVPR 2019). The background is
    not a region: counting it (as the BSDS "covering" of Arbeláez et al. does for full
    partitions) would let the large, easy background dominate an object-centred score.
    Neither paper's public code computes WCov, so this follows the written definition, not
    their scripts.

    With one target region and one predicted region it equals `iou`; it drops below `iou`
    when a prediction merges or splits regions. Both masks empty: 1.0. Exactly one empty:
    0.0. Runs on the CPU, one image at a time (connected components have no batched torch
    form); the result is returned on the prediction's device.
    """
    p, g = _mask_pair(pred, target)
    p_np, g_np = p.cpu().numpy(), g.cpu().numpy()
    scores = [_weighted_coverage_one(p_np[b], g_np[b]) for b in range(p_np.shape[0])]
    score = torch.tensor(scores, dtype=torch.float64, device=p.device)
    return _apply_empty_rule(score, p, g)


@_class_axis
def size_ratio_coverage(pred: ArrayLike, target: ArrayLike) -> Tensor:
    """min(|P|, |G|) / max(|P|, |G|) per image: the SegDiff reference code's "WCov", float64 (B,).

    Offered so the paper's WCov column can be reproduced; it is not the weighted coverage
    of `weighted_coverage`. It compares only mask sizes, not positions: a prediction of the
    right size in the wrong place scores 1.0. Both masks empty: 1.0 (the reference divides
    by zero). Exactly one empty: 0.0.
    """
    p, g = _mask_pair(pred, target)
    pred_size = p.flatten(1).sum(dim=1).to(torch.float64)
    target_size = g.flatten(1).sum(dim=1).to(torch.float64)
    ratio = torch.minimum(pred_size, target_size) / torch.maximum(pred_size, target_size).clamp(
        min=1
    )
    return _apply_empty_rule(ratio, p, g)


# ---------------------------------------------------------------------------------------------
# Calibration


def _prob_pair(prob: ArrayLike, target: ArrayLike, num_bins: int) -> tuple[Tensor, Tensor]:
    """Validate probabilities and target; return (B, H, W) floating prob and bool target.

    prob keeps its floating dtype (integers become float64) for `_bin_sums`.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, found {num_bins!r}")
    prob_t, target_t = _as_tensor(prob, "prob"), _as_tensor(target, "target")
    _check_shapes(prob_t, target_t, ("prob", "target"))
    if prob_t.is_complex():
        raise ValueError("prob: expected real probabilities in [0, 1], found a complex tensor")
    prob_f = prob_t if prob_t.is_floating_point() else prob_t.to(torch.float64)
    if not bool(((prob_f >= 0) & (prob_f <= 1)).all()):  # also rejects NaN
        raise ValueError(
            f"prob: expected probabilities in [0, 1], found values from {prob_f.min().item():g} "
            f"to {prob_f.max().item():g} (NaN present: {bool(prob_f.isnan().any())})"
        )
    prob_f = prob_f[None] if prob_f.ndim == 2 else prob_f
    return prob_f, _to_mask(target_t, "target").to(prob_f.device)


def _bin_sums(prob: Tensor, target: Tensor, num_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per image and bin: pixel count, sum of probabilities, count of positives; (B, num_bins).

    Bin k holds k/n <= p < (k+1)/n, computed as floor(p·n) in the input's own precision so
    that float32 averages j/K land where meant (float32 0.9 is 0.89999998, yet 0.9f·10 rounds
    to 9 in float32); p = 1.0 joins the last bin, which is closed: [1 - 1/n, 1]. Sums are float64.
    """
    index = (prob.flatten(1) * num_bins).floor().long().clamp(max=num_bins - 1)  # (B, N)
    flat_prob = prob.flatten(1).to(torch.float64)
    zeros = torch.zeros(flat_prob.shape[0], num_bins, dtype=torch.float64, device=prob.device)
    count = zeros.scatter_add(1, index, torch.ones_like(flat_prob))
    prob_sum = zeros.scatter_add(1, index, flat_prob)
    positives = zeros.scatter_add(1, index, target.flatten(1).to(torch.float64))
    return count, prob_sum, positives


@_class_axis
def calibration_score(prob: ArrayLike, target: ArrayLike, num_bins: int = 10) -> Tensor:
    """The paper's calibration error per image (lower is better), float64 (B,).

    Split [0, 1] into `num_bins` equal bins of predicted probability (the mean of the
    generations); for each non-empty bin take (mean probability - fraction of positive
    pixels)², then average over the non-empty bins. Bins: k/n <= p < (k+1)/n, with p = 1.0
    in the last bin, evaluated in the input's floating precision. Unlike
    `expected_calibration_error`, every non-empty bin weighs the same, however few pixels
    it holds.

    Empty masks need no special rule here: an image always has a non-empty bin, and an
    empty target is scored like any other (all-zero probabilities on an empty target: 0.0,
    perfect).
    """
    p, g = _prob_pair(prob, target, num_bins)
    count, prob_sum, positives = _bin_sums(p, g, num_bins)
    occupied = count > 0
    gap = (prob_sum - positives) / count.clamp(min=1)  # mean prob - fraction of positives
    return (gap**2 * occupied).sum(dim=1) / occupied.sum(dim=1)


@_class_axis
def expected_calibration_error(prob: ArrayLike, target: ArrayLike, num_bins: int = 10) -> Tensor:
    """Standard ECE per image: Σ_k (n_k / N) · |fraction of positives_k - mean prob_k|, (B,).

    The binary form: "confidence" is the predicted foreground probability and "accuracy" the
    fraction of foreground pixels in the bin (not the top-label variant). Bins as in
    `calibration_score`. To pool a data set, pass all pixels as one image, e.g. shape (1, N).
    No special empty-mask rule: the score is defined for any target.
    """
    p, g = _prob_pair(prob, target, num_bins)
    return ece_from_bins(*_bin_sums(p, g, num_bins))


def ece_from_bins(count: Tensor, prob_sum: Tensor, positives: Tensor) -> Tensor:
    """ECE from per-bin sums (..., num_bins): Σ_k |prob_sum_k - positives_k| / Σ_k count_k.

    The one place ECE is computed: `expected_calibration_error` per image, and the pooled ECE of
    a whole evaluation from its accumulated bins (evaluation.py), which equals the ECE of all
    pixels passed as one image.
    """
    return (prob_sum - positives).abs().sum(dim=-1) / count.sum(dim=-1)


class ReliabilityDiagram(NamedTuple):
    """Per-bin statistics pooled over all pixels given; each field has shape (num_bins,)."""

    bin_edges: Tensor  # (num_bins + 1,) from 0 to 1
    mean_prob: Tensor  # mean predicted probability in the bin; NaN where the bin is empty
    fraction_positive: Tensor  # fraction of target pixels that are 1; NaN where empty
    count: Tensor  # number of pixels in the bin (int64)


def reliability_diagram(
    prob: ArrayLike, target: ArrayLike, num_bins: int = 10
) -> ReliabilityDiagram:
    """Bin statistics for a reliability plot, pooled over every pixel of every image given.

    Bins as in `calibration_score` (p = 1.0 in the last bin). Empty bins carry NaN means so a
    plot skips them rather than drawing a point at 0.
    """
    p, g = _prob_pair(prob, target, num_bins)
    count, prob_sum, positives = (t.sum(dim=0) for t in _bin_sums(p, g, num_bins))
    empty = count == 0
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=count.device)
    return ReliabilityDiagram(
        bin_edges=torch.linspace(0, 1, num_bins + 1, dtype=torch.float64, device=count.device),
        mean_prob=torch.where(empty, nan, prob_sum / count.clamp(min=1)),
        fraction_positive=torch.where(empty, nan, positives / count.clamp(min=1)),
        count=count.round().long(),
    )


# ---------------------------------------------------------------------------------------------
# Per-image uncertainty

BOUNDARY_BAND = 3  # pixels around the predicted object that `boundary_disagreement` also looks at


def _probability_maps(x: ArrayLike, name: str) -> Tensor:
    """Validate (B, C, H, W) real values in [0, 1]; return them as float64."""
    t = _as_tensor(x, name)
    if t.ndim != 4 or 0 in t.shape:
        raise ValueError(f"{name}: expected maps of shape (B, C, H, W), found {tuple(t.shape)}")
    if t.is_complex() or not bool(((t >= 0) & (t <= 1)).all()):  # also rejects NaN
        raise ValueError(f"{name}: expected values in [0, 1]")
    return t.to(torch.float64)


def mean_entropy(prob: ArrayLike) -> Tensor:
    """Per image, the mean over its pixels of the entropy (nats) of the mean prediction: float64 (B,).

    `prob` (B, C, H, W) is the mean of the K generations (`sampling.Prediction.prob`). Binary
    (C = 1, p the foreground probability): H = -p ln p - (1 - p) ln(1 - p), from 0 (p = 0 or 1) to
    ln 2 = 0.693 (p = 0.5). C > 1 classes (probabilities summing to 1): H = -sum_c p_c ln p_c, at
    most ln C; the per-image "mean_entropy" of a multi-class evaluation is the same number. 0 ln 0 = 0
    (`encoding.entropy`). High wherever the mean is unsure, whether the generations disagree or
    agree on an unsure value, and defined for K = 1 (the U-Net's probability) too.
    """
    p = _probability_maps(prob, "prob")
    classes = torch.cat([1 - p, p], dim=1) if p.shape[1] == 1 else p
    return entropy(classes, dim=1).flatten(1).mean(dim=1)


def boundary_disagreement(prob: ArrayLike, variance: ArrayLike, radius: int = BOUNDARY_BAND) -> Tensor:
    """Per image, how much the K generations disagree on the predicted object and its outline:
    float64 (B,). Binary masks only.

    `prob` (B, 1, H, W): the mean foreground probability of the K generations g_1..g_K; `variance`
    (B, 1, H, W): their per-pixel population variance (1/K) sum_k (g_k - prob)^2, in [0, 0.25]
    (`sampling.Prediction.uncertainty` squared: it holds the standard deviation). The region R is the
    predicted mask prob > 0.5 dilated by a disk of `radius` pixels (dy^2 + dx^2 <= radius^2, outside
    the image empty; `metrics_boundary.dilate`): the object and a band of `radius` pixels around it,
    where generations of one object differ. The score is the mean of `variance` over R. Where
    nothing is predicted (R empty) it is 0.0: no object to disagree on (`mean_entropy` still
    measures such an image). K = 1 gives 0. C > 1 raises ValueError: which class is "background"
    is not given for label maps.
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be an integer number of pixels >= 0, found {radius!r}")
    p, v = _probability_maps(prob, "prob"), _probability_maps(variance, "variance")
    _check_same_shape(p, v, ("prob", "variance"))
    if p.shape[1] != 1:
        raise ValueError(f"boundary_disagreement is for binary masks (C = 1), found C = {p.shape[1]}")
    region = dilate(p[:, 0] > 0.5, int(radius))  # (B, H, W)
    total = (v[:, 0] * region).flatten(1).sum(dim=1)
    return total / region.flatten(1).sum(dim=1).clamp(min=1)  # empty region: 0 / 1 = 0


# ---------------------------------------------------------------------------------------------
# Failure detection: one uncertainty score and one quality score (e.g. IoU) per image of a split.
# A good score is high where the quality is low.


def _paired_scores(scores: Sequence[float] | np.ndarray | Tensor, quality: Sequence[float] | np.ndarray | Tensor,
                   names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b = (np.asarray(torch.as_tensor(v, dtype=torch.float64).flatten()) for v in (scores, quality))
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"{names[0]} and {names[1]}: expected two equal-length lists of at least 2 images, "
                         f"found {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"{names[0]} and {names[1]}: expected finite values")
    return a, b


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values given the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Sequence[float] | np.ndarray | Tensor, y: Sequence[float] | np.ndarray | Tensor) -> float:
    """Spearman's rank correlation of two per-image lists: the Pearson correlation of their ranks
    (ties share their mean rank), in [-1, 1]; NaN when either list is constant. For an uncertainty
    score against IoU, a good score gives a value near -1."""
    a, b = _paired_scores(x, y, ("x", "y"))
    ra, rb = _ranks(a) - (len(a) + 1) / 2, _ranks(b) - (len(b) + 1) / 2
    norm = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / norm) if norm > 0 else float("nan")


def worst_fraction(quality: Sequence[float] | np.ndarray | Tensor, fraction: float = 0.2) -> np.ndarray:
    """Bool mask of the ceil(fraction * n) images of lowest quality (ties broken by list order,
    the earlier image counted worse): the "failures" `failure_auroc` looks for."""
    q = np.asarray(torch.as_tensor(quality, dtype=torch.float64).flatten())
    if not 0 < fraction < 1 or q.size < 2:
        raise ValueError(f"worst_fraction: fraction must be in (0, 1) and at least 2 images given; found "
                         f"fraction={fraction}, {q.size} images")
    count = int(np.ceil(fraction * q.size - 1e-9))
    mask = np.zeros(q.size, dtype=bool)
    mask[np.argsort(q, kind="stable")[:count]] = True
    return mask


def failure_auroc(scores: Sequence[float] | np.ndarray | Tensor, quality: Sequence[float] | np.ndarray | Tensor,
                  fraction: float = 0.2) -> float:
    """AUROC of `scores` for telling the worst `fraction` of images by `quality` (`worst_fraction`)
    from the rest: the probability that a failure's score exceeds a non-failure's, ties counted
    half (the Mann-Whitney statistic). 1.0: every failure scores above every other image; 0.5: chance."""
    s, q = _paired_scores(scores, quality, ("scores", "quality"))
    failures = worst_fraction(q, fraction)
    pos, neg = s[failures], s[~failures]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def risk_coverage_area(scores: Sequence[float] | np.ndarray | Tensor, quality: Sequence[float] | np.ndarray | Tensor) -> float:
    """Area under the risk-coverage curve (AURC, Geifman & El-Yaniv 2017), lower is better. Images
    are kept from the most certain (lowest score) on, ties in list order; after keeping i of n the
    risk is the mean of (1 - quality) over those i; the area is the mean of the n risks. `quality`
    in [0, 1] (IoU, F1). A score that orders images exactly by quality reaches the minimum."""
    s, q = _paired_scores(scores, quality, ("scores", "quality"))
    risk = 1.0 - q[np.argsort(s, kind="stable")]
    return float((np.cumsum(risk) / np.arange(1, risk.size + 1)).mean())


# ---------------------------------------------------------------------------------------------
# Aggregation


def mean_over_images(scores: Tensor | Sequence[float]) -> Tensor:
    """Plain mean of per-image scores (the paper's tables), as a float64 0-dim tensor."""
    values = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("mean_over_images: no scores given")
    return values.mean()


def mean_over_classes(
    scores_by_class: Mapping[str, Tensor | Sequence[float]],
) -> tuple[dict[str, Tensor], Tensor]:
    """Cityscapes aggregation: mean over the instances of each class, then mean of class means.

    Returns ({class: mean over its instances}, mean over classes); every class counts once,
    however many instances it has (the paper's "Mean" column).
    """
    if not scores_by_class:
        raise ValueError("mean_over_classes: no classes given")
    per_class: dict[str, Tensor] = {}
    for name, scores in scores_by_class.items():
        values = torch.as_tensor(scores, dtype=torch.float64).flatten()
        if values.numel() == 0:
            raise ValueError(f"mean_over_classes: class {name!r} has no scores")
        per_class[name] = values.mean()
    return per_class, torch.stack(list(per_class.values())).mean()


# ---------------------------------------------------------------------------------------------
# Label maps


def _label_pair(pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Validate integer label maps; return flat int64 (pred, target) of the counted pixels, per image."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, found {num_classes!r}")
    pred_t, target_t = _as_tensor(pred, "pred"), _as_tensor(target, "target")
    _check_shapes(pred_t, target_t, ("pred", "target"))
    for name, x in (("pred", pred_t), ("target", target_t)):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name}: expected integer class indices, found {x.dtype}")
    pred_t, target_t = pred_t.long(), target_t.long().to(pred_t.device)
    counted = target_t != ignore_index if ignore_index is not None else torch.ones_like(target_t, dtype=torch.bool)
    for name, x in (("pred", pred_t[counted]), ("target", target_t[counted])):
        outside = (x < 0) | (x >= num_classes)
        if bool(outside.any()):
            bad = torch.unique(x[outside])[:8].tolist()
            raise ValueError(f"{name}: class indices {bad} outside 0..{num_classes - 1}"
                             + (f" (ignore index {ignore_index})" if ignore_index is not None else ""))
    return pred_t, target_t


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Counts of (true class i, predicted class j) over every counted pixel: int64 (C, C).

    `pred`, `target`: integer label maps (B, H, W) or (H, W). Pixels whose target is `ignore_index`
    are not counted (whatever is predicted there). Sum the matrices of a split's images, then
    call `confusion_scores`.
    """
    p, g = _label_pair(pred, target, num_classes, ignore_index)
    counted = g != ignore_index if ignore_index is not None else torch.ones_like(g, dtype=torch.bool)
    index = g[counted] * num_classes + p[counted]
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_scores(matrix: Tensor) -> dict[str, Tensor]:
    """Scores of a confusion matrix (rows: truth, columns: prediction), float64.

    - "iou": per class TP / (TP + FP + FN), NaN for a class neither present nor predicted;
    - "miou": the mean of the per-class IoUs that are not NaN;
    - "pixel_accuracy": the diagonal's share of all counted pixels;
    - "class_accuracy": per class TP / (TP + FN) (recall), NaN for a class absent from the truth;
    - "mean_class_accuracy": the mean of those that are not NaN.
    """
    m = torch.as_tensor(matrix).to(torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square (C, C) confusion matrix, found shape {tuple(m.shape)}")
    tp = m.diagonal()
    truth, predicted = m.sum(dim=1), m.sum(dim=0)
    union = truth + predicted - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    accuracy = torch.where(truth > 0, tp / truth.clamp(min=1), nan)
    total = m.sum()
    return {"iou": iou, "miou": iou.nanmean(), "pixel_accuracy": tp.sum() / total if total > 0 else nan,
            "class_accuracy": accuracy, "mean_class_accuracy": accuracy.nanmean()}


def mean_iou_per_image(pred: ArrayLike, target: ArrayLike, num_classes: int,
                       ignore_index: int | None = None) -> Tensor:
    """Per image, the mean IoU over the classes present in its prediction or its target: float64 (B,).

    The empty-class rule: a class that is neither in the image's target nor in its prediction is
    left out of that image's mean (it would be 0/0); one predicted but absent from the target
    scores 0. Ignored pixels are not counted. The mean over images is `mean_over_images`.
    """
    p, g = _label_pair(pred, target, num_classes, ignore_index)
    p, g = (p[None], g[None]) if p.ndim == 2 else (p, g)
    scores = []
    for pi, gi in zip(p, g):
        scores.append(confusion_scores(confusion_matrix(pi, gi, num_classes, ignore_index))["miou"])
    return torch.stack(scores)


def _class_probs(prob: ArrayLike, target: ArrayLike, ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validate class probabilities (B, C, H, W) or (C, H, W) and labels (B, H, W) or (H, W); return
    (prob (B, C, H, W), labels (B, H, W) int64, counted (B, H, W) bool)."""
    p, g = _as_tensor(prob, "prob"), _as_tensor(target, "target")
    p, g = (p[None], g[None]) if p.ndim == 3 else (p, g)
    if p.ndim != 4 or g.shape != p.shape[:1] + p.shape[2:]:
        raise ValueError(f"expected prob (B, C, H, W) and target (B, H, W), found {tuple(p.shape)} and {tuple(g.shape)}")
    if not p.is_floating_point() or not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("prob: expected class probabilities in [0, 1]")
    g = g.long().to(p.device)
    counted = g != ignore_index if ignore_index is not None else torch.ones_like(g, dtype=torch.bool)
    if bool(((g[counted] < 0) | (g[counted] >= p.shape[1])).any()):
        raise ValueError(f"target: class indices outside 0..{p.shape[1] - 1}")
    return p, g, counted


def top_label_bins(prob: ArrayLike, target: ArrayLike, num_bins: int = 10,
                   ignore_index: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-label calibration of class probabilities, pooled over the counted pixels of every image:
    per bin of confidence (the top class's probability, bins as in `calibration_score`), the pixel
    count, the confidence sum and the number of pixels whose top class is right, float64 (num_bins,)
    each. `ece_from_bins` turns them into the top-label ECE (Guo et al. 2017); sum them over a split.
    """
    p, g, counted = _class_probs(prob, target, ignore_index)
    confidence, top = p.max(dim=1)
    conf, right = confidence[counted], (top == g)[counted]
    count, conf_sum, correct = _bin_sums(conf[None], right[None], num_bins)
    return count[0], conf_sum[0], correct[0]


def brier_score(prob: ArrayLike, target: ArrayLike, ignore_index: int | None = None) -> Tensor:
    """Multi-class Brier score per image, float64 (B,): the mean over counted pixels of
    sum_c (p_c - [c is the pixel's class])^2, from 0 (sure and right) to 2 (sure and wrong)."""
    p, g, counted = _class_probs(prob, target, ignore_index)
    # sum_c (p_c - y_c)^2 = sum_c p_c^2 - 2 p_y + 1: no one-hot (C x the pixels) is built, and only the
    # (B, H, W) sums go to float64 (at K = 30 and 11 classes on a 480x360 frame the one-hot difference
    # in float64 took most of an evaluation's metric time).
    true_class = p.gather(1, g.clamp(min=0, max=p.shape[1] - 1)[:, None])[:, 0]
    per_pixel = p.square().sum(dim=1).double() - 2 * true_class.double() + 1  # (B, H, W)
    return (per_pixel * counted).flatten(1).sum(1) / counted.flatten(1).sum(1).clamp(min=1)
