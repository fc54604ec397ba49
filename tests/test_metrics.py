"""Tests for segdiff.metrics: hand-worked cases, input checks, and independent references.

Independent references used here:
- scikit-learn's `jaccard_score` / `f1_score` for IoU and F1 (a separate, widely used library).
- For the DAVIS boundary F-measure no maintained package ships `db_eval_boundary`, so the test
  re-derives it: the boundary map with a plain per-pixel loop over the east / south /
  south-east neighbours that lie inside the image (the rule DAVIS's `seg2bmap` implements),
  dilation with scikit-image's `disk` + `dilation`, and DAVIS's precision / recall / F rules.
  The dilation and the loop are independent of our torch code (convolution, replicate
  padding, batching); the *definition* of the boundary is the same reading of DAVIS, so these
  tests cannot catch a misreading of DAVIS itself. The hand-drawn 5x5 ring guards that.
- For weighted coverage, connected components from scikit-image (`measure.label`) instead of
  scipy, and an explicit loop over region pairs.
- For calibration, hand-worked cases and direct per-bin loops with explicit bin edges.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label as skimage_label
from skimage.morphology import dilation, disk
from sklearn.metrics import f1_score, jaccard_score

from segdiff import metrics
from segdiff.metrics import (
    boundary_f_mean, calibration_score, expected_calibration_error, f1, iou, size_ratio_coverage, weighted_coverage,
)
from segdiff.metrics_boundary import boundary_f_from_maps, boundary_map

MASK_METRICS = {
    "iou": metrics.iou,
    "f1": metrics.f1,
    "boundary_f": lambda p, g: metrics.boundary_f(p, g, radius=2),
    "boundary_f_mean": metrics.boundary_f_mean,
    "weighted_coverage": metrics.weighted_coverage,
    "size_ratio_coverage": metrics.size_ratio_coverage,
}
CALIBRATION_METRICS = {
    "calibration_score": metrics.calibration_score,
    "expected_calibration_error": metrics.expected_calibration_error,
    "reliability_diagram": metrics.reliability_diagram,
}


def random_blobs(rng: np.random.Generator, batch: int, size: int = 24) -> np.ndarray:
    """Smooth random masks (B, size, size) with several components, often touching the border."""
    noise = rng.standard_normal((batch, size, size))
    smooth = np.stack([ndimage.gaussian_filter(n, sigma=2.0) for n in noise])
    return smooth > np.quantile(smooth, 0.6, axis=(1, 2), keepdims=True)


# ---------------------------------------------------------------------------------------------
# IoU and F1


def test_iou_hand_computed_two_by_two():
    pred = np.array([[1, 1], [0, 0]])
    target = np.array([[1, 0], [1, 0]])
    # |P∩G| = 1 (top-left), |P∪G| = 3 -> 1/3
    assert metrics.iou(pred, target).item() == pytest.approx(1 / 3)


def test_f1_hand_computed_two_by_two():
    pred = np.array([[1, 1], [0, 0]])
    target = np.array([[1, 0], [1, 0]])
    # 2|P∩G| / (|P| + |G|) = 2*1 / (2 + 2) = 0.5
    assert metrics.f1(pred, target).item() == pytest.approx(0.5)


def test_iou_and_f1_match_sklearn_per_image():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 9, 7)) < 0.4
    target = rng.random((6, 9, 7)) < 0.5
    pred[1] = False  # exactly one empty
    pred[2], target[2] = False, False  # both empty
    target[3] = False  # exactly one empty, the other way
    # zero_division=1.0 makes sklearn score 0/0 as 1.0, our both-empty rule.
    expected_iou = [
        jaccard_score(t.ravel(), p.ravel(), zero_division=1.0)
        for p, t in zip(pred, target, strict=True)
    ]
    expected_f1 = [
        f1_score(t.ravel(), p.ravel(), zero_division=1.0) for p, t in zip(pred, target, strict=True)
    ]
    np.testing.assert_allclose(metrics.iou(pred, target).numpy(), expected_iou, rtol=1e-12)
    np.testing.assert_allclose(metrics.f1(pred, target).numpy(), expected_f1, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The empty-mask rule and input handling, for every mask metric


@pytest.mark.parametrize("name", MASK_METRICS)
def test_every_mask_metric_both_empty_is_one(name):
    empty = np.zeros((2, 6, 6), dtype=bool)
    assert MASK_METRICS[name](empty, empty).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name", MASK_METRICS)
def test_every_mask_metric_exactly_one_empty_is_zero(name):
    empty = np.zeros((6, 6), dtype=bool)
    full = np.ones((6, 6), dtype=bool)  # no boundary: DAVIS alone would give F = 1 here
    square = np.zeros((6, 6), dtype=bool)
    square[1:4, 1:4] = True
    fn = MASK_METRICS[name]
    assert fn(empty, full).item() == 0.0
    assert fn(full, empty).item() == 0.0
    assert fn(empty, square).item() == 0.0
    assert fn(square, empty).item() == 0.0


@pytest.mark.parametrize("name", MASK_METRICS)
def test_every_mask_metric_perfect_prediction_is_one(name):
    masks = random_blobs(np.random.default_rng(1), batch=3)
    assert MASK_METRICS[name](masks, masks.copy()).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", MASK_METRICS)
def test_hw_input_is_a_batch_of_one_and_output_is_float64_b(name):
    rng = np.random.default_rng(2)
    pred, target = random_blobs(rng, 1)[0], random_blobs(rng, 1)[0]
    single = MASK_METRICS[name](pred, target)
    batched = MASK_METRICS[name](pred[None], target[None])
    assert single.shape == (1,) and single.dtype == torch.float64
    assert torch.equal(single, batched)


@pytest.mark.parametrize("name", MASK_METRICS)
def test_numpy_torch_bool_and_float_inputs_agree(name):
    rng = np.random.default_rng(3)
    pred, target = random_blobs(rng, 2), random_blobs(rng, 2)
    fn = MASK_METRICS[name]
    reference = fn(pred, target)
    assert torch.equal(fn(torch.from_numpy(pred), torch.from_numpy(target)), reference)
    assert torch.equal(fn(pred.astype(np.uint8), target.astype(np.float32)), reference)
    # negative strides (a flipped view) are accepted; flipping both leaves IoU/F1 unchanged
    if name in ("iou", "f1", "size_ratio_coverage"):
        assert torch.equal(fn(pred[:, ::-1], target[:, ::-1]), reference)


@pytest.mark.parametrize("name", MASK_METRICS)
def test_mismatched_shapes_raise_naming_both_shapes(name):
    with pytest.raises(ValueError, match=r"pred \(2, 4, 5\) and target \(2, 5, 4\)"):
        MASK_METRICS[name](np.zeros((2, 4, 5)), np.zeros((2, 5, 4)))


@pytest.mark.parametrize("name", MASK_METRICS)
@pytest.mark.parametrize("which", ["pred", "target"])
def test_non_binary_values_raise_listing_the_values_found(name, which):
    good = np.zeros((4, 4))
    bad = np.zeros((4, 4))
    bad[0, 0], bad[1, 1] = 255, 0.5
    args = (bad, good) if which == "pred" else (good, bad)
    with pytest.raises(ValueError, match=rf"{which}: .* found 3 distinct values: 0, 0.5, 255"):
        MASK_METRICS[name](*args)


def test_nan_in_mask_is_rejected():
    pred = np.array([[0.0, np.nan]])
    with pytest.raises(ValueError, match="nan"):
        metrics.iou(pred, np.zeros((1, 2)))


@pytest.mark.parametrize(
    "shape", [(4,), (1, 1, 1, 4, 4), (0, 4, 4), (4, 0), (1, 0, 4, 4)],
    ids=["1d", "5d", "no-images", "no-pixels", "no-classes"]
)
def test_wrong_dimensions_or_empty_arrays_raise(shape):
    with pytest.raises(ValueError):
        metrics.iou(np.zeros(shape), np.zeros(shape))


def test_non_array_input_raises_type_error():
    with pytest.raises(
        TypeError, match="pred: expected a torch.Tensor or numpy.ndarray, found list"
    ):
        metrics.iou([[0, 1]], np.zeros((1, 2)))


@pytest.mark.parametrize("name", list(MASK_METRICS) + list(CALIBRATION_METRICS))
def test_inputs_are_not_modified(name):
    rng = np.random.default_rng(4)
    pred = torch.from_numpy(random_blobs(rng, 2)).to(torch.float32)
    target = torch.from_numpy(random_blobs(rng, 2))
    if name in CALIBRATION_METRICS:
        pred = torch.rand(2, 24, 24, generator=torch.Generator().manual_seed(0))
        fn = CALIBRATION_METRICS[name]
    else:
        fn = MASK_METRICS[name]
    pred_before, target_before = pred.clone(), target.clone()
    fn(pred, target)
    assert torch.equal(pred, pred_before) and torch.equal(target, target_before)


# ---------------------------------------------------------------------------------------------
# Boundary F-measure


def _square_5x5(col: int) -> np.ndarray:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:3, col : col + 2] = True
    return mask


def test_boundary_map_of_a_square_is_the_ring_offset_towards_the_origin():
    # 2x2 square at rows 1-2, cols 1-2. A pixel is marked when it differs from its E, S or SE
    # neighbour: (0,0) differs from SE (1,1); (0,1),(0,2) from S; (1,0),(2,0) from E;
    # (1,2),(2,2) from E (background at col 3); (2,1) from S (background at row 3).
    # (1,1) equals E, S and SE, so the ring has a hole there.
    expected = np.array(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    got = boundary_map(torch.from_numpy(_square_5x5(col=1))[None])[0].numpy()
    np.testing.assert_array_equal(got, expected)


def test_boundary_f_of_square_shifted_by_one_is_half_at_radius_0_and_one_at_radius_1():
    target, pred = _square_5x5(col=1), _square_5x5(col=2)
    # Target ring T (8 px, drawn in the test above); pred ring = T shifted one column right.
    # Radius 0: common pixels (0,1),(0,2),(2,1),(2,2) -> P = R = 4/8, F = 0.5.
    # Radius 1 (plus-shaped disk): every pred ring pixel has a T pixel within one step, e.g.
    # (0,3) next to (0,2), (1,1) below (0,1), (1,3) right of (1,2); by symmetry R = 1 too.
    assert metrics.boundary_f(pred, target, radius=0).item() == pytest.approx(0.5)
    assert metrics.boundary_f(pred, target, radius=1).item() == pytest.approx(1.0)
    assert metrics.boundary_f_mean(pred, target, radii=(0, 1)).item() == pytest.approx(0.75)
    assert metrics.boundary_f_mean(pred, target).item() == pytest.approx(1.0)  # d = 1..5


def test_boundary_f_image_border_is_not_a_boundary():
    full = np.ones((6, 6), dtype=bool)
    left_half = np.zeros((6, 6), dtype=bool)
    left_half[:, :3] = True
    # Neither full mask has a boundary (the border does not count): DAVIS scores that 1.
    assert metrics.boundary_f(full, full, radius=1).item() == 1.0
    # A full prediction has no boundary to match the target's vertical edge: P = 1, R = 0.
    assert metrics.boundary_f(full, left_half, radius=5).item() == 0.0
    # The left half's only boundary is the column x = 2 (foreground side of its right edge).
    assert boundary_map(torch.from_numpy(left_half)[None])[0].nonzero()[:, 1].unique().tolist() == [
        2
    ]


def _davis_boundary_loop(seg: np.ndarray) -> np.ndarray:
    """DAVIS seg2bmap re-derived: differs from an E, S or SE neighbour inside the image."""
    height, width = seg.shape
    out = np.zeros_like(seg, dtype=bool)
    for r in range(height):
        for c in range(width):
            for dr, dc in ((0, 1), (1, 0), (1, 1)):
                if r + dr < height and c + dc < width and seg[r, c] != seg[r + dr, c + dc]:
                    out[r, c] = True
    return out


def _davis_boundary_prf(
    pred: np.ndarray, target: np.ndarray, radius: int
) -> tuple[float, float, float]:
    """db_eval_boundary's arithmetic with scikit-image morphology."""
    pred_b, target_b = _davis_boundary_loop(pred), _davis_boundary_loop(target)
    footprint = disk(radius)
    pred_dil = dilation(pred_b, footprint, mode="constant", cval=0).astype(bool)
    target_dil = dilation(target_b, footprint, mode="constant", cval=0).astype(bool)
    n_pred, n_target = pred_b.sum(), target_b.sum()
    if n_pred == 0 and n_target == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_target == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = (pred_b & target_dil).sum() / n_pred
        recall = (target_b & pred_dil).sum() / n_target
    f_measure = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f_measure, precision, recall


