"""Ignored pixels (void): class files, label masks, resizing, augmentation, losses and scores.

A pixel marked ignored must change neither a loss nor a score, whatever the model predicts there;
the values are checked against hand-computed cases and scikit-learn-free numpy references.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from PIL import Image

from segdiff import metrics
from segdiff.config import ExperimentConfig
from segdiff.data import DataError
from segdiff.data.augment import AffineParams, apply_affine
from segdiff.data.folder import FolderDataset
from segdiff.data.reading import resize_mask
from segdiff.diffusion import DDPMScheduler
from segdiff.evaluation import score_probabilities
from segdiff.labels import IGNORE, ClassFileError, find_class_file, read_class_file
from segdiff.models import UNetSegmenter, training_loss
from segdiff.training import train


def write_label_folder(root: Path, count: int = 6, size: int = 24, classes: dict | None = None) -> None:
    """Images and label masks (0 rest, 1 object, 255 void) with a classes.json."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(json.dumps(classes or {"names": ["rest", "object"], "ignore_index": 255}))
    for i in range(count):
        rng = np.random.default_rng(i)
        labels = np.zeros((size, size), np.uint8)
        labels[4:14, 6:18] = 1
        labels[:, :3] = 255  # a void stripe
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(labels).save(root / "masks" / f"s{i}.png")


# ----------------------------------------------------------------------------------------------
# Class files and label masks


@pytest.mark.parametrize("content, problem", [
    ({"names": ["only"]}, "at least two class names"),
    ({"names": ["a", "a"]}, "repeat"),
    ({"names": ["a", "b"], "ignore_index": 1}, "not a class index"),
    ({"names": ["a", "b"], "ignore_index": 300}, "2..255"),
    ({"names": ["a", "b"], "colour": 3}, "unknown key(s) colour"),
])
def test_a_bad_class_file_is_refused_naming_the_file_and_the_field(tmp_path, content, problem):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ClassFileError, match=str(path)) as info:
        read_class_file(path)
    assert problem in str(info.value)


def test_class_files_read_as_yaml_or_json_and_two_at_once_are_refused(tmp_path):
    (tmp_path / "classes.yaml").write_text("names: [background, car]\nignore_index: 255\n")
    classes = read_class_file(find_class_file(tmp_path))
    assert classes.names == ("background", "car") and classes.ignore_index == 255
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["a", "b"]}))
    with pytest.raises(ClassFileError, match="several class files"):
        find_class_file(tmp_path)


def test_a_label_mask_becomes_foreground_background_and_ignored_pixels(tmp_path):
    write_label_folder(tmp_path, count=3)
    data = FolderDataset(tmp_path, "train", image_size=24, val_fraction=0.34)
    _, mask = data[0]
    expected = torch.zeros(1, 24, 24)
    expected[0, 4:14, 6:18] = 1
    expected[0, :, :3] = IGNORE
    assert torch.equal(mask, expected)


def test_a_label_value_outside_the_class_list_names_the_file_and_the_value(tmp_path):
    write_label_folder(tmp_path, count=3)
    bad = np.zeros((24, 24), np.uint8)
    bad[0, 0], bad[1, 1] = 7, 9
    Image.fromarray(bad).save(tmp_path / "masks" / "s1.png")
    with pytest.raises(DataError, match=r"s1\.png: label value\(s\) 7, 9 not in the class list"):
        for split in ("train", "val"):
            FolderDataset(tmp_path, split, image_size=24, val_fraction=0.34).verify()


def test_three_names_make_the_masks_label_maps_with_void(tmp_path):
    write_label_folder(tmp_path, count=3, classes={"names": ["a", "b", "c"], "ignore_index": 255})
    data = FolderDataset(tmp_path, "train", image_size=12, val_fraction=0.34)
    assert data.multiclass and data.classes.num_classes == 3
    _, mask = data[0]  # 24 -> 12 px with nearest neighbour: labels stay labels
    assert set(mask.unique().tolist()) == {IGNORE, 0.0, 1.0}


# ----------------------------------------------------------------------------------------------
# Geometry: an ignored pixel stays ignored, never becomes foreground or background


def test_resizing_keeps_ignored_pixels_where_half_their_footprint_was_ignored():
    mask = torch.tensor([[[1., 1., 0., 0.],
                          [1., 1., 0., 0.],
                          [IGNORE, IGNORE, IGNORE, 1.],
                          [IGNORE, IGNORE, 1., 1.]]])
    # 2x2 footprints: all foreground; all background; all ignored; 1/4 ignored and 3/4 foreground.
    assert torch.equal(resize_mask(mask, 2), torch.tensor([[[1., 0.], [IGNORE, 1.]]]))


