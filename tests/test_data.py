"""Tests for segdiff.data: the real benchmarks (skipped when absent), folders, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL
import pytest
import tifffile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segdiff.config import ExperimentConfig
from segdiff.data import (
    DATASETS,
    DataError,
    FolderDataset,
    MoNuSeg,
    Vaihingen,
    build_dataset,
    carve_validation,
    image_to_tensor,
    make_dataset,
    mask_to_tensor,
    read_image,
    read_mask,
    read_monuseg_xml,
    read_size,
    resize_image,
    resize_mask,
)
from segdiff.sliding import quadrants, stitch_quadrants, stitch_tiles, tiles


def _data_root() -> Path:
    return Path(os.environ.get("SEGDIFF_DATA", "")) if os.environ.get("SEGDIFF_DATA") else Path("/nonexistent")


DATA = _data_root().resolve()
VAIHINGEN = DATA / "vaihingen" / "buildings"
MONUSEG_TEST = DATA / "monuseg" / "test"
needs_vaihingen = pytest.mark.skipif(not VAIHINGEN.is_dir(), reason=f"Vaihingen data not found at {VAIHINGEN}")
needs_monuseg = pytest.mark.skipif(not MONUSEG_TEST.is_dir(), reason=f"MoNuSeg data not found at {MONUSEG_TEST}")


def _check_item(image: torch.Tensor, mask: torch.Tensor, size: int) -> None:
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert mask.shape == (1, size, size) and mask.dtype == torch.float32
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------------------------
# Splits and the registry


def test_carve_validation_is_deterministic_disjoint_and_order_independent():
    names = [f"s{i:03d}" for i in range(100)]
    train, val = carve_validation(names, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(names)
    assert carve_validation(list(reversed(names)), 0.1, seed=0)[1] == list(reversed(val))
    assert carve_validation(names, 0.1, seed=0) == (train, val)
    assert carve_validation(names, 0.1, seed=1)[1] != val
    assert carve_validation(["a", "b", "c"], 0.1, seed=0)[1] != []  # at least one when > 0
    assert carve_validation(names, 0.0, seed=0) == (names, [])


def test_build_dataset_rejects_unknown_names_listing_the_valid_ones():
    assert set(DATASETS) == {"vaihingen", "monuseg", "cityscapes", "camvid", "folder", "nnunet", "synthetic"}
    with pytest.raises(ValueError, match="vaihingen, monuseg, cityscapes, camvid, folder, nnunet, synthetic"):
        build_dataset("kitti", "/nonexistent", "train", 64)
    with pytest.raises(ValueError, match="split"):
        build_dataset("folder", "/nonexistent", "training", 64)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Vaihingen (real data)


@needs_vaihingen
def test_vaihingen_split_sizes_and_disjoint_validation():
    train = build_dataset("vaihingen", DATA, "train", 64)
    val = build_dataset("vaihingen", DATA, "val", 64)
    test = build_dataset("vaihingen", DATA, "test", 64)
    assert (len(train), len(val), len(test)) == (90, 10, 68)
    assert set(train.names).isdisjoint(val.names)
    assert max(int(n[-3:]) for n in train.names + val.names) == 100
    assert test.names[0] == "building_101" and test.names[-1] == "building_168"


@needs_vaihingen
def test_vaihingen_mask_polarity_building_covers_centre_and_3_9_to_21_6_percent():
    # The masks are 1-bit MinIsWhite TIFFs; read with the wrong polarity, the centre pixel
    # would be background and the building would cover 78-96 % of the tile.
    fractions = []
    for n in range(1, 169):
        mask = read_mask(VAIHINGEN / f"building_mask_{n:03d}.tif")
        assert mask.shape == (512, 512)
        assert mask[256, 256], f"building_mask_{n:03d}: centre pixel is background"
        fractions.append(mask.mean())
    assert 0.0385 <= min(fractions) and max(fractions) <= 0.2165
    assert np.mean(fractions) == pytest.approx(0.095, abs=0.005)


@needs_vaihingen
@pytest.mark.parametrize("sub", [".", "vaihingen", "vaihingen/buildings"])
def test_vaihingen_accepts_data_root_vaihingen_or_buildings_folder(sub):
    ds = Vaihingen(DATA / sub, "test", 32)
    assert len(ds) == 68
    _check_item(*ds[0], 32)


@needs_vaihingen
def test_vaihingen_items_follow_the_contract_with_and_without_augmentation():
    plain = build_dataset("vaihingen", DATA, "train", 64)
    _check_item(*plain[0], 64)
    assert torch.equal(plain[0][0], plain[0][0])  # no augmentation: no randomness
    aug = build_dataset("vaihingen", DATA, "train", 64, augment=True, seed=3)
    first = aug[0]
    _check_item(*first, 64)
    assert not torch.equal(first[0], aug[0][0])  # the next fetch (epoch) draws anew
    replay = build_dataset("vaihingen", DATA, "train", 64, augment=True, seed=3)
    again = replay[0]
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


@needs_vaihingen
def test_vaihingen_reference_preprocessing_is_nearest_image_and_enlarged_mask():
    clean = Vaihingen(DATA, "test", 256)
    ref = Vaihingen(DATA, "test", 256, preprocessing="reference")
    full = Vaihingen(DATA, "test", 512)
    image_ref, mask_ref = ref[0]
    _, mask_clean = clean[0]
    image_full, _ = full[0]
    assert torch.equal(image_ref, image_full[:, ::2, ::2])  # nearest picks source pixel 2i
    assert set(mask_ref.unique().tolist()) <= {0.0, 1.0}
    assert bool((mask_clean <= mask_ref).all())  # any non-zero -> 1 only ever adds pixels
    assert mask_ref.sum() > mask_clean.sum()


# ----------------------------------------------------------------------------------------------
# MoNuSeg


@needs_monuseg
def test_monuseg_test_split_returns_full_512_and_quadrants_round_trip():
    ds = build_dataset("monuseg", DATA, "test", 256)
    assert len(ds) == 14
    image, mask = ds[0]
    _check_item(image, mask, 512)
    assert 0.05 < mask.mean().item() < 0.5
    q = quadrants(image)
    assert q.shape == (4, 3, 256, 256)
    assert torch.equal(q[1], image[:, :256, 256:]) and torch.equal(q[2], image[:, 256:, :256])
    assert torch.equal(stitch_quadrants(q), image)
    assert torch.equal(stitch_quadrants(quadrants(mask[None]))[0], mask)  # batched form


@needs_monuseg
def test_monuseg_xml_polygons_reproduce_the_png_masks():
    # Filling the XML polygons with Pillow gives the PNG exactly under Pillow 10.x-11.0 (the
    # masks were evidently made that way); later Pillow versions fill a few hairline slivers
    # differently (measured: at most 2 pixels per 1000x1000 image, 9 over the 14 images).
    exact = PIL.__version__.startswith(("10.", "11.0."))
    for xml in sorted((MONUSEG_TEST / "annotations").glob("*.xml")):
        png = read_mask(MONUSEG_TEST / "masks" / f"{xml.stem}.png")
        drawn = read_monuseg_xml(xml, png.shape)
        iou = (drawn & png).sum() / (drawn | png).sum()
        if exact:
            assert iou == 1.0, xml.name
        assert iou >= 0.99999 and (drawn != png).sum() <= 3, (xml.name, iou)


def _write_monuseg(root: Path, split: str, stems: list[str], size: int = 40) -> None:
    gen = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "monuseg" / split / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image = gen.integers(0, 256, (size, size, 3), dtype=np.uint8)
        tifffile.imwrite(root / "monuseg" / split / "images" / f"{stem}.tif", image, compression="lzw")
        mask = np.zeros((size, size), np.uint8)
        mask[5:20, 8:30] = 255
        Image.fromarray(np.stack([mask, mask], -1), mode="LA").save(root / "monuseg" / split / "masks" / f"{stem}.png")


def test_monuseg_missing_train_folder_is_a_clear_error(tmp_path):
    _write_monuseg(tmp_path, "test", ["a"])
    assert len(MoNuSeg(tmp_path, "test", 16)) == 1
    for split in ("train", "val"):
        with pytest.raises(DataError, match=r"monuseg/train/images: MoNuSeg train folder not found"):
            MoNuSeg(tmp_path, split, 16)


def test_monuseg_train_gives_reproducible_random_crops_of_the_resized_image(tmp_path):
    _write_monuseg(tmp_path, "train", [f"t{i}" for i in range(5)])
    train = MoNuSeg(tmp_path, "train", 16, val_fraction=0.2)
    val = MoNuSeg(tmp_path, "val", 16, val_fraction=0.2)
    assert len(train) == 4 and len(val) == 1
    full_image, full_mask = val[0]
    _check_item(full_image, full_mask, 32)  # val follows the test protocol
    image, mask = train[0]
    _check_item(image, mask, 16)
    # The crop is a window of the 32x32 resized image.
    resized = resize_image(image_to_tensor(read_image(tmp_path / "monuseg/train/images" / f"{train.names[0]}.tif")), 32)
    windows = [(top, left) for top in range(17) for left in range(17)
               if torch.equal(resized[:, top:top + 16, left:left + 16], image)]
    assert len(windows) == 1
    train.set_epoch(0)
    assert torch.equal(train[0][0], image)  # replaying epoch 0 gives the same crop
    positions = {tuple(train[0][0][:, 0, 0].tolist()) for _ in range(6)}  # epochs 1..6
    assert len(positions) > 1
    aug = MoNuSeg(tmp_path, "train", 16, augment=True, val_fraction=0.2)
    _check_item(*aug[1], 16)


def test_monuseg_names_live_in_data_monuseg_and_are_importable_from_data(tmp_path):
    import segdiff.data
    import segdiff.data.monuseg
    import segdiff.sliding

    for name in ("MoNuSeg", "read_monuseg_xml"):
        assert getattr(segdiff.data, name) is getattr(segdiff.data.monuseg, name), name
    for name in ("quadrants", "stitch_quadrants"):  # tiling lives with the sliding window
        assert not hasattr(segdiff.data.monuseg, name) and not hasattr(segdiff.data, name), name
        assert callable(getattr(segdiff.sliding, name)), name
    with pytest.raises(AttributeError, match="no attribute 'Monuseg'"):
        segdiff.data.Monuseg  # noqa: B018 (a misspelling is still an AttributeError)
    _write_monuseg(tmp_path, "test", ["a"])
    assert type(build_dataset("monuseg", tmp_path, "test", 16)) is segdiff.data.monuseg.MoNuSeg


# ----------------------------------------------------------------------------------------------
# Folder datasets


def _save_pair(directory: Path, stem: str, image: np.ndarray, mask: np.ndarray,
               image_ext: str = ".png", mask_ext: str = ".png") -> None:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "masks").mkdir(parents=True, exist_ok=True)
    for array, sub, ext in ((image, "images", image_ext), (mask, "masks", mask_ext)):
        path = directory / sub / f"{stem}{ext}"
        if ext in (".tif", ".tiff"):
            tifffile.imwrite(path, array)
        else:
            Image.fromarray(array).save(path)


def _rgb(h: int = 24, w: int = 32, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def _square_mask(h: int = 24, w: int = 32, fg: int = 255, bg: int = 0) -> np.ndarray:
    mask = np.full((h, w), bg, np.uint8)
    mask[4:16, 8:20] = fg
    return mask


def test_folder_pairs_by_stem_across_formats_and_binarises_masks(tmp_path):
    _save_pair(tmp_path, "a", _rgb(), _square_mask(fg=255))
    _save_pair(tmp_path, "b", _rgb(), _square_mask(fg=1), image_ext=".jpg", mask_ext=".tif")
    _save_pair(tmp_path, "c", _rgb(), _square_mask(fg=7, bg=3), image_ext=".tif")  # larger is fg
    _save_pair(tmp_path, "d", _rgb()[:, :, 0], np.stack([_square_mask()] * 3, -1))  # grey image, RGB mask
    ds = FolderDataset(tmp_path, "train", 16, val_fraction=0.0)
    assert ds.names == ["a", "b", "c", "d"]
    expected = read_mask(tmp_path / "masks" / "a.png")
    assert expected.sum() == 12 * 12
    for index in range(4):
        image, mask = ds[index]
        _check_item(image, mask, 16)
        assert torch.equal(mask, ds[0][1])
    ds.verify()
    with pytest.raises(DataError, match="no test/ folder"):
        FolderDataset(tmp_path, "test", 16)


def test_folder_with_train_and_test_subfolders(tmp_path):
    for i in range(4):
        _save_pair(tmp_path / "train", f"tr{i}", _rgb(), _square_mask())
    _save_pair(tmp_path / "test", "te0", _rgb(), _square_mask())
    assert build_dataset("folder", tmp_path, "test", 8).names == ["te0"]
    train = build_dataset("folder", tmp_path, "train", 8, val_fraction=0.25)
    val = build_dataset("folder", tmp_path, "val", 8, val_fraction=0.25)
    assert len(train) == 3 and len(val) == 1 and set(train.names).isdisjoint(val.names)
    _check_item(*build_dataset("folder", tmp_path, "train", 8, augment=True)[0], 8)


def test_augmentation_draws_advance_per_epoch_identically_with_persistent_workers(tmp_path):
    # The fetch counts are shared with DataLoader workers, so epochs differ without any
    # set_epoch call and the result matches fetching in the main process.
    for i in range(4):
        _save_pair(tmp_path, f"p{i}", np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8),
                   _square_mask())

    def epochs(num_workers: int) -> list[torch.Tensor]:
        ds = FolderDataset(tmp_path, "train", 16, augment=True, val_fraction=0.0, seed=7)
        loader = DataLoader(ds, batch_size=4, num_workers=num_workers, persistent_workers=num_workers > 0)
        return [next(iter(loader))[0] for _ in range(3)]

    in_process, in_workers = epochs(0), epochs(2)
    assert not torch.equal(in_process[0], in_process[1])
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True))


def _empty(d: Path) -> None:
    (d / "images").mkdir()
    (d / "masks").mkdir()


def _missing_mask(d: Path) -> None:
    _save_pair(d, "a", _rgb(), _square_mask())
    (d / "masks" / "a.png").unlink()


def _missing_image(d: Path) -> None:
    _save_pair(d, "a", _rgb(), _square_mask())
    Image.fromarray(_square_mask()).save(d / "masks" / "z.png")


def _size_mismatch(d: Path) -> None:
    _save_pair(d, "a", _rgb(24, 32), _square_mask(20, 32))


def _duplicate_stem(d: Path) -> None:
    _save_pair(d, "a", _rgb(), _square_mask())
    _save_pair(d, "a", _rgb(), _square_mask(), image_ext=".jpg")


@pytest.mark.parametrize(
    "setup, message",
    [
        (_empty, "no images found"),
        (lambda d: None, "images: folder not found"),
        (_missing_mask, r"images/a.png: no mask with the same stem"),
        (_missing_image, r"masks/z.png: no image with the same stem"),
        (_size_mismatch, r"masks/a.png: mask is 32x20 \(WxH\) but its image a.png is 32x24"),
        (_duplicate_stem, "two files share the stem 'a'"),
    ],
    ids=["empty", "no-subfolders", "missing-mask", "missing-image", "size-mismatch", "duplicate-stem"],
)
def test_folder_problems_are_reported_up_front_naming_the_file(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        FolderDataset(tmp_path, "train", 16, val_fraction=0.0)


def test_wrong_root_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    for name in ("vaihingen", "monuseg", "folder", "cityscapes"):
        with pytest.raises(DataError, match="does not exist"):
            build_dataset(name, missing, "train", 16)
    with pytest.raises(DataError, match="no Vaihingen files"):
        build_dataset("vaihingen", tmp_path, "test", 16)


def test_non_binary_masks_are_refused_when_decoded(tmp_path):
    soft = _square_mask()
    soft[0, :3] = (50, 100, 150)  # 5 distinct values: a soft or label mask, not binary
    _save_pair(tmp_path, "soft", _rgb(), soft)
    colour = np.stack([_square_mask(), _square_mask(), np.zeros((24, 32), np.uint8)], -1)
    _save_pair(tmp_path, "colour", _rgb(), colour)
    ds = FolderDataset(tmp_path, "train", 16, val_fraction=0.0)  # headers are fine
    with pytest.raises(DataError, match=r"masks/colour.png: expected a single-channel mask, found 3 channels"):
        ds[0]
    with pytest.raises(DataError, match=r"masks/soft.png: expected a binary mask .* found 5 distinct values"):
        ds[1]
    with pytest.raises(DataError, match="colour.png"):
        ds.verify()


# ----------------------------------------------------------------------------------------------
# Corrupt, truncated and unexpected files


def test_corrupt_image_is_a_clear_error_naming_the_file(tmp_path):
    _save_pair(tmp_path, "a", _rgb(), _square_mask())
    (tmp_path / "images" / "a.png").write_bytes(b"this is not a PNG at all" * 10)
    with pytest.raises(DataError, match=r"images/a.png: cannot read image header"):
        FolderDataset(tmp_path, "train", 16, val_fraction=0.0)
    with pytest.raises(DataError, match=r"a.png: cannot decode image"):
        read_image(tmp_path / "images" / "a.png")


def test_image_over_the_decompression_bomb_limit_is_a_clear_error_naming_the_file(bomb_png):
    message = (r"bomb\.png: the image declares 400,000,000 pixels, which exceeds Pillow's decompression-bomb "
               r"limit of [\d,]+ pixels; if the file is genuine, cut it into smaller tiles")
    with pytest.raises(DataError, match=message):
        read_image(bomb_png)
    with pytest.raises(DataError, match=message):
        read_mask(bomb_png)
    with pytest.raises(DataError, match=message):
        read_size(bomb_png)


def test_truncated_image_is_a_clear_error_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _save_pair(tmp_path, "a", noise, _square_mask(64, 64))
    path = tmp_path / "images" / "a.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = FolderDataset(tmp_path, "train", 16, val_fraction=0.0)  # the header survived
    with pytest.raises(DataError, match=r"images/a.png: cannot decode image .*truncated"):
        ds.verify()
    tif = tmp_path / "t.tif"
    tifffile.imwrite(tif, noise, compression="lzw")
    tif.write_bytes(tif.read_bytes()[:200])
    with pytest.raises(DataError, match=r"t.tif: cannot decode TIFF"):
        read_image(tif)


def test_tiff_with_unexpected_bit_depth_or_band_count_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((8, 8, 3), np.uint16))
    with pytest.raises(DataError, match=r"deep.tif: expected an 8-bit image, found 16-bit"):
        read_image(tmp_path / "deep.tif")
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((8, 8, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(DataError, match=r"five.tif: expected an RGB image .* found 5 band"):
        read_image(tmp_path / "five.tif")
    tifffile.imwrite(tmp_path / "gray.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"gray.tif: expected an RGB image .* found 1 band"):
        read_image(tmp_path / "gray.tif")
    assert read_image(tmp_path / "gray.tif", allow_gray=True).shape == (8, 8, 3)


def test_one_bit_min_is_white_tiff_mask_polarity(tmp_path):
    # Written as raw bits with MinIsWhite, 0 means white (foreground); read_mask must invert.
    bits = np.ones((16, 16), bool)
    bits[4:8, 4:8] = False  # a white square
    tifffile.imwrite(tmp_path / "m.tif", bits, photometric="miniswhite")
    mask = read_mask(tmp_path / "m.tif")
    assert mask.sum() == 16 and mask[5, 5]
    tifffile.imwrite(tmp_path / "b.tif", ~bits, photometric="minisblack")
    assert np.array_equal(read_mask(tmp_path / "b.tif"), mask)


# ----------------------------------------------------------------------------------------------
# make_dataset: the dataset an ExperimentConfig describes


def _write_vaihingen(root: Path, numbers: list[int], size: int = 32) -> None:
    directory = root / "vaihingen" / "buildings"
    directory.mkdir(parents=True)
    gen = np.random.default_rng(0)
    for n in numbers:
        tifffile.imwrite(directory / f"building_{n:03d}.tif", gen.integers(0, 256, (size, size, 3), dtype=np.uint8))
        mask = np.zeros((size, size), np.uint8)
        mask[8:20, 10:25] = 255
        tifffile.imwrite(directory / f"building_mask_{n:03d}.tif", mask)


@pytest.mark.parametrize("key, valid", [("setting", "expansion, tight"), ("preprocessing", "clean, reference"),
                                        ("mask_source", "png, xml")])
def test_data_config_options_reject_unknown_values_naming_the_valid_ones(key, valid):
    with pytest.raises(ValueError, match=f"{key}='bogus' is not valid; choose one of {valid}"):
        ExperimentConfig.tiny().override([f"data.{key}=bogus"])


def test_make_dataset_passes_the_options_of_the_configured_dataset(tmp_path):
    _write_vaihingen(tmp_path, [1, 2, 101])
    cfg = ExperimentConfig.tiny().override([f"data.root={tmp_path}", "data.dataset=vaihingen"])
    test = make_dataset(cfg, "test")
    assert type(test) is Vaihingen and test.preprocessing == "clean"
    assert test.image_size == cfg.model.image_size and test[0][0].shape[-1] == cfg.model.image_size
    assert make_dataset(cfg, "test", image_size=24)[0][1].shape == (1, 24, 24)  # e.g. evaluate --score-size
    reference = make_dataset(cfg.override(["data.preprocessing=reference"]), "test")
    assert reference.preprocessing == "reference"

    _write_monuseg(tmp_path, "test", ["a"])
    cfg = cfg.override(["data.dataset=monuseg"])
    assert make_dataset(cfg, "test").mask_source == "png"
    with pytest.raises(DataError, match=r"annotations[/\\]a\.xml: file not found"):  # XMLs asked for, none there
        make_dataset(cfg.override(["data.mask_source=xml"]), "test")


def test_make_dataset_needs_a_data_folder_for_the_benchmarks(monkeypatch):
    monkeypatch.delenv("SEGDIFF_DATA", raising=False)
    with pytest.raises(ValueError, match="dataset 'vaihingen' needs a data folder"):
        make_dataset(ExperimentConfig.tiny().override(["data.dataset=vaihingen"]), "train")


def test_monuseg_at_another_scale_crops_and_tests_at_it_and_scores_against_the_mask_at_512(tmp_path):
    # The monuseg-cpu scale: images resized to 4 x the crop, crops of it, the test item whole at
    # that side; original_mask is the file's mask at the paper's 512 whatever the scale.
    _write_monuseg(tmp_path, "train", [f"t{i}" for i in range(5)])
    _write_monuseg(tmp_path, "test", ["a"])
    train = MoNuSeg(tmp_path, "train", 8, val_fraction=0.2, resize=32)
    image, mask = train[0]
    _check_item(image, mask, 8)
    resized = resize_image(image_to_tensor(read_image(tmp_path / "monuseg/train/images" / f"{train.names[0]}.tif")), 32)
    assert any(torch.equal(resized[:, t:t + 8, c:c + 8], image) for t in range(25) for c in range(25))
    test = MoNuSeg(tmp_path, "test", 8, resize=32)
    _check_item(*test[0], 32)
    target = test.original_mask(0)
    assert target.shape == (1, 512, 512)
    assert torch.equal(target, resize_mask(mask_to_tensor(read_mask(tmp_path / "monuseg/test/masks/a.png")), 512))
    test[0][0].zero_()  # items are copies: the cached resized image is not written through
    assert test[0][0].abs().sum() > 0
    with pytest.raises(DataError, match="resize=20 must be a multiple of the crop side 8"):
        MoNuSeg(tmp_path, "test", 8, resize=20)


def test_monuseg_cpu_preset_tiles_the_image_at_256_and_refuses_a_scale_its_input_does_not_divide():
    from segdiff.config import ConfigError
    from segdiff.protocol import protocol_for

    cfg = ExperimentConfig.from_preset("monuseg-cpu")
    assert (cfg.model.image_size, cfg.data.dataset, cfg.data.resize) == (64, "monuseg", 256)
    assert cfg.model.attention_resolutions == (16, 8) and cfg.train.time_budget_min == 60
    assert (cfg.sample.sampler, cfg.sample.num_sampling_steps, cfg.sample.num_generations) == ("sde-dpm-solver++", 2, 9)
    protocol = protocol_for("monuseg", cfg.model.image_size, resize=cfg.data.resize)
    assert (protocol.feed, protocol.item_size, protocol.target_from_dataset) == ("tiles", 256, True)
    assert "4x4 64x64 tiles" in protocol.description and "512x512" in protocol.description
    assert "four 256x256 tiles" in protocol_for("monuseg", 256).description
    with pytest.raises(ConfigError, match=r"data.resize=200 must be a multiple of model.image_size=64"):
        cfg.override(["data.resize=200"])


def test_tiles_cut_row_major_windows_and_stitch_back():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    t = tiles(x, 3)  # (2, 9, 3, 2, 2)
    assert t.shape == (2, 9, 3, 2, 2)
    for r in range(3):
        for c in range(3):
            assert torch.equal(t[:, 3 * r + c], x[..., 2 * r:2 * r + 2, 2 * c:2 * c + 2])
    assert torch.equal(stitch_tiles(t), x)
    q = quadrants(x)  # the paper's four: top-left, top-right, bottom-left, bottom-right
    assert torch.equal(q[:, 1], x[..., :3, 3:]) and torch.equal(q[:, 2], x[..., 3:, :3])
    with pytest.raises(ValueError, match="divisible by 4"):
        tiles(x, 4)
    with pytest.raises(ValueError, match="n\\*n"):
        stitch_tiles(torch.zeros(1, 3, 1, 2, 2))