def test_boundary_f_matches_davis_rederivation_with_skimage_for_radii_1_to_5():
    rng = np.random.default_rng(5)
    pred, target = random_blobs(rng, 4), random_blobs(rng, 4)
    pred_t, target_t = torch.from_numpy(pred), torch.from_numpy(target)
    for radius in range(1, 6):
        expected = np.array(
            [_davis_boundary_prf(p, t, radius) for p, t in zip(pred, target, strict=True)]
        )
        f_measure, precision, recall = boundary_f_from_maps(
            boundary_map(pred_t), boundary_map(target_t), radius
        )
        np.testing.assert_allclose(precision.numpy(), expected[:, 1], rtol=1e-12)
        np.testing.assert_allclose(recall.numpy(), expected[:, 2], rtol=1e-12)
        np.testing.assert_allclose(
            metrics.boundary_f(pred, target, radius).numpy(), expected[:, 0], rtol=1e-12
        )
    assert not np.allclose(expected[:, 0], 1.0)  # the random pairs really differ
    mean_expected = [
        np.mean([_davis_boundary_prf(p, t, r)[0] for r in range(1, 6)])
        for p, t in zip(pred, target, strict=True)
    ]
    np.testing.assert_allclose(
        metrics.boundary_f_mean(pred, target).numpy(), mean_expected, rtol=1e-12
    )


