"""Tests for segdiff.data.cityscapes on tiny files written in the official Cityscapes layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdiff.config import ExperimentConfig
from segdiff.data import DataError, build_dataset, image_to_tensor, make_dataset, resize_image
from segdiff.data.cityscapes import CityscapesInstances, expand_box

W, H = 200, 100


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """A polygon whose Pillow fill covers columns x0..x1 and rows y0..y1 inclusive."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# Back to front, as Cityscapes stores them. Expected instances (min_area 100):
#   1 car  40x40 at (20..59, 10..49), cut in two by the pole (38..41): 2 x 720 px kept;
#   3 person 8x8 = 64 px: too small, dropped;
#   4 bus (100..139, 10..69); the sign (100..139, 60..67) leaves a 40x2 = 80 px strip below it,
#     which is dropped, so the bus box ends at row 59;
#   5 rider fully hidden by the later wall: dropped;
#   cargroup, deleted car, license plate: never instances (the plate does not occlude).
SCENE = [
    {"label": "road", "polygon": _rect(0, 50, 199, 99)},
    {"label": "car", "polygon": _rect(20, 10, 59, 49)},
    {"label": "pole", "polygon": _rect(38, 0, 41, 99)},
    {"label": "person", "polygon": _rect(70, 10, 77, 17)},
    {"label": "bus", "polygon": _rect(100, 10, 139, 69)},
    {"label": "rider", "polygon": _rect(160, 20, 175, 40)},
    {"label": "traffic sign", "polygon": _rect(100, 60, 139, 67)},
    {"label": "wall", "polygon": _rect(150, 15, 185, 45)},
    {"label": "cargroup", "polygon": _rect(150, 60, 190, 90)},
    {"label": "car", "polygon": _rect(0, 0, 30, 30), "deleted": 1},
    {"label": "license plate", "polygon": _rect(25, 40, 35, 45)},
]


