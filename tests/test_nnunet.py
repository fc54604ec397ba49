"""nnU-Net v2 raw dataset folders: reading, every up-front check, conversion both ways, a short run.

The folders are written here in exactly nnU-Net's layout (dataset.json, imagesTr/CASE_0000.png,
labelsTr/CASE.png, optional imagesTs/labelsTs), with tiny PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdiff.cli import main as segdiff_main
from segdiff.data import DATASETS, DataError, build_dataset
from segdiff.data.folder import FolderDataset
from segdiff.data.nnunet import NNUNetRaw, folder_to_nnunet, nnunet_to_folder
from segdiff.data.reading import labels_to_mask, read_image, read_label_mask, read_mask
from segdiff.labels import IGNORE, read_class_file

SIZE = 20


def _labels(i: int, ignore: int | None = None) -> np.ndarray:
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[4:12, 5 + i % 3:15] = 1
    if ignore is not None:
        labels[:, :2] = ignore  # an unlabelled stripe
    return labels


def _rgb(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def write_nnunet(root: Path, count: int = 5, *, channels: str = "rgb", ignore: bool = False, test: int = 0,
                 labels_ts: bool = True, labels: dict | None = None) -> Path:
    """An nnU-Net raw dataset: cases c000, c001, ... (test cases t000, ...). `channels`: "rgb" (one RGB
    file per case, channel_names R, G, B), "split" (three single-channel files) or "grey" (one file)."""
    names = {"rgb": ["R", "G", "B"], "split": ["R", "G", "B"], "grey": ["grey"]}[channels]
    label_map = labels or {"background": 0, "polyp": 1, **({"ignore": 2} if ignore else {})}
    for part, n, prefix in (("Tr", count, "c"), ("Ts", test, "t")):
        if not n:
            continue
        (root / f"images{part}").mkdir(parents=True)
        if part == "Tr" or labels_ts:
            (root / f"labels{part}").mkdir()
        for i in range(n):
            case, image = f"{prefix}{i:03d}", _rgb(i + (100 if part == "Ts" else 0))
            if channels == "rgb":
                Image.fromarray(image).save(root / f"images{part}" / f"{case}_0000.png")
            elif channels == "split":
                for c in range(3):
                    Image.fromarray(image[:, :, c]).save(root / f"images{part}" / f"{case}_{c:04d}.png")
            else:
                Image.fromarray(image[:, :, 0]).save(root / f"images{part}" / f"{case}_0000.png")
            if part == "Tr" or labels_ts:
                Image.fromarray(_labels(i, 2 if ignore else None)).save(root / f"labels{part}" / f"{case}.png")
    dataset = {"channel_names": {str(k): v for k, v in enumerate(names)}, "labels": label_map,
               "numTraining": count, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def _edit_json(root: Path, **changes) -> None:
    data = json.loads((root / "dataset.json").read_text())
    data.update(changes)
    (root / "dataset.json").write_text(json.dumps(data))


def _build(root: Path, split: str = "train", **kw) -> NNUNetRaw:
    return NNUNetRaw(root, split, SIZE, val_fraction=0.2, **kw)


# ----------------------------------------------------------------------------------------------
# Reading


def test_binary_labels_read_as_a_0_1_mask_and_an_rgb_file_gives_the_image(tmp_path):
    data = _build(write_nnunet(tmp_path))
    assert data.classes.names == ("background", "polyp") and data.classes.ignore_index is None
    image, mask = data[0]
    i = int(data.names[0][1:])
    assert torch.equal(mask, torch.from_numpy(_labels(i)).float()[None])
    assert torch.equal((image * 255).round().byte(), torch.from_numpy(_rgb(i)).permute(2, 0, 1))


def test_three_single_channel_files_stack_to_the_same_image_as_one_rgb_file(tmp_path):
    one = _build(write_nnunet(tmp_path / "rgb"))
    three = _build(write_nnunet(tmp_path / "split", channels="split"))
    assert one.names == three.names
    for k in range(len(one)):
        assert torch.equal(one[k][0], three[k][0]) and torch.equal(one[k][1], three[k][1])


def test_a_single_grey_channel_is_replicated_to_rgb(tmp_path):
    data = _build(write_nnunet(tmp_path, channels="grey"))
    image, _ = data[0]
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_the_ignore_label_becomes_ignored_pixels(tmp_path):
    data = _build(write_nnunet(tmp_path, ignore=True))
    assert data.classes.ignore_index == 2
    _, mask = data[0]
    assert (mask[0, :, :2] == IGNORE).all()
    assert set(mask[0, :, 2:].unique().tolist()) == {0.0, 1.0}


def test_train_and_val_are_carved_from_imagesTr_and_test_is_imagesTs(tmp_path):
    root = write_nnunet(tmp_path, count=10, test=3)
    train, val, test = (build_dataset("nnunet", root, s, SIZE, val_fraction=0.2) for s in ("train", "val", "test"))
    assert sorted(train.names + val.names) == [f"c{i:03d}" for i in range(10)]
    assert len(val) == 2 and not set(train.names) & set(val.names)
    assert test.names == ["t000", "t001", "t002"]
    assert "nnunet" in DATASETS


def test_test_split_needs_imagesTs_and_labelsTs(tmp_path):
    with pytest.raises(DataError, match="imagesTs: folder not found, so .* has no test split"):
        _build(write_nnunet(tmp_path / "a"), "test")
    with pytest.raises(DataError, match="labelsTs: folder not found; the test split needs the labels"):
        _build(write_nnunet(tmp_path / "b", test=2, labels_ts=False), "test")


# ----------------------------------------------------------------------------------------------
# Checks when the dataset is built, each naming the file and the problem


def test_a_missing_channel_file_is_named(tmp_path):
    root = write_nnunet(tmp_path, channels="split")
    (root / "imagesTr" / "c002_0001.png").unlink()
    with pytest.raises(DataError, match=r"c002_0001\.png: channel file missing"):
        _build(root)
    (root / "imagesTr" / "c002_0002.png").unlink()  # now only _0000: 1 of 3 channels
    with pytest.raises(DataError, match=r"c002_0001\.png: channel file missing: dataset.json names 3 channels"):
        _build(root)


def test_a_file_ending_other_than_file_ending_is_named(tmp_path):
    root = write_nnunet(tmp_path)
    Image.fromarray(_rgb(0)).save(root / "imagesTr" / "c009_0000.bmp")
    with pytest.raises(DataError, match=r"c009_0000\.bmp: file ending differs from file_ending '.png'"):
        _build(root)
    (root / "imagesTr" / "c009_0000.bmp").unlink()
    Image.fromarray(_labels(0)).save(root / "labelsTr" / "c000.tif")
    with pytest.raises(DataError, match=r"c000\.tif: file ending differs"):
        _build(root)


def test_num_training_must_count_the_training_cases(tmp_path):
    root = write_nnunet(tmp_path)
    _edit_json(root, numTraining=7)
    with pytest.raises(DataError, match=r"dataset\.json: numTraining is 7 but .*imagesTr holds 5 cases"):
        _build(root)


def test_a_label_without_images_and_images_without_a_label_are_named(tmp_path):
    root = write_nnunet(tmp_path)
    Image.fromarray(_labels(0)).save(root / "labelsTr" / "stray.png")
    with pytest.raises(DataError, match=r"stray\.png: a label without images: no stray_0000\.png"):
        _build(root)
    (root / "labelsTr" / "stray.png").unlink()
    (root / "labelsTr" / "c003.png").unlink()
    with pytest.raises(DataError, match=r"c003_0000\.png: images without a label: no c003\.png"):
        _build(root)


def test_a_size_mismatch_between_a_channel_file_and_the_label_is_named(tmp_path):
    root = write_nnunet(tmp_path, channels="split")
    Image.fromarray(_rgb(1)[:, :16, 2]).save(root / "imagesTr" / "c001_0002.png")
    with pytest.raises(DataError, match=r"c001\.png: label is 20x20 \(WxH\) but its image c001_0002\.png is 16x20"):
        _build(root)


def test_channel_counts_segdiff_cannot_read_are_refused(tmp_path):
    root = write_nnunet(tmp_path)
    _edit_json(root, channel_names={"0": "T1", "1": "T2"})
    with pytest.raises(DataError, match=r"dataset\.json: 2 channels \(T1, T2\); segdiff models read RGB"):
        _build(root)
    _edit_json(root, channel_names={"0": "grey"})  # but the files are RGB: 3 channels
    with pytest.raises(DataError, match=r"c000_0000\.png: c000's files hold 3 channels but dataset.json names 1"):
        _build(root)


@pytest.mark.parametrize("labels, problem", [
    ({"background": 0}, "at least two labels"),
    ({"background": 0, "tumour": [1, 2]}, "region-based labels (tumour) are not supported"),
    ({"background": 0, "polyp": 2}, "consecutive 0, 1, 2"),
    ({"background": 0, "polyp": 1, "ignore": 1}, "'ignore' label (1) must have the highest value"),
    ({"back": 0, "polyp": 1}, "needs the label 'background' with the value 0"),
])
def test_labels_segdiff_cannot_use_are_refused_naming_dataset_json(tmp_path, labels, problem):
    root = write_nnunet(tmp_path)
    _edit_json(root, labels=labels)
    with pytest.raises(DataError, match="dataset.json") as info:
        _build(root)
    assert problem in str(info.value)


def test_label_values_are_checked_when_decoded_and_by_verify(tmp_path):
    root = write_nnunet(tmp_path)
    bad = _labels(0)
    bad[0, 0] = 5
    Image.fromarray(bad).save(root / "labelsTr" / "c004.png")
    with pytest.raises(DataError, match=r"c004\.png: label value\(s\) 5 not in the class list"):
        for split in ("train", "val"):
            _build(root, split).verify()


# ----------------------------------------------------------------------------------------------
# Conversion


def _write_folder(root: Path, stems: list[str], *, void: bool) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(stems):
        Image.fromarray(_rgb(i)).save(root / "images" / f"{stem}.png")
        mask = _labels(i, 255 if void else None)
        Image.fromarray(mask if void else mask * 255).save(root / "masks" / f"{stem}.png")


def _same_folders(root_a: Path, root_b: Path, split: str = "") -> None:
    """Identical images and identical decoded masks, case by case (`split`: "train"/"test" subfolders)."""
    classes = [read_class_file(r / "classes.json") if (r / "classes.json").exists() else None for r in (root_a, root_b)]
    assert (classes[0] is None) == (classes[1] is None)
    a, b = root_a / split, root_b / split
    stems = sorted(p.stem for p in (a / "images").iterdir())
    assert stems == sorted(p.stem for p in (b / "images").iterdir())
    for stem in stems:
        assert np.array_equal(read_image(a / "images" / f"{stem}.png"), read_image(b / "images" / f"{stem}.png"))
        masks = (a / "masks" / f"{stem}.png", b / "masks" / f"{stem}.png")
        if classes[0] is None:
            assert np.array_equal(read_mask(masks[0]), read_mask(masks[1]))
        else:
            decoded = [labels_to_mask(read_label_mask(m, c), c) for m, c in zip(masks, classes)]
            assert torch.equal(decoded[0], decoded[1]) and (decoded[0] == IGNORE).any()


def test_a_binary_folder_round_trips_through_nnunet(tmp_path):
    _write_folder(tmp_path / "mine", ["a", "b", "c"], void=False)
    converted = folder_to_nnunet(tmp_path / "mine", tmp_path / "raw", "Dataset007_Mine")
    root = tmp_path / "raw" / "Dataset007_Mine"
    assert converted.path == root and converted.splits == {"train": 3}
    spec = json.loads((root / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "R", "1": "G", "2": "B"} and spec["numTraining"] == 3
    assert spec["labels"] == {"background": 0, "foreground": 1} and spec["file_ending"] == ".png"
    assert np.unique(np.asarray(Image.open(root / "labelsTr" / "a.png"))).tolist() == [0, 1]
    assert _build(root).classes.ignore_index is None
    nnunet_to_folder(root, tmp_path / "back")
    _same_folders(tmp_path / "mine", tmp_path / "back")
    assert np.unique(np.asarray(Image.open(tmp_path / "back" / "masks" / "a.png"))).tolist() == [0, 255]


def test_a_folder_with_void_and_a_test_split_round_trips_with_the_ignore_label(tmp_path):
    src = tmp_path / "mine"
    _write_folder(src / "train", ["a", "b", "c", "d"], void=True)
    _write_folder(src / "test", ["e", "f"], void=True)
    (src / "classes.json").write_text(json.dumps({"names": ["rest", "car"], "ignore_index": 255}))
    converted = folder_to_nnunet(src, tmp_path / "raw", "Dataset008_Cars")
    root = converted.path
    assert converted.splits == {"train": 4, "test": 2} and "'background'" in str(converted)
    assert json.loads((root / "dataset.json").read_text())["labels"] == {"background": 0, "car": 1, "ignore": 2}
    assert (_build(root, "test")[0][1] == IGNORE).any()
    nnunet_to_folder(root, tmp_path / "back")
    assert json.loads((tmp_path / "back" / "classes.json").read_text()) == {
        "names": ["background", "car"], "ignore_index": 255}
    for split in ("train", "test"):
        _same_folders(src, tmp_path / "back", split)
    assert len(FolderDataset(tmp_path / "back", "test", SIZE)) == 2


def test_conversion_refuses_a_non_empty_destination_and_writing_into_the_source(tmp_path):
    _write_folder(tmp_path / "mine", ["a", "b"], void=False)
    (tmp_path / "raw" / "Dataset001_Mine").mkdir(parents=True)
    (tmp_path / "raw" / "Dataset001_Mine" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="Dataset001_Mine: exists and is not empty"):
        folder_to_nnunet(tmp_path / "mine", tmp_path / "raw")
    with pytest.raises(DataError, match="inside the source"):
        folder_to_nnunet(tmp_path / "mine", tmp_path / "mine")
    with pytest.raises(DataError, match="DatasetNNN_Name"):
        folder_to_nnunet(tmp_path / "mine", tmp_path / "out", "Mine")
    root = write_nnunet(tmp_path / "Dataset002_X")
    with pytest.raises(DataError, match="inside the source"):
        nnunet_to_folder(root, root / "folder")
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert not [p for p in tmp_path.rglob(".*")], "no staging folder left behind"


def test_the_command_line_converts_both_ways_and_reports_errors(tmp_path, capsys):
    _write_folder(tmp_path / "mine", ["a", "b", "c"], void=False)
    assert segdiff_main(["convert", "to-nnunet", str(tmp_path / "mine"), str(tmp_path / "raw"), "--name",
                         "Dataset003_Cli"]) == 0
    assert "Dataset003_Cli (train 3 cases)" in capsys.readouterr().out
    assert segdiff_main(["convert", "to-folder", str(tmp_path / "raw" / "Dataset003_Cli"), str(tmp_path / "back")]) == 0
    assert "back (train 3 cases)" in capsys.readouterr().out
    assert segdiff_main(["convert", "to-folder", str(tmp_path / "mine"), str(tmp_path / "other")]) == 2
    assert "dataset.json: not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Training


def test_segdiff_train_runs_on_an_nnunet_folder(tmp_path):
    root = write_nnunet(tmp_path / "Dataset009_Tiny", count=8, ignore=True)
    code = segdiff_main(["train", "--preset", "tiny", "--dataset", "nnunet", "--data", str(root),
                         "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--device", "cpu",
                         "--set", "diffusion.num_steps=25", "--set", "train.val_every=2",
                         "--set", "train.val_generations=1"])
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if r["event"] == "train")
    assert [r for r in records if r["event"] == "val"]


def test_a_multiclass_folder_round_trips_through_nnunet_as_label_maps(tmp_path):
    """Three classes and void: folder -> nnU-Net (labels 0..2, ignore 3) -> folder, and the nnU-Net
    dataset gives the folder dataset's label maps."""
    source = tmp_path / "mine"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    (source / "classes.json").write_text(json.dumps({"names": ["sky", "road", "car"], "ignore_index": 255}))
    for i in range(4):
        labels = np.zeros((20, 20), np.uint8)
        labels[8:, :] = 1
        labels[12:, 5 + i:12] = 2
        labels[:2, :2] = 255
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            source / "images" / f"s{i}.png")
        Image.fromarray(labels).save(source / "masks" / f"s{i}.png")
    converted = folder_to_nnunet(source, tmp_path / "raw", name="Dataset007_Road")
    spec = json.loads((converted.path / "dataset.json").read_text())
    assert spec["labels"] == {"background": 0, "road": 1, "car": 2, "ignore": 3}
    raw = NNUNetRaw(converted.path, "train", image_size=20, val_fraction=0.25)
    mine = FolderDataset(source, "train", image_size=20, val_fraction=0.25)
    assert raw.names == mine.names and raw.classes.num_classes == 3
    for i in range(len(raw)):
        assert torch.equal(raw[i][1], mine[i][1])  # the same label maps, void included
    back = nnunet_to_folder(converted.path, tmp_path / "back")
    again = FolderDataset(back.path, "train", image_size=20, val_fraction=0.25)
    assert again.classes.names == ("background", "road", "car")  # nnU-Net's name for label 0
    for i in range(len(again)):
        assert torch.equal(again[i][1], mine[i][1])