@pytest.mark.parametrize("radius", [-1, 1.5, True])
def test_boundary_f_rejects_bad_radius(radius):
    mask = np.ones((3, 3))
    with pytest.raises(ValueError, match="radius"):
        metrics.boundary_f(mask, mask, radius=radius)
    with pytest.raises(ValueError, match="radius"):
        metrics.boundary_f_mean(mask, mask, radii=(1, radius))


def test_boundary_f_mean_rejects_no_radii():
    with pytest.raises(ValueError, match="at least one radius"):
        metrics.boundary_f_mean(np.ones((3, 3)), np.ones((3, 3)), radii=())


# ---------------------------------------------------------------------------------------------
# Coverage


def test_weighted_coverage_penalises_a_prediction_that_merges_two_regions():
    target = np.zeros((2, 6), dtype=bool)
    target[:, [0, 1, 3, 4]] = True  # two 2x2 regions A (cols 0-1) and B (cols 3-4), gap at col 2
    pred = np.zeros((2, 6), dtype=bool)
    pred[:, :5] = True  # one 10-px region covering both and the gap
    # IoU(A, P) = IoU(B, P) = 4/10; WCov = (4*0.4 + 4*0.4)/8 = 0.4, while foreground IoU = 8/10.
    assert metrics.weighted_coverage(pred, target).item() == pytest.approx(0.4)
    assert metrics.iou(pred, target).item() == pytest.approx(0.8)


