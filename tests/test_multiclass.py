"""More than two classes end to end: label masks in three forms, nearest resizing, one-hot and analog
bits, the U-Net's softmax, the ensemble's entropy and mutual information, and the label-map evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdiff import metrics
from segdiff.config import ExperimentConfig
from segdiff.data import DataError
from segdiff.data.augment import AffineParams, apply_affine
from segdiff.data.folder import FolderDataset
from segdiff.evaluation import evaluate
from segdiff.labels import IGNORE
from segdiff.models import build_model, load_model
from segdiff.protocol import protocol_for
from segdiff.sampling import Prediction
from segdiff.training import train

COLOURS = [[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]]
IGNORE_COLOUR = [255, 255, 255]


def label_map(i: int, size: int) -> np.ndarray:
    """Four classes in bands plus a void corner, varying with i."""
    labels = np.zeros((size, size), np.uint8)
    labels[:, size // 4:] = 1
    labels[size // 2:, :] = 2
    labels[size // 2 + i % 3:, size // 2:] = 3
    labels[:3, :3] = 255
    return labels


def write_multiclass_folder(root: Path, form: str, count: int = 6, size: int = 24) -> None:
    """A folder dataset of 4 classes + void whose masks are index PNGs, palette PNGs or RGB colours."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    classes = {"names": ["sky", "road", "car", "tree"], "ignore_index": 255}
    if form == "rgb":
        classes |= {"colours": COLOURS, "ignore_colour": IGNORE_COLOUR}
    (root / "classes.yaml").write_text(json.dumps(classes))  # JSON is YAML
    for i in range(count):
        labels = label_map(i, size)
        rng = np.random.default_rng(i)
        image = (rng.integers(0, 60, (size, size, 3)) + labels[..., None].clip(max=3) * 60).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"m{i}.png")
        if form == "index":
            Image.fromarray(labels).save(root / "masks" / f"m{i}.png")
        elif form == "palette":
            picture = Image.fromarray(labels, mode="P")
            picture.putpalette(sum(COLOURS, []) + [0] * (3 * 251) + IGNORE_COLOUR)
            picture.save(root / "masks" / f"m{i}.png")
        else:
            rgb = np.zeros((size, size, 3), np.uint8)
            for c, colour in enumerate(COLOURS):
                rgb[labels == c] = colour
            rgb[labels == 255] = IGNORE_COLOUR
            Image.fromarray(rgb).save(root / "masks" / f"m{i}.png")


# ----------------------------------------------------------------------------------------------
# Data


def test_index_palette_and_colour_coded_masks_read_as_the_same_labels(tmp_path):
    read = {}
    for form in ("index", "palette", "rgb"):
        write_multiclass_folder(tmp_path / form, form, count=3)
        data = FolderDataset(tmp_path / form, "train", image_size=24, val_fraction=0.34)
        read[form] = [data[i][1] for i in range(len(data))]
    expected = torch.from_numpy(label_map(int(data.names[0][1:]), 24).astype(np.float32))[None]
    expected[expected == 255] = IGNORE
    assert torch.equal(read["index"][0], expected)
    assert all(torch.equal(a, b) for a, b in zip(read["index"], read["palette"]))
    assert all(torch.equal(a, b) for a, b in zip(read["index"], read["rgb"]))


def test_a_colour_not_in_the_class_file_names_the_file_and_the_colour(tmp_path):
    write_multiclass_folder(tmp_path, "rgb", count=3)
    bad = np.zeros((24, 24, 3), np.uint8)
    bad[5, 5] = [9, 9, 9]
    Image.fromarray(bad).save(tmp_path / "masks" / "m1.png")
    with pytest.raises(DataError, match=r"m1\.png: colour\(s\) \[9, 9, 9\] not in the class file's colours"):
        for split in ("train", "val"):
            FolderDataset(tmp_path, split, image_size=24, val_fraction=0.34).verify()


def test_labels_are_resized_with_nearest_neighbour_never_blended(tmp_path):
    write_multiclass_folder(tmp_path, "index", count=3, size=40)
    data = FolderDataset(tmp_path, "train", image_size=16, val_fraction=0.34)
    _, mask = data[0]
    assert mask.shape == (1, 16, 16)
    assert set(mask.unique().tolist()) <= {IGNORE, 0.0, 1.0, 2.0, 3.0}


def test_rotating_a_label_map_keeps_its_classes_and_pads_with_ignored_pixels():
    labels = torch.tensor(label_map(0, 24).astype(np.float32))[None]
    labels[labels == 255] = IGNORE
    _, turned = apply_affine(torch.rand(3, 24, 24), labels, AffineParams(angle=30.0, scale=0.8), mask_mode="labels")
    assert set(turned.unique().tolist()) <= {IGNORE, 0.0, 1.0, 2.0, 3.0}
    assert turned[0, 0, 0] == IGNORE  # a corner the rotated frame does not cover
    assert turned[0, 12, 12] == labels[0, 12, 12]  # the centre stays


# ----------------------------------------------------------------------------------------------
# The ensemble and the metrics


