"""Training on each real dataset through the command line, and the data errors a user meets there.

Vaihingen uses the real data of the `data_root` fixture (skipped when absent); MoNuSeg, Cityscapes and folder
datasets use small files written here in each dataset's exact layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cityscapes import write_frame
from test_data import _write_monuseg

from segdiff.cli import main
from segdiff.config import ExperimentConfig
from segdiff.data import CityscapesInstances, FolderDataset, MoNuSeg, Vaihingen, carve_validation, make_dataset


def _train(dataset: str, root: Path, out: Path, *extra: str) -> int:
    """Two steps of the `small` preset (128 px) on `dataset`: the command the docs give."""
    return main(["train", "--preset", "small", "--dataset", dataset, "--data", str(root), "--steps", "2",
                 "--batch-size", "2", "--set", "diffusion.num_steps=25", "--set", "train.val_every=0",
                 "--out", str(out), *extra])


def _check_run(out: Path, dataset: str, root: Path, steps: int = 2) -> None:
    assert (out / "last.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["dataset"] == dataset and config["data"]["root"] == str(root)
    losses = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert losses[-1]["step"] == steps and np.isfinite(losses[-1]["loss"])


def _write_folder(root: Path, count: int = 3, size: tuple[int, int] = (48, 64)) -> None:
    """`count` image/mask pairs in ROOT/images and ROOT/masks (PNG, paired by stem)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[8:30, 10 + i:40 + i] = 255
        Image.fromarray(image).save(root / "images" / f"p{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` (folders included) with its mtime and size."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in [root, *root.rglob("*")]}


# ----------------------------------------------------------------------------------------------
# Each dataset end to end


def test_train_on_real_vaihingen(data_root, tmp_path):
    if not (data_root / "vaihingen" / "buildings").is_dir():
        pytest.skip(f"Vaihingen not found under {data_root}")
    before = _snapshot(data_root / "vaihingen")
    assert _train("vaihingen", data_root, tmp_path / "run") == 0
    _check_run(tmp_path / "run", "vaihingen", data_root)
    assert _snapshot(data_root / "vaihingen") == before


@pytest.mark.slow
def test_paper_vaihingen_preset_trains_from_its_own_config(data_root, tmp_path):
    # The 159.8 M parameter network at 256 px: one step at batch 1 takes 1-2 minutes on 2 busy cores.
    if not (data_root / "vaihingen" / "buildings").is_dir():
        pytest.skip(f"Vaihingen not found under {data_root}")
    out = tmp_path / "run"
    assert main(["train", "--preset", "vaihingen", "--data", str(data_root), "--steps", "1", "--batch-size", "1",
                 "--set", "train.val_every=0", "--out", str(out)]) == 0
    _check_run(out, "vaihingen", data_root, steps=1)
    assert json.loads((out / "config.json").read_text())["model"]["image_size"] == 256


def test_train_on_a_folder_dataset_writes_nothing_into_the_data_folder(tmp_path):
    data = tmp_path / "data"
    _write_folder(data)
    before = _snapshot(data)
    assert _train("folder", data, tmp_path / "run") == 0
    _check_run(tmp_path / "run", "folder", data)
    assert _snapshot(data) == before


def test_train_on_monuseg_train_folder_of_tiff_and_la_png(tmp_path):
    # 64x64 TIFFs are resized to 2 * 128 = 256 and cropped to 128, as 1000x1000 ones would be.
    _write_monuseg(tmp_path / "data", "train", ["a", "b", "c"], size=64)
    assert Image.open(tmp_path / "data/monuseg/train/masks/a.png").mode == "LA"
    assert _train("monuseg", tmp_path / "data", tmp_path / "run") == 0
    _check_run(tmp_path / "run", "monuseg", tmp_path / "data")


def test_reproduce_monuseg_cpu_trains_then_scores_the_tiled_test_split_at_512(tmp_path):
    # The one command of docs/results.md, "MoNuSeg", on files in the release's layout: 2 steps, then the
    # test image at 256 as 16 tiles of 64, scored at 512 against the mask file.
    _write_monuseg(tmp_path / "data", "train", ["a", "b", "c"], size=64)
    _write_monuseg(tmp_path / "data", "test", ["t"], size=64)
    out = tmp_path / "run"
    assert main(["reproduce", "--preset", "monuseg-cpu", "--data", str(tmp_path / "data"), "--steps", "2",
                 "--batch-size", "2", "--set", "train.val_every=0", "--set", "diffusion.num_steps=25",
                 "--generations", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "test" / "summary.json").read_text())
    assert summary["protocol"] == "monuseg" and summary["num_images"] == 1
    assert "4x4 64x64 tiles" in summary["protocol_description"]
    assert summary["paper"]["metrics"] == {"f1": 81.59, "iou": 69.00}
    assert 0.0 <= summary["metrics"]["iou"] <= 1.0