def test_weighted_coverage_weights_regions_by_size():
    target = np.zeros((5, 8), dtype=bool)
    target[0:2, 0:2] = True  # A: 4 px
    target[3:5, 0:6] = True  # B: 12 px
    pred = np.zeros((5, 8), dtype=bool)
    pred[0:2, 0:2] = True  # exactly A
    pred[3:5, 0:3] = True  # left half of B: IoU 6/12
    # (4*1 + 12*0.5) / 16 = 0.625; an unweighted mean over regions would give 0.75.
    assert metrics.weighted_coverage(pred, target).item() == pytest.approx(0.625)


def test_weighted_coverage_uses_8_connectivity():
    target = np.array([[1, 0], [0, 1]], dtype=bool)  # diagonal pair: one region (touching corners)
    pred = np.array([[1, 1], [0, 1]], dtype=bool)  # one 3-px region
    # One 2-px region, IoU 2/3. (4-connectivity would give two 1-px regions, each IoU 1/3.)
    assert metrics.weighted_coverage(pred, target).item() == pytest.approx(2 / 3)


def _weighted_coverage_loop(pred: np.ndarray, target: np.ndarray) -> float:
    target_labels = skimage_label(target, connectivity=2)
    pred_labels = skimage_label(pred, connectivity=2)
    total, weighted = 0, 0.0
    for j in range(1, target_labels.max() + 1):
        region = target_labels == j
        best = 0.0
        for i in range(1, pred_labels.max() + 1):
            candidate = pred_labels == i
            best = max(best, (region & candidate).sum() / (region | candidate).sum())
        total += region.sum()
        weighted += region.sum() * best
    return weighted / total


