"""CamVid: the SegNet-layout reader, its protocol (scored at the labels' own size, void ignored), the
published rows beside a run, and the CamVid presets."""

import numpy as np
import pytest
import torch
from PIL import Image

from segdiff import metrics
from segdiff.config import ConfigError, ExperimentConfig
from segdiff.data import DataError, make_dataset, with_dataset_classes
from segdiff.data.camvid import CAMVID_CLASSES, CamVid
from segdiff.evaluation import evaluate, format_report
from segdiff.labels import IGNORE
from segdiff.models import build_model
from segdiff.protocol import CAMVID_PUBLISHED_IOU, CAMVID_PUBLISHED_MIOU, protocol_for

H, W = 36, 48  # CamVid's 4:3 frame, small


def write_camvid(root, counts=(("train", 3), ("val", 2), ("test", 2)), seed=0):
    """A CamVid folder in SegNet's layout: split.txt listing 'split/NAME.png splitannot/NAME.png'."""
    rng = np.random.default_rng(seed)
    camvid = root / "camvid"
    for split, count in counts:
        (camvid / split).mkdir(parents=True)
        (camvid / f"{split}annot").mkdir()
        lines = []
        for i in range(count):
            name = f"0001TP_{split}{i:03d}"
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(camvid / split / f"{name}.png")
            labels = rng.integers(0, 12, (H, W), dtype=np.uint8)  # 0..10 and void 11
            Image.fromarray(labels).save(camvid / f"{split}annot" / f"{name}.png")
            lines.append(f"{split}/{name}.png {split}annot/{name}.png")
        (camvid / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return camvid


def test_camvid_reads_its_splits_with_void_ignored_and_the_full_size_labels(tmp_path):
    camvid = write_camvid(tmp_path)
    data = CamVid(tmp_path, "train", image_size=16)
    assert len(data) == 3 and len(CamVid(tmp_path, "val")) == 2 and len(CamVid(tmp_path, "test")) == 2
    image, mask = data[0]
    assert image.shape == (3, 16, 16) and mask.shape == (1, 16, 16)
    labels = np.array(Image.open(sorted((camvid / "trainannot").iterdir())[0]))
    expected = torch.from_numpy(labels.astype(np.float32))
    expected[torch.from_numpy(labels == 11)] = IGNORE
    assert torch.equal(data.original_mask(0)[0], expected)  # what the protocol scores: 480x360 in real data
    assert set(mask.unique().tolist()) <= set(range(11)) | {int(IGNORE)}
    cfg = with_dataset_classes(ExperimentConfig.from_preset("camvid-cpu"), data)
    assert cfg.model.classes == CAMVID_CLASSES.names and cfg.model.palette == CAMVID_CLASSES.colours


def test_camvid_names_the_file_and_the_values_of_bad_input(tmp_path):
    camvid = write_camvid(tmp_path)
    bad = sorted((camvid / "testannot").iterdir())[1]
    Image.fromarray(np.full((H, W), 12, dtype=np.uint8)).save(bad)
    with pytest.raises(DataError, match=rf"{bad.name}.*12"):
        CamVid(tmp_path, "test")[1]
    small = sorted((camvid / "valannot").iterdir())[0]
    Image.fromarray(np.zeros((H // 2, W // 2), dtype=np.uint8)).save(small)
    with pytest.raises(DataError, match=rf"{small.name}: label \(18, 24\) and image \(36, 48\)"):
        CamVid(tmp_path, "val")
    (camvid / "train.txt").write_text("train/a.png trainannot/a.png extra\n")
    with pytest.raises(DataError, match=r"train.txt:1: expected 'IMAGE LABEL'"):
        CamVid(tmp_path, "train")
    with pytest.raises(DataError, match="no CamVid here"):
        CamVid(tmp_path / "elsewhere", "train")


def test_evaluate_on_camvid_scores_at_the_labels_size_beside_the_published_row(tmp_path):
    write_camvid(tmp_path)
    cfg = ExperimentConfig.from_preset("camvid-cpu").override([
        "model.kind=unet", f"data.root={tmp_path}", "train.device=cpu"])
    protocol = protocol_for("camvid", cfg.model.image_size)
    data = make_dataset(cfg, "test", image_size=protocol.dataset_size)
    model = build_model(with_dataset_classes(cfg, data))  # as `train` builds it: CamVid's class names
    summary = evaluate(model, data, protocol, seed=0, out_dir=tmp_path / "eval", progress=False)
    matrix = torch.tensor(summary["confusion_matrix"])
    labelled = sum(int((data.original_mask(i) >= 0).sum()) for i in range(len(data)))
    assert int(matrix.sum()) == labelled  # every labelled pixel of the 36x48 labels once, void none
    assert summary["metrics"]["miou"] == pytest.approx(float(metrics.confusion_scores(matrix)["iou"].nanmean()))
    assert summary["paper"]["metrics"] == {"miou": CAMVID_PUBLISHED_MIOU["Dilation8"]}
    assert summary["paper"]["per_class_iou"]["pole"] == CAMVID_PUBLISHED_IOU["Dilation8"][2] == 23.4
    report = format_report(summary)
    assert "| metric | this run | published |" in report and "| 65.30 |" in report
    assert "Dilation8, Yu & Koltun, ICLR 2016" in report
    pole = next(line for line in report.splitlines() if line.startswith("| pole |"))
    assert pole.endswith("| 23.4 |")


def test_the_published_rows_average_to_their_published_miou():
    # A check of the transcription: each row's 11 class IoUs average to the table's mIoU.
    for name, row in CAMVID_PUBLISHED_IOU.items():
        assert len(row) == 11
        assert sum(row) / 11 == pytest.approx(CAMVID_PUBLISHED_MIOU[name], abs=0.05), name


def test_camvid_presets_give_attention_at_two_levels_and_eleven_class_masks():
    for name in ("camvid-cpu", "camvid"):
        cfg = ExperimentConfig.from_preset(name)
        assert cfg.data.dataset == "camvid" and cfg.model.num_classes == 11 and cfg.model.mask_channels == 11
        model = build_model(cfg.override(["model.image_size=64"] if name == "camvid" else []))
        blocks = [type(m).__name__ for m in model.net.input_blocks.modules()]
        per_level = cfg.model.num_res_blocks  # attention after each encoder res block at 16 and 8 px
        assert blocks.count("AttentionBlock") == 2 * per_level, name
    bits = ExperimentConfig.from_preset("camvid-cpu").override(["model.mask_encoding=bits"])
    assert bits.model.mask_channels == 4


def test_an_attention_side_no_level_has_is_refused_with_the_sides_there_are():
    with pytest.raises(ConfigError, match=r"attention_resolutions=\(16, 8\).*96 px input with 4 levels are "
                                          r"96, 48, 24, 12 px"):
        ExperimentConfig.from_preset("vaihingen-cpu").override(["model.image_size=96"])
    cfg = ExperimentConfig.from_preset("vaihingen-cpu").override(["model.image_size=96", "model.attention_resolutions=[24, 12]"])
    assert cfg.model.attention_resolutions == (24, 12)
    # The U-Net has no attention levels, nor has SegDiff with its body: the field does not apply to them.
    ExperimentConfig.from_preset("vaihingen-cpu").override(["model.kind=unet", "model.image_size=96"])
    ExperimentConfig.from_preset("cpu").override(["model.image_size=96"])


def test_real_camvid_has_segnets_split(data_root):
    if not (data_root / "camvid").is_dir():
        pytest.skip(f"CamVid not found under {data_root}")
    sizes = {split: len(CamVid(data_root, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    test = CamVid(data_root, "test", image_size=64)
    assert test.original_mask(0).shape == (1, 360, 480)
    assert test[0][0].shape == (3, 64, 64)