def test_a_multiclass_prediction_holds_argmax_labels_entropy_and_mutual_information():
    generations = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]]).view(1, 2, 3, 1, 1)  # two sure, disagreeing
    pred = Prediction.from_generations(generations)
    assert torch.allclose(pred.prob.flatten(), torch.tensor([0.5, 0.5, 0.0]))
    assert pred.uncertainty.item() == pytest.approx(math.log(2))  # the entropy of the mean
    inner = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert pred.disagreement.item() == pytest.approx(math.log(2) - inner, rel=1e-5)
    assert pred.labels.shape == (1, 1, 1, 1) and pred.mask.sum().item() == 1


def test_top_label_calibration_and_brier_by_hand():
    prob = torch.tensor([[[0.7, 0.2]], [[0.2, 0.8]], [[0.1, 0.0]]])  # (C=3, H=1, W=2)
    target = torch.tensor([[0, 0]])  # first pixel right with 0.7, second wrong with 0.8
    count, conf, correct = metrics.top_label_bins(prob, target, num_bins=10)
    assert count[7].item() == 1 and count[8].item() == 1
    assert correct[7].item() == 1 and correct[8].item() == 0
    assert metrics.ece_from_bins(count, conf, correct).item() == pytest.approx((0.3 + 0.8) / 2)
    brier = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.8 ** 2 + 0.8 ** 2 + 0.0)) / 2
    assert metrics.brier_score(prob, target).item() == pytest.approx(brier)
    # an ignored pixel counts in neither
    assert metrics.brier_score(prob, torch.tensor([[0, -1]]), ignore_index=-1).item() == pytest.approx(0.14)


def test_brier_score_equals_its_one_hot_definition_per_image():
    gen = torch.Generator().manual_seed(0)
    prob = torch.rand(3, 5, 6, 7, generator=gen)
    prob /= prob.sum(dim=1, keepdim=True)
    target = torch.randint(-1, 5, (3, 6, 7), generator=gen)
    target[2] = -1  # an image with no labelled pixel scores 0
    onehot = torch.nn.functional.one_hot(target.clamp(min=0), 5).permute(0, 3, 1, 2).double()
    squared = (prob.double() - onehot).square().sum(dim=1)
    for b in range(3):
        labelled = target[b] >= 0
        expected = float(squared[b][labelled].mean()) if labelled.any() else 0.0
        assert metrics.brier_score(prob, target, ignore_index=-1)[b].item() == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Models, training and evaluation


@pytest.mark.parametrize("encoding, channels", [("onehot", 4), ("bits", 2)])
def test_segdiff_denoises_the_encoding_and_returns_class_probabilities(encoding, channels):
    cfg = ExperimentConfig.tiny().override(["model.num_classes=4", f"model.mask_encoding={encoding}",
                                            "diffusion.num_steps=25"])
    model = build_model(cfg)
    assert model.net.out[-1].out_channels == channels
    images, labels = torch.rand(2, 3, 32, 32), torch.randint(0, 4, (2, 1, 32, 32)).float()
    labels[:, :, :4] = IGNORE
    loss = model.loss(model.net, images, labels, torch.Generator().manual_seed(0), cfg.train, slice(0, 2))
    assert torch.isfinite(loss)
    probs = model.generations(images, list(range(6)), cfg.sample.__class__(num_generations=3, sampler="ddim",
                                                                            num_sampling_steps=3))
    assert probs.shape == (2, 3, 4, 32, 32)
    assert torch.allclose(probs.sum(dim=2), torch.ones(2, 3, 32, 32), atol=1e-5)


def test_the_unet_predicts_a_softmax_and_its_loss_ignores_void():
    cfg = ExperimentConfig.tiny().override(["model.kind=unet", "model.num_classes=4"])
    model = build_model(cfg)
    images, labels = torch.rand(2, 3, 32, 32), torch.randint(0, 4, (2, 1, 32, 32)).float()
    labels[:, :, :10] = IGNORE
    probs = model.generations(images, [0, 1], cfg.sample)
    assert torch.allclose(probs.sum(dim=2), torch.ones(2, 1, 32, 32), atol=1e-5)
    first = model.loss(model.net, images, labels, torch.Generator(), cfg.train, slice(None))

    class Shifted(torch.nn.Module):  # other logits where the labels are ignored
        def forward(self, x):
            return model.net(x) + 30.0 * torch.arange(4.0).view(1, 4, 1, 1) * (labels < 0)

    second = model.loss(Shifted(), images, labels, torch.Generator(), cfg.train, slice(None))
    assert first.item() == pytest.approx(second.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["segdiff", "unet"])