def test_weighted_coverage_matches_skimage_label_loop():
    rng = np.random.default_rng(6)
    pred, target = random_blobs(rng, 5), random_blobs(rng, 5)
    expected = [_weighted_coverage_loop(p, t) for p, t in zip(pred, target, strict=True)]
    assert min(skimage_label(t, connectivity=2).max() for t in target) >= 2  # several regions
    np.testing.assert_allclose(
        metrics.weighted_coverage(pred, target).numpy(), expected, rtol=1e-12
    )


def test_size_ratio_coverage_ignores_position():
    target = np.zeros((4, 4), dtype=bool)
    target[0, :2] = True
    pred = np.zeros((4, 4), dtype=bool)
    pred[3, 2:] = True  # same size, no overlap
    # min(2, 2) / max(2, 2) = 1 although IoU = 0: why the reference code's "WCov" is not WCov.
    assert metrics.size_ratio_coverage(pred, target).item() == 1.0
    assert metrics.weighted_coverage(pred, target).item() == 0.0
    pred[2, :] = True  # |P| = 6: min/max = 2/6
    assert metrics.size_ratio_coverage(pred, target).item() == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------
# Calibration

HAND_PROB = torch.tensor([[0.05, 0.15], [0.15, 0.95]])
HAND_TARGET = torch.tensor([[0, 1], [0, 1]])


def test_calibration_score_hand_computed():
    # bin 0: {0.05}, mean 0.05, positives 0/1 -> (0.05)^2 = 0.0025
    # bin 1: {0.15, 0.15}, mean 0.15, positives 1/2 -> (0.35)^2 = 0.1225
    # bin 9: {0.95}, mean 0.95, positives 1/1 -> (0.05)^2 = 0.0025
    # mean over the 3 non-empty bins: 0.1275 / 3 = 0.0425
    assert metrics.calibration_score(HAND_PROB, HAND_TARGET).item() == pytest.approx(0.0425)


def test_expected_calibration_error_hand_computed():
    # Same bins, weighted by pixel share: 1/4*0.05 + 2/4*0.35 + 1/4*0.05 = 0.2
    assert metrics.expected_calibration_error(HAND_PROB, HAND_TARGET).item() == pytest.approx(0.2)


