"""Per-image uncertainty from the K generations: `metrics.mean_entropy` and
`metrics.boundary_disagreement` on cases computed by hand, their edge cases, and the
uncertainty.csv that `segdiff predict` writes."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdiff import metrics
from segdiff.checkpoint import Checkpoint, save_checkpoint
from segdiff.cli import main
from segdiff.config import DiffusionConfig, ExperimentConfig
from segdiff.data import image_to_tensor, read_image, resize_image
from segdiff.data.synthetic import make_sample
from segdiff.model import SegDiff
from segdiff.models import load_model
from segdiff.sampling import Prediction, generation_seeds
from segdiff.seeding import derive_seed

FAST = ["--generations", "2", "--sampler", "ddim", "--steps", "3"]


def _maps(generations: list[list[list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """K generations of one binary image (K, H, W) -> the mean and population variance, (1, 1, H, W) each."""
    g = torch.tensor(generations, dtype=torch.float64)
    return g.mean(dim=0)[None, None], g.var(dim=0, unbiased=False)[None, None]


# ----------------------------------------------------------------------------------------------
# mean_entropy


def test_mean_entropy_binary_by_hand():
    # Two generations (0.2, 0.8) average to 0.5: ln 2; two agreeing on 1.0 give 0; the mean of the two pixels.
    prob, _ = _maps([[[0.2, 1.0]], [[0.8, 1.0]]])
    assert metrics.mean_entropy(prob).tolist() == pytest.approx([math.log(2) / 2], rel=1e-12)
    # p = 0.25: -(0.25 ln 0.25 + 0.75 ln 0.75)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert metrics.mean_entropy(torch.full((2, 1, 3, 3), 0.25)).tolist() == pytest.approx([expected] * 2, rel=1e-6)


def test_mean_entropy_multiclass_by_hand_is_the_entropy_of_the_class_distribution():
    prob = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64).view(1, 3, 1, 1)
    assert metrics.mean_entropy(prob).item() == pytest.approx(1.5 * math.log(2), rel=1e-12)
    generations = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]]).view(1, 2, 3, 1, 1)
    pred = Prediction.from_generations(generations)  # its uncertainty is the same entropy, per pixel
    assert metrics.mean_entropy(pred.prob).item() == pytest.approx(pred.uncertainty.mean().item(), rel=1e-6)


def test_mean_entropy_of_a_sure_prediction_is_zero_and_bad_input_is_refused():
    sure = torch.zeros(1, 1, 4, 4)
    sure[..., :2] = 1.0
    assert metrics.mean_entropy(sure).item() == 0.0
    with pytest.raises(ValueError, match=r"prob: expected maps of shape \(B, C, H, W\), found \(4, 4\)"):
        metrics.mean_entropy(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"prob: expected values in \[0, 1\]"):
        metrics.mean_entropy(torch.full((1, 1, 2, 2), 1.5))


# ----------------------------------------------------------------------------------------------
# boundary_disagreement


def _object_in_the_middle() -> tuple[torch.Tensor, torch.Tensor]:
    """5 x 5, K = 2. Centre (2, 2): generations 0.5, 1.0, mean 0.75 (the only predicted pixel),
    variance 0.0625; (1, 2): 0.0, 0.8, mean 0.4, variance 0.16; corner (0, 0): 0, 1, mean 0.5 (not
    predicted), variance 0.25; every other pixel 0 in both."""
    first, second = np.zeros((5, 5)), np.zeros((5, 5))
    first[2, 2], second[2, 2] = 0.5, 1.0
    first[1, 2], second[1, 2] = 0.0, 0.8
    first[0, 0], second[0, 0] = 0.0, 1.0
    return _maps([first.tolist(), second.tolist()])


def test_boundary_disagreement_by_hand():
    prob, variance = _object_in_the_middle()
    # radius 0: the object alone, its one pixel.
    assert metrics.boundary_disagreement(prob, variance, radius=0).item() == pytest.approx(0.0625, rel=1e-12)
    # radius 1: the centre and its 4 neighbours; (1, 2) is one of them: (0.0625 + 0.16) / 5.
    assert metrics.boundary_disagreement(prob, variance, radius=1).item() == pytest.approx(0.2225 / 5, rel=1e-12)
    # radius 3 (the default): every pixel of the 5 x 5 lies within 3 px (2^2 + 2^2 <= 9): (0.0625 + 0.16 + 0.25) / 25.
    assert metrics.boundary_disagreement(prob, variance).item() == pytest.approx(0.4725 / 25, rel=1e-12)


def test_boundary_disagreement_band_stops_at_the_image_border_and_takes_predictions_variance():
    generations = torch.zeros(1, 2, 1, 4, 4)
    generations[0, :, 0, 0, 0] = torch.tensor([0.6, 1.0])  # the object: one corner pixel, mean 0.8, variance 0.04
    generations[0, :, 0, 0, 1] = torch.tensor([0.0, 0.6])  # its neighbour: mean 0.3, variance 0.09
    pred = Prediction.from_generations(generations)
    # radius 1 inside the image: (0, 0), (0, 1), (1, 0).
    score = metrics.boundary_disagreement(pred.prob, pred.uncertainty.square(), radius=1)
    assert score.item() == pytest.approx((0.04 + 0.09) / 3, rel=1e-5)


def test_boundary_disagreement_without_a_predicted_object_or_with_one_generation_is_zero():
    prob, variance = _maps([[[0.0, 0.9], [0.4, 0.0]], [[0.6, 0.0], [0.4, 0.2]]])  # means 0.3, 0.45, 0.4, 0.1
    assert bool((variance > 0).any()) and not bool((prob > 0.5).any())
    assert metrics.boundary_disagreement(prob, variance).tolist() == [0.0]
    one = Prediction.from_generations(torch.rand(3, 1, 1, 6, 6))  # K = 1 (the U-Net): no spread
    assert metrics.boundary_disagreement(one.prob, one.uncertainty.square()).tolist() == [0.0, 0.0, 0.0]


def test_boundary_disagreement_refuses_label_maps_and_mismatched_maps():
    with pytest.raises(ValueError, match="binary masks"):
        metrics.boundary_disagreement(torch.full((1, 3, 2, 2), 1 / 3), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="prob and variance must have the same shape"):
        metrics.boundary_disagreement(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="radius"):
        metrics.boundary_disagreement(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), radius=-1)


# ----------------------------------------------------------------------------------------------
# segdiff predict's uncertainty.csv


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny preset (T=25) with random, non-zero weights: no training needed."""
    cfg = replace(ExperimentConfig.tiny(), diffusion=DiffusionConfig(num_steps=25))
    torch.manual_seed(0)
    net = SegDiff(cfg.model)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.03)
    path = tmp_path_factory.mktemp("ckpt") / "random.safetensors"
    save_checkpoint(path, Checkpoint(config=cfg, ema=net.state_dict()))
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_writes_one_uncertainty_row_per_image_in_input_order(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate("abc"):
        array = (make_sample(3, i, 48)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(array).resize((40, 36)).save(folder / f"{name}.png")
    listing = folder / "list.txt"
    listing.write_text("c.png\na.png\nb.png\n")  # input order c, a, b: not the sorted order
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(listing), "--out", str(out), *FAST]) == 0
    assert "uncertainty per image" in capsys.readouterr().out
    rows = _rows(out / "uncertainty.csv")
    assert [r["name"] for r in rows] == ["c", "a", "b"]
    assert list(rows[0]) == ["name", "num_generations", "mean_entropy", "boundary_disagreement"]

    model = load_model(checkpoint)
    sample = replace(model.config.sample, num_generations=2, sampler="ddim", num_sampling_steps=3, eta=0.0)
    for row in rows:
        image = resize_image(image_to_tensor(read_image(folder / f"{row['name']}.png")), 32)[None]
        generations = model.generations(image, generation_seeds(derive_seed(0, row["name"]), 2), sample)
        pred = Prediction.from_generations(generations)
        mean = generations.mean(dim=1)
        variance = generations.var(dim=1, unbiased=False)
        assert row["num_generations"] == "2"
        assert float(row["mean_entropy"]) == pytest.approx(metrics.mean_entropy(pred.prob).item(), rel=1e-6)
        assert float(row["mean_entropy"]) == pytest.approx(metrics.mean_entropy(mean).item(), rel=1e-5)
        assert float(row["boundary_disagreement"]) == pytest.approx(
            metrics.boundary_disagreement(mean, variance).item(), rel=1e-4, abs=1e-9)

    # An image whose row is missing is not done; the others are left alone and keep their rows.
    kept = (out / "uncertainty.csv").read_text()
    lines = kept.splitlines(keepends=True)  # the header, then c, a, b
    (out / "uncertainty.csv").write_text("".join(lines[:2] + lines[3:]))  # a's row gone
    assert main(["predict", str(checkpoint), str(listing), "--out", str(out), *FAST]) == 0
    assert "2 of 3 images already have all outputs" in capsys.readouterr().out
    assert (out / "uncertainty.csv").read_text() == kept