def test_flips_and_rotations_move_ignored_pixels_with_the_image():
    mask = torch.zeros(1, 8, 8)
    mask[0, :, :2] = IGNORE
    mask[0, 3:5, 4:7] = 1
    image = torch.rand(3, 8, 8)
    _, flipped = apply_affine(image, mask, AffineParams(angle=0.0, scale=1.0, hflip=True, vflip=False))
    assert torch.equal(flipped, mask.flip(-1))
    _, turned = apply_affine(image, mask, AffineParams(angle=90.0, scale=1.0, hflip=False, vflip=False))
    assert set(turned.unique().tolist()) == {IGNORE, 0.0, 1.0}
    assert int((turned == IGNORE).sum()) == int((mask == IGNORE).sum())  # a quarter turn moves, never blends
    assert torch.equal(turned.abs(), mask.abs().rot90(1, (-2, -1))) or torch.equal(turned.abs(), mask.abs().rot90(-1, (-2, -1)))


# ----------------------------------------------------------------------------------------------
# Losses


def test_the_diffusion_loss_is_the_mse_of_the_labelled_pixels_alone():
    scheduler = DDPMScheduler(num_steps=25)
    x0 = torch.tensor([[[[1., -1.], [-1., -1.]]]])
    valid = torch.tensor([[[[True, True], [False, True]]]])
    noise, t = torch.zeros_like(x0), torch.tensor([3])
    x_t = scheduler.add_noise(x0, noise, t)
    output = torch.tensor([[[[0.5, 0.0], [9.0, -1.0]]]])  # an epsilon network's output
    loss = training_loss(output, x0, noise, t, x_t, scheduler, valid=valid)
    assert loss.item() == pytest.approx((0.5 ** 2 + 0 + 1) / 3)
    output[0, 0, 1, 0] = -40.0  # what the network says at the ignored pixel does not matter
    assert training_loss(output, x0, noise, t, x_t, scheduler, valid=valid, dice_weight=1.0).item() == pytest.approx(
        training_loss(output.clone().fill_(0).add_(output * valid), x0, noise, t, x_t, scheduler, valid=valid,
                      dice_weight=1.0).item())


def test_the_unet_loss_ignores_void_and_equals_dice_ce_without_it():
    model = UNetSegmenter(ExperimentConfig.tiny().override(["model.kind=unet"]))
    image = torch.rand(2, 3, 32, 32)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    logits = model.net(image).float()
    plain = model.loss(model.net, image, mask, torch.Generator(), model.config.train, slice(None))
    assert plain.item() == pytest.approx(DiceCELoss(sigmoid=True)(logits, mask).item(), rel=1e-6)

    ignored = mask.clone()
    ignored[:, :, :10] = IGNORE
    first = model.loss(model.net, image, ignored, torch.Generator(), model.config.train, slice(None))

    class Shifted(torch.nn.Module):  # the same network, its logits changed only where the mask is ignored
        def forward(self, x):
            out = model.net(x)
            return out + 50.0 * (ignored < 0)

    second = model.loss(Shifted(), image, ignored, torch.Generator(), model.config.train, slice(None))
    assert first.item() == pytest.approx(second.item(), rel=1e-6)
    assert abs(first.item() - plain.item()) > 1e-4  # the ignored pixels did count before


# ----------------------------------------------------------------------------------------------
# Scores


def test_scores_count_only_the_labelled_pixels():
    generator = torch.Generator().manual_seed(0)
    target = (torch.rand(1, 16, 16, generator=generator) > 0.6).float()
    target[0, :5] = IGNORE
    probs = torch.rand(3, 1, 16, 16, generator=generator)
    scores = score_probabilities(probs, target)
    changed = probs.clone()
    changed[:, :, :5] = 1.0 - changed[:, :, :5]  # other predictions on the ignored rows only
    again = score_probabilities(changed, target)
    for name in ("iou", "f1", "ece", "calibration"):
        assert torch.equal(scores[name], again[name]), name

    labelled = target[0] >= 0  # numpy reference over the labelled pixels
    for k in range(3):
        pred, truth = probs[k, 0][labelled].numpy() > 0.5, target[0][labelled].numpy() > 0.5
        assert scores["iou"][k, 0].item() == pytest.approx((pred & truth).sum() / (pred | truth).sum())
        flat = metrics.expected_calibration_error(probs[k, 0][labelled][None], target[0][labelled][None])
        assert scores["ece"][k, 0].item() == pytest.approx(flat.item())


def test_a_short_run_trains_and_validates_on_a_folder_with_void(tmp_path):
    write_label_folder(tmp_path / "data", count=8, size=32)
    cfg = ExperimentConfig.tiny().override([
        "data.dataset=folder", f"data.root={tmp_path / 'data'}", "diffusion.num_steps=25", "train.batch_size=4",
        "train.max_steps=4", "train.val_every=4", "train.val_generations=1", "train.device=cpu",
        f"train.out_dir={tmp_path / 'run'}"])
    train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if r["event"] == "train")
    assert [r for r in records if r["event"] == "val"], "validation ran and scored the void-marked masks"