def test_probability_one_falls_in_the_last_bin():
    prob = torch.tensor([[1.0, 0.9]])  # float32: 0.9 is stored as 0.89999998
    target = torch.tensor([[1, 1]])
    # Both in bin 9 = [0.9, 1.0]: mean 0.95, positives 1 -> 0.05^2 = 0.0025.
    # (A separate bin for 1.0, or float32 0.9 binned in float64 as 0.8999.. into bin 8, would
    # give two bins: (0 + 0.1^2) / 2 = 0.005.)
    assert metrics.calibration_score(prob, target).item() == pytest.approx(0.0025)
    assert metrics.reliability_diagram(prob, target).count.tolist() == [0] * 9 + [2]


def test_calibration_of_a_confident_correct_prediction_is_zero():
    target = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])  # the second target is empty
    prob = target.to(torch.float64)
    assert metrics.calibration_score(prob, target).tolist() == [0.0, 0.0]
    assert metrics.expected_calibration_error(prob, target).tolist() == [0.0, 0.0]


def _bin_members(p: np.ndarray, num_bins: int) -> list[np.ndarray]:
    edges = [k / num_bins for k in range(num_bins + 1)]
    return [
        (p >= edges[k]) & ((p < edges[k + 1]) if k < num_bins - 1 else (p <= 1.0))
        for k in range(num_bins)
    ]


@pytest.mark.parametrize("num_bins", [10, 7])
def test_calibration_and_ece_match_direct_loops_over_bins(num_bins):
    rng = np.random.default_rng(7)
    prob = np.round(rng.random((3, 8, 8)), 2)  # two decimals: values land exactly on edges too
    prob[0, 0, :3] = [0.0, 1.0, 0.5]
    target = rng.random((3, 8, 8)) < prob  # roughly calibrated
    expected_cal, expected_ece = [], []
    for p, t in zip(prob.reshape(3, -1), target.reshape(3, -1), strict=True):
        squared_gaps, ece = [], 0.0
        for members in _bin_members(p, num_bins):
            if members.any():
                gap = p[members].mean() - t[members].mean()
                squared_gaps.append(gap**2)
                ece += members.sum() / p.size * abs(gap)
        expected_cal.append(np.mean(squared_gaps))
        expected_ece.append(ece)
    got_cal = metrics.calibration_score(prob, target, num_bins=num_bins).numpy()
    got_ece = metrics.expected_calibration_error(prob, target, num_bins=num_bins).numpy()
    np.testing.assert_allclose(got_cal, expected_cal, rtol=1e-10)
    np.testing.assert_allclose(got_ece, expected_ece, rtol=1e-10)
    assert min(expected_ece) > 0  # a non-trivial case


def test_reliability_diagram_pools_all_images_and_marks_empty_bins_nan():
    prob = torch.tensor([[[0.05, 0.15]], [[0.15, 0.95]]])  # (2, 1, 2): the hand case split in two
    target = torch.tensor([[[0, 1]], [[0, 1]]])
    diagram = metrics.reliability_diagram(prob, target)
    assert diagram.count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    np.testing.assert_allclose(diagram.mean_prob[[0, 1, 9]].numpy(), [0.05, 0.15, 0.95])
    np.testing.assert_allclose(diagram.fraction_positive[[0, 1, 9]].numpy(), [0.0, 0.5, 1.0])
    assert diagram.mean_prob[2:9].isnan().all() and diagram.fraction_positive[2:9].isnan().all()
    np.testing.assert_allclose(diagram.bin_edges.numpy(), np.linspace(0, 1, 11))


@pytest.mark.parametrize("name", CALIBRATION_METRICS)
@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_probabilities_outside_unit_interval_raise(name, bad):
    prob = torch.full((2, 2), 0.5)
    prob[0, 1] = bad
    with pytest.raises(ValueError, match=r"prob: expected probabilities in \[0, 1\]"):
        CALIBRATION_METRICS[name](prob, torch.zeros(2, 2))