def test_a_file_that_is_not_an_uncertainty_table_is_refused(checkpoint, tmp_path, capsys):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "uncertainty.csv").write_text("image,score\nx,1\n")
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--out", str(out), *FAST]) == 2
    assert f"{out / 'uncertainty.csv'}: not a segdiff uncertainty table" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Failure detection: a per-image score against per-image quality over a split


def test_spearman_matches_scipy_with_ties_and_is_minus_one_for_a_reversed_order():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, 25).astype(float), rng.normal(size=25)  # x has many ties
    assert metrics.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert metrics.spearman([0.1, 0.2, 0.9], [0.9, 0.5, 0.1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))


def test_failure_auroc_matches_sklearn_on_the_worst_fifth():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    quality, scores = rng.random(14), rng.integers(0, 5, 14).astype(float)  # tied scores count half
    worst = metrics.worst_fraction(quality, 0.2)
    assert worst.sum() == 3 and set(np.flatnonzero(worst)) == set(np.argsort(quality)[:3])  # ceil(0.2 * 14)
    assert metrics.failure_auroc(scores, quality) == pytest.approx(roc_auc_score(worst, scores), abs=1e-12)
    assert metrics.failure_auroc(-quality, quality) == 1.0 and metrics.failure_auroc(quality, quality) == 0.0


def test_risk_coverage_area_by_hand():
    # Kept from the lowest score on: risks (1 - IoU) 0.0, 0.5, 1.0 -> running means 0, 0.25, 0.5 -> 0.25.
    assert metrics.risk_coverage_area([0.1, 0.2, 0.3], [1.0, 0.5, 0.0]) == pytest.approx(0.25)
    # The reverse order keeps the worst first: 1.0, 0.75, 0.5 -> 0.75.
    assert metrics.risk_coverage_area([0.3, 0.2, 0.1], [1.0, 0.5, 0.0]) == pytest.approx(0.75)


def test_failure_detection_refuses_lists_that_do_not_pair():
    with pytest.raises(ValueError, match="two equal-length lists of at least 2 images, found 3 and 2"):
        metrics.failure_auroc([0.1, 0.2, 0.3], [0.5, 0.6])
    with pytest.raises(ValueError, match="finite"):
        metrics.spearman([0.1, float("nan")], [0.5, 0.6])
    with pytest.raises(ValueError, match="fraction must be in"):
        metrics.worst_fraction([0.1, 0.2], 1.5)