def _coordinate_image() -> np.ndarray:
    """R = x, G = y: a crop's pixels say where they came from."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx, yy, np.full_like(xx, 128)], -1).astype(np.uint8)


def write_frame(root: Path, split: str, city: str, frame: str, objects=SCENE) -> None:
    stem = f"{city}_{frame}"
    (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
    (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
    ann = {"imgHeight": H, "imgWidth": W, "objects": objects}
    (root / "gtFine" / split / city / f"{stem}_gtFine_polygons.json").write_text(json.dumps(ann))
    Image.fromarray(_coordinate_image()).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")


@pytest.fixture()
def cityscapes(tmp_path: Path) -> Path:
    write_frame(tmp_path, "train", "aachen", "000000_000019")
    write_frame(tmp_path, "train", "aachen", "000001_000019")
    write_frame(tmp_path, "train", "bremen", "000000_000019")
    write_frame(tmp_path, "val", "lindau", "000000_000019")
    return tmp_path


def test_instances_follow_the_occlusion_and_min_area_rules(cityscapes):
    test = CityscapesInstances(cityscapes, "test", 32, setting="tight")
    assert test.names == ["lindau_000000_000019_001_car", "lindau_000000_000019_004_bus"]
    car, bus = test.records
    assert car.box == (20, 10, 60, 50)
    assert bus.box == (100, 10, 140, 60)  # the 80-pixel strip under the sign was dropped
    car_mask = test.original_mask(0)[0]
    assert car_mask.shape == (40, 40)
    assert car_mask[:, 18:22].sum() == 0  # the pole occludes columns 38..41
    assert car_mask.sum() == 1600 - 4 * 40  # the license plate does not occlude
    assert test.original_mask(1).sum() == 40 * 50


def test_tight_crop_is_the_instance_box_at_native_resolution(cityscapes):
    test = build_dataset("cityscapes", cityscapes, "test", 40, setting="tight")
    image, mask = test[0]  # the car box is 40x40: no resizing
    assert image.shape == (3, 40, 40) and mask.shape == (1, 40, 40)
    assert torch.equal(image[0, 0], torch.arange(20, 60) / 255.0)  # R = x
    assert torch.equal(image[1, :, 0], torch.arange(10, 50) / 255.0)  # G = y
    assert torch.equal(mask, test.original_mask(0))
    image, mask = test[1]  # the bus box is 40x50: resized to 40x40
    assert set(mask.unique().tolist()) == {1.0}


def test_expansion_setting_grows_boxes_by_15_percent_for_test(cityscapes):
    test = CityscapesInstances(cityscapes, "test", 32, setting="expansion")
    assert test.crop_box(0) == (17, 7, 63, 53)  # 40x40 box, 3 px each side
    assert test.crop_box(1) == (97, 6, 143, 64)  # 40x50 box: 3 and 3.75 px each side
    assert expand_box((0, 0, 40, 40), 0.15, H, W) == (0, 0, 43, 43)  # clipped at the border
    mask = test.original_mask(0)
    assert mask.shape == (1, 46, 46) and mask.sum() == 1440
    image, mask = test[0]
    assert image.shape == (3, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}


def test_training_crops_expand_by_a_reproducible_random_10_to_20_percent(cityscapes):
    train = CityscapesInstances(cityscapes, "train", 32, setting="expansion", val_fraction=0.0)
    widths = set()
    for _ in range(8):
        x0, y0, x1, y1 = train.crop_box(0)  # the crop the next fetch will use
        assert 40 * 1.1 - 1 <= x1 - x0 <= 40 * 1.2 + 1
        image, _ = train[0]  # ... and does use
        expected = resize_image(image_to_tensor(_coordinate_image()[y0:y1, x0:x1]), 32)
        assert torch.equal(image, expected)
        widths.add(x1 - x0)
    assert len(widths) > 1
    train.set_epoch(0)
    fresh = CityscapesInstances(cityscapes, "train", 32, setting="expansion", val_fraction=0.0)
    assert train.crop_box(0) == fresh.crop_box(0)
    tight = CityscapesInstances(cityscapes, "train", 32, setting="tight", val_fraction=0.0)
    assert tight.crop_box(0) == tight.records[0].box


def test_official_val_is_test_and_train_is_carved_by_image(cityscapes):
    test = CityscapesInstances(cityscapes, "test", 16)
    train = CityscapesInstances(cityscapes, "train", 16, val_fraction=0.34)
    val = CityscapesInstances(cityscapes, "val", 16, val_fraction=0.34)
    assert all(n.startswith("lindau") for n in test.names)
    frames = lambda ds: {n.rsplit("_", 2)[0] for n in ds.names}  # noqa: E731
    assert len(frames(train)) == 2 and len(frames(val)) == 1
    assert frames(train).isdisjoint(frames(val))
    assert len(train) + len(val) == 6


def test_class_filter_and_augmented_items(cityscapes):
    buses = CityscapesInstances(cityscapes, "train", 16, classes=["bus"], val_fraction=0.0)
    assert len(buses) == 3 and all(n.endswith("_bus") for n in buses.names)
    aug = CityscapesInstances(cityscapes, "train", 16, augment=True, val_fraction=0.0, seed=1)
    first = aug[0]
    assert first[0].shape == (3, 16, 16) and set(first[1].unique().tolist()) <= {0.0, 1.0}
    aug.set_epoch(0)
    assert torch.equal(first[0], aug[0][0])
    assert not torch.equal(first[0], aug[0][0])  # epoch 1 draws anew
    with pytest.raises(ValueError, match="unknown Cityscapes classes"):
        CityscapesInstances(cityscapes, "train", 16, classes=["tram"])
    with pytest.raises(ValueError, match="setting"):
        CityscapesInstances(cityscapes, "train", 16, setting="loose")  # type: ignore[arg-type]


def test_index_cache_round_trips_and_stays_out_of_the_data_folder(cityscapes, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache") / "index.json"
    first = CityscapesInstances(cityscapes, "test", 16, index_cache=cache)
    assert cache.is_file()
    second = CityscapesInstances(cityscapes, "test", 16, index_cache=cache)
    assert second.records == first.records
    with pytest.raises(DataError, match="inside the data folder"):
        CityscapesInstances(cityscapes, "test", 16, index_cache=cityscapes / "index.json")


def test_make_dataset_takes_the_crop_setting_and_index_cache_from_the_config(cityscapes, tmp_path_factory):
    cfg = ExperimentConfig.tiny().override([f"data.root={cityscapes}", "data.dataset=cityscapes"])
    default = make_dataset(cfg, "test")
    assert type(default) is CityscapesInstances and default.setting == "expansion"
    assert default.crop_box(0) == (17, 7, 63, 53)  # grown by 15 %, as in the expansion test above
    cache = tmp_path_factory.mktemp("cache") / "index.json"
    tight = make_dataset(cfg.override(["data.setting=tight", f"data.index_cache={cache}"]), "test")  # --set ...
    assert tight.setting == "tight" and tight.crop_box(0) == tight.records[0].box
    assert cache.is_file()


def test_broken_layouts_are_clear_errors(cityscapes, tmp_path_factory):
    (cityscapes / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png").unlink()
    with pytest.raises(DataError, match=r"lindau_000000_000019_leftImg8bit.png: image for .* not found"):
        CityscapesInstances(cityscapes, "test", 16)
    bad = cityscapes / "gtFine/train/bremen/bremen_000000_000019_gtFine_polygons.json"
    bad.write_text('{"imgHeight": 100, "objects": []}')
    with pytest.raises(DataError, match=r"bremen_000000_000019_gtFine_polygons.json: not a Cityscapes polygons JSON"):
        CityscapesInstances(cityscapes, "train", 16)
    empty = tmp_path_factory.mktemp("empty")
    (empty / "gtFine").mkdir()
    (empty / "leftImg8bit").mkdir()
    with pytest.raises(DataError, match=r"gtFine/val: no CITY/\*_gtFine_polygons.json files"):
        CityscapesInstances(empty, "test", 16)
    with pytest.raises(DataError, match="official Cityscapes layout"):
        CityscapesInstances(tmp_path_factory.mktemp("other"), "test", 16)


def test_image_size_disagreeing_with_its_json_is_an_error(tmp_path):
    write_frame(tmp_path, "val", "lindau", "000000_000019")
    png = tmp_path / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(png)
    ds = CityscapesInstances(tmp_path, "test", 16)
    with pytest.raises(DataError, match="image is 50x50 but its JSON says 200x100"):
        ds[0]