@pytest.mark.parametrize("name", CALIBRATION_METRICS)
def test_calibration_checks_shapes_target_values_and_bins(name):
    fn = CALIBRATION_METRICS[name]
    with pytest.raises(ValueError, match=r"prob \(2, 2\) and target \(2, 3\)"):
        fn(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="target: expected a binary mask"):
        fn(torch.zeros(2, 2), torch.full((2, 2), 0.3))
    with pytest.raises(ValueError, match="num_bins"):
        fn(torch.zeros(2, 2), torch.zeros(2, 2), num_bins=0)


# ---------------------------------------------------------------------------------------------
# Aggregation


def test_mean_over_images_is_the_plain_mean():
    assert metrics.mean_over_images(torch.tensor([1.0, 0.5, 0.0])).item() == pytest.approx(0.5)
    assert metrics.mean_over_images([0.25, 0.75]).dtype == torch.float64
    with pytest.raises(ValueError, match="no scores"):
        metrics.mean_over_images([])


def test_mean_over_classes_weights_each_class_equally():
    per_class, mean = metrics.mean_over_classes(
        {"bus": torch.tensor([1.0, 0.0, 0.5]), "car": [1.0]}
    )
    # class means 0.5 and 1.0 -> 0.75 (a mean over all 4 instances would be 0.625)
    assert per_class["bus"].item() == pytest.approx(0.5)
    assert per_class["car"].item() == pytest.approx(1.0)
    assert mean.item() == pytest.approx(0.75)


def test_mean_over_classes_rejects_missing_scores():
    with pytest.raises(ValueError, match="no classes"):
        metrics.mean_over_classes({})
    with pytest.raises(ValueError, match="'train' has no scores"):
        metrics.mean_over_classes({"bus": [1.0], "train": []})


# ---------------------------------------------------------------------------------------------
# The class axis: (B, C, H, W) inputs give (B, C) scores


def test_class_axis_scores_each_class_map_hand_computed():
    # One image, two classes on a 2x2 grid.
    # class 0: pred [[1, 1], [0, 0]], target [[1, 0], [0, 0]] -> IoU 1/2, F1 2*1/(2+1) = 2/3
    # class 1: pred and target both empty -> 1.0 for both (the empty-mask rule, per class)
    pred = torch.tensor([[[[1, 1], [0, 0]], [[0, 0], [0, 0]]]])
    target = torch.tensor([[[[1, 0], [0, 0]], [[0, 0], [0, 0]]]])
    assert iou(pred, target).tolist() == [[0.5, 1.0]]
    assert f1(pred, target).tolist() == [[pytest.approx(2 / 3), 1.0]]


@pytest.mark.parametrize("metric", [iou, f1, weighted_coverage, size_ratio_coverage, boundary_f_mean])
def test_class_axis_matches_scoring_each_class_alone(metric):
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 12, 12, generator=g) > 0.6
    target = torch.rand(2, 3, 12, 12, generator=g) > 0.6
    scores = metric(pred, target)
    assert scores.shape == (2, 3)
    for c in range(3):
        assert torch.equal(scores[:, c], metric(pred[:, c], target[:, c]))


def test_class_axis_iou_against_sklearn_per_class():
    from sklearn.metrics import jaccard_score

    g = torch.Generator().manual_seed(1)
    pred = torch.rand(1, 4, 16, 16, generator=g) > 0.5
    target = torch.rand(1, 4, 16, 16, generator=g) > 0.5
    expected = [jaccard_score(target[0, c].flatten().numpy(), pred[0, c].flatten().numpy()) for c in range(4)]
    assert iou(pred, target)[0].tolist() == pytest.approx(expected)


def test_class_axis_calibration_per_class_and_shape_errors():
    g = torch.Generator().manual_seed(2)
    prob = torch.rand(2, 2, 8, 8, generator=g)
    target = torch.rand(2, 2, 8, 8, generator=g) > 0.5
    for metric in (calibration_score, expected_calibration_error):
        scores = metric(prob, target)
        assert scores.shape == (2, 2)
        assert torch.equal(scores[:, 1], metric(prob[:, 1], target[:, 1]))
    with pytest.raises(ValueError, match=r"prob and target must have the same shape, found prob \(2, 2, 8, 8\)"):
        calibration_score(prob, target[:, :1])