def test_a_run_takes_the_datas_classes_and_evaluate_writes_the_per_class_report(tmp_path, kind):
    write_multiclass_folder(tmp_path / "data", "index", count=8, size=32)
    cfg = ExperimentConfig.tiny().override([
        f"model.kind={kind}", "data.dataset=folder", f"data.root={tmp_path / 'data'}", "diffusion.num_steps=25",
        "train.batch_size=4", "train.max_steps=3", "train.val_every=3", "train.val_generations=1",
        "train.device=cpu", f"train.out_dir={tmp_path / 'run'}", "sample.num_generations=2",
        "sample.sampler=ddim", "sample.num_sampling_steps=3"])
    train(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["num_classes"] == 4 and saved["model"]["class_names"] == ["sky", "road", "car", "tree"]
    model = load_model(tmp_path / "run")
    data = FolderDataset(tmp_path / "data", "val", image_size=32)
    summary = evaluate(model, data, protocol_for("folder", 32), seed=0, out_dir=tmp_path / "eval", progress=False)
    assert set(summary["per_class"]) == {"sky", "road", "car", "tree"}
    matrix = torch.tensor(summary["confusion_matrix"])
    ious = metrics.confusion_scores(matrix)["iou"]
    assert summary["metrics"]["miou"] == pytest.approx(float(ious.nanmean()))
    labelled = sum(int((data[i][1] >= 0).sum()) for i in range(len(data)))
    assert int(matrix.sum()) == labelled  # every labelled pixel once, void none
    for name in ("report.html", "report.md", "per_image.csv", "curve.csv", "examples.png", "reliability.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert "car" in (tmp_path / "eval" / "report.html").read_text()


def test_predict_writes_an_indexed_label_png_at_the_input_size_with_the_classes_colours(tmp_path):
    from segdiff.cli import main

    write_multiclass_folder(tmp_path / "data", "rgb", count=6, size=32)
    cfg = ExperimentConfig.tiny().override([
        "data.dataset=folder", f"data.root={tmp_path / 'data'}", "diffusion.num_steps=25", "train.batch_size=4",
        "train.max_steps=2", "train.val_every=0", "train.device=cpu", f"train.out_dir={tmp_path / 'run'}",
        "sample.num_generations=2", "sample.sampler=ddim", "sample.num_sampling_steps=2"])
    train(cfg, progress=False)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(photo)
    assert main(["predict", str(tmp_path / "run"), str(photo), "--out", str(tmp_path / "pred"), "--class-probs"]) == 0
    labels = Image.open(tmp_path / "pred" / "photo_labels.png")
    assert labels.mode == "P" and labels.size == (45, 30)
    assert labels.getpalette()[:12] == sum(COLOURS, [])  # the class file's colours
    assert set(np.unique(np.array(labels)).tolist()) <= {0, 1, 2, 3}
    probs = [np.array(Image.open(tmp_path / "pred" / f"photo_prob_{n}.png"), dtype=float) / 255
             for n in ("sky", "road", "car", "tree")]
    assert np.allclose(sum(probs), 1.0, atol=4 / 255)  # four rounded probabilities sum to one
    for kind in ("overlay", "entropy"):
        assert Image.open(tmp_path / "pred" / f"photo_{kind}.png").size == (45, 30)


def test_the_multiclass_synthetic_data_is_reproducible_and_leaves_the_binary_task_unchanged():
    from segdiff.data.synthetic import SyntheticShapes, make_sample

    first, again = make_sample(3, 7, 32, num_classes=4), make_sample(3, 7, 32, num_classes=4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert set(first[1].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    data = SyntheticShapes(8, 32, seed=1, num_classes=4)
    assert data.classes.names == ("background", "shape 1", "shape 2", "shape 3")
    binary = make_sample(3, 7, 32)
    assert set(binary[1].unique().tolist()) <= {0.0, 1.0} and not hasattr(SyntheticShapes(2, 32), "classes")


def test_demo_with_classes_trains_scores_per_class_and_refuses_one_class(tmp_path, capsys):
    from segdiff.cli import main

    assert main(["demo", "--classes", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "--classes 1: a segmentation needs at least 2 classes" in capsys.readouterr().err
    assert main(["demo", "--classes", "3", "--steps", "4", "--num-test", "4", "--generations", "2",
                 "--out", str(tmp_path / "demo")]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary["per_class_iou"]) == {"background", "shape 1", "shape 2"}
    assert 0.0 <= summary["held_out_miou"] <= 1.0 and (tmp_path / "demo" / "examples.png").is_file()


@pytest.mark.slow
def test_multiclass_demo_tells_the_classes_apart_within_its_budget(tmp_path):
    # The README's promise for `segdiff demo --classes 4`: every shape class learnt (IoU >= 0.70
    # each, mIoU >= 0.80) in the demo's 2.75-minute budget on 2 cores.
    from segdiff.demo import run_demo

    summary = run_demo(tmp_path, num_classes=4, progress=False)
    assert summary["held_out_miou"] >= 0.80 and min(summary["per_class_iou"].values()) >= 0.70


def test_a_model_of_c_classes_is_refused_on_data_with_another_c(tmp_path):
    write_multiclass_folder(tmp_path / "data", "index", count=4, size=32)
    model = build_model(ExperimentConfig.tiny().override(["model.num_classes=3"]))
    data = FolderDataset(tmp_path / "data", "train", image_size=32, val_fraction=0.25)
    with pytest.raises(ValueError, match=r"the model segments 3 classes .* but the data has 4 \(sky, road, car, tree\)"):
        evaluate(model, data, protocol_for("folder", 32), progress=False)