def test_train_on_cityscapes_official_layout(tmp_path):
    data = tmp_path / "data"
    for city, frame in (("aachen", "000000_000019"), ("aachen", "000001_000019"), ("bremen", "000000_000019")):
        write_frame(data, "train", city, frame)
    assert _train("cityscapes", data, tmp_path / "run") == 0
    _check_run(tmp_path / "run", "cityscapes", data)


# ----------------------------------------------------------------------------------------------
# Presets and the data root


@pytest.mark.parametrize("name", ["vaihingen", "monuseg", "cityscapes"])
def test_paper_presets_name_their_dataset(name):
    assert ExperimentConfig.from_preset(name).data.dataset == name


def test_paper_presets_build_their_dataset_at_the_preset_size(data_root, tmp_path):
    _write_monuseg(tmp_path / "monuseg_root", "train", ["a", "b", "c"], size=64)
    write_frame(tmp_path / "cityscapes_root", "train", "aachen", "000000_000019")
    write_frame(tmp_path / "cityscapes_root", "train", "bremen", "000000_000019")
    cases = [("monuseg", tmp_path / "monuseg_root", MoNuSeg, 256),
             ("cityscapes", tmp_path / "cityscapes_root", CityscapesInstances, 128)]
    if (data_root / "vaihingen" / "buildings").is_dir():
        cases.append(("vaihingen", data_root, Vaihingen, 256))
    for name, root, cls, size in cases:
        cfg = ExperimentConfig.from_preset(name).override([f"data.root={root}"])
        train_set = make_dataset(cfg, "train", augment=True)
        assert isinstance(train_set, cls), name
        image, mask = train_set[0]
        assert image.shape == (3, size, size) and mask.shape == (1, size, size), name


def test_data_root_comes_from_segdiff_data_when_not_configured(tmp_path, monkeypatch):
    _write_folder(tmp_path / "data")
    cfg = ExperimentConfig.small().override(["data.dataset=folder"])
    monkeypatch.setenv("SEGDIFF_DATA", str(tmp_path / "data"))
    dataset = make_dataset(cfg, "train")
    assert isinstance(dataset, FolderDataset) and dataset.directory == tmp_path / "data"
    monkeypatch.delenv("SEGDIFF_DATA")
    with pytest.raises(ValueError, match="needs a data folder: pass --data DIR or set SEGDIFF_DATA"):
        make_dataset(cfg, "train")


# ----------------------------------------------------------------------------------------------
# Bad input through the command line: exit status 2 and a message naming the file


def test_wrong_data_path_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    for dataset in ("vaihingen", "monuseg", "cityscapes", "folder"):
        assert _train(dataset, missing, tmp_path / f"run_{dataset}") == 2
        assert f"{missing}: " in capsys.readouterr().err
        assert not (tmp_path / f"run_{dataset}").exists()  # the data is checked before the run folder is made
    assert not missing.exists()


def test_empty_data_folder_exits_2_saying_what_is_expected(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _train("folder", empty, tmp_path / "run") == 2
    assert f"{empty / 'images'}: folder not found; expected" in capsys.readouterr().err
    (empty / "images").mkdir()
    (empty / "masks").mkdir()
    assert _train("folder", empty, tmp_path / "run") == 2
    assert f"{empty / 'images'}: no images found" in capsys.readouterr().err
    assert _train("vaihingen", empty, tmp_path / "run") == 2
    assert f"{empty}: no Vaihingen files found" in capsys.readouterr().err


def test_corrupt_image_in_a_folder_dataset_exits_2_naming_the_file(tmp_path, capsys):
    data = tmp_path / "data"
    _write_folder(data, count=3)
    train_names, _ = carve_validation(["p0", "p1", "p2"], 0.1, seed=0)  # 2 train, 1 val
    broken = data / "images" / f"{train_names[0]}.png"
    # A truncated file keeps its header, so it is found only when the first batch decodes it.
    broken.write_bytes(broken.read_bytes()[:200])
    assert _train("folder", data, tmp_path / "run") == 2
    assert f"{broken}: cannot decode image" in capsys.readouterr().err
    # From a DataLoader worker the error arrives wrapped in the worker's traceback; still exit 2.
    assert _train("folder", data, tmp_path / "run1", "--workers", "1") == 2
    assert f"{broken}: cannot decode image" in capsys.readouterr().err
    # Garbage from the first byte is refused while the dataset is built, before any step.
    broken.write_bytes(b"not an image" * 20)
    assert _train("folder", data, tmp_path / "run2") == 2
    assert f"{broken}: cannot read image header" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()