def test_pooled_ece_from_summed_bins_equals_the_ece_of_all_pixels_as_one_image():
    from segdiff.metrics import _bin_sums, ece_from_bins

    g = torch.Generator().manual_seed(3)
    prob = torch.rand(3, 6, 6, generator=g)
    target = torch.rand(3, 6, 6, generator=g) > 0.5
    pooled = ece_from_bins(*(t.sum(dim=0) for t in _bin_sums(prob, target, 10)))
    assert pooled.item() == pytest.approx(expected_calibration_error(prob.reshape(1, -1), target.reshape(1, -1)).item())


# ---------------------------------------------------------------------------------------------
# Label maps: the confusion matrix against scikit-learn


def _labels(seed: int, shape=(3, 12, 10), num_classes=4, ignore=255):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, shape)
    target[rng.random(shape) < 0.15] = ignore
    target[0][target[0] == 2] = 0  # class 2 absent from the first image
    pred = rng.integers(0, num_classes, shape)
    pred[:, :2] = 3
    return pred, target


def test_confusion_matrix_and_its_scores_match_scikit_learn_with_an_ignore_index():
    from sklearn.metrics import confusion_matrix as sk_confusion, jaccard_score

    pred, target = _labels(0)
    counted = target != 255
    matrix = metrics.confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 4, ignore_index=255)
    expected = sk_confusion(target[counted], pred[counted], labels=range(4))
    assert np.array_equal(matrix.numpy(), expected)
    scores = metrics.confusion_scores(matrix)
    sk_iou = jaccard_score(target[counted], pred[counted], labels=range(4), average=None)
    np.testing.assert_allclose(scores["iou"].numpy(), sk_iou, rtol=1e-12)
    assert scores["miou"].item() == pytest.approx(sk_iou.mean())
    assert scores["pixel_accuracy"].item() == pytest.approx((pred[counted] == target[counted]).mean())
    recall = np.diag(expected) / expected.sum(axis=1)
    assert scores["mean_class_accuracy"].item() == pytest.approx(recall.mean())
    # predictions at ignored pixels change nothing
    changed = pred.copy()
    changed[~counted] = 0
    assert torch.equal(metrics.confusion_matrix(changed, target, 4, ignore_index=255), matrix)


def test_a_class_never_present_nor_predicted_is_left_out_of_the_mean():
    target = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    scores = metrics.confusion_scores(metrics.confusion_matrix(pred, target, 3))
    assert scores["iou"][:2].tolist() == [pytest.approx(1 / 2), pytest.approx(2 / 3)]
    assert np.isnan(scores["iou"][2].item()) and np.isnan(scores["class_accuracy"][2].item())
    assert scores["miou"].item() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_per_image_mean_iou_skips_classes_absent_from_both_and_counts_false_positives():
    target = np.array([[[0, 0, 1, 1]], [[2, 2, 2, 255]]])  # (B=2, H=1, W=4)
    pred = np.array([[[0, 0, 1, 1]], [[2, 2, 0, 1]]])
    per_image = metrics.mean_iou_per_image(pred, target, 3, ignore_index=255)
    # image 1: classes 0 and 1 perfect, class 2 absent from both: 1.0; image 2: class 2 IoU 2/3,
    # class 0 predicted but absent: 0 (the pixel predicted 1 is ignored)
    assert per_image.tolist() == [pytest.approx(1.0), pytest.approx((2 / 3 + 0) / 2)]


def test_label_maps_out_of_range_or_floating_are_refused():
    with pytest.raises(ValueError, match=r"target: class indices \[7\] outside 0..3"):
        metrics.confusion_matrix(np.zeros((2, 2), int), np.array([[0, 7], [1, 1]]), 4)
    with pytest.raises(ValueError, match="pred: expected integer class indices"):
        metrics.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), int), 4)
