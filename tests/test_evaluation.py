"""segdiff evaluate: test protocols, the curve over K from one sampling run, files, errors."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from segdiff import metrics
from segdiff.cli import UserError, main, resolved_sample
from segdiff.config import SampleConfig
from segdiff.data import build_dataset, resize_image
from segdiff.evaluation import METRICS, _Extremes, evaluate, format_report
from segdiff.models import load_model
from segdiff.protocol import PAPER_CITYSCAPES_IOU, PAPER_RESULTS, protocol_for, running_means
from segdiff.sampling import generation_seeds, predict
from segdiff.seeding import derive_seed
from segdiff.sliding import quadrants, stitch_quadrants
from segdiff.data.synthetic import make_sample

SAMPLING = {"sampler": "ddim", "num_sampling_steps": 4}  # cheap; the protocol code is the same for ddpm


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny checkpoint trained for a few steps: real weights, meaningless scores."""
    folder = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "tiny", "--out", str(folder), "--steps", "10", "--batch-size", "8",
                 "--set", "data.num_train=32", "--set", "diffusion.num_steps=25", "--set", "data.num_test=5"]) == 0
    return folder


@pytest.fixture(scope="module")
def model(run):
    """The run's SegDiff model (a `models.DiffusionSegmenter`: `.net`, `.scheduler`, `.config`)."""
    return load_model(run)


def _sample(model, **fields) -> SampleConfig:
    """The checkpoint's own sampling settings with the cheap SAMPLING and `fields` applied."""
    return replace(model.config.sample, **SAMPLING, **fields)


def _whole_image_protocol(model, **options):
    return protocol_for("synthetic", model.config.model.image_size, **options)


def _synthetic_test(model, n: int = 4):
    return build_dataset("synthetic", "", "test", _whole_image_protocol(model).dataset_size, num_test=n)


def _independent_prefix_scores(model, dataset, num_generations: int, seed: int = 0, symmetry="none"):
    """Per image and k, IoU / F1 / calibration of a separate predict run's first k generations."""
    table = []  # [image][k-1] -> dict
    for i in range(len(dataset)):
        image, mask = dataset[i]
        seeds = generation_seeds(derive_seed(seed, dataset.names[i]), num_generations)
        pred = predict(model.net, image[None], model.scheduler, model.config.sample, num_generations=num_generations,
                       keep_generations=True, seeds=seeds, symmetry=symmetry, **SAMPLING)
        rows = []
        for k in range(1, num_generations + 1):
            prob = pred.generations[0, :k, 0].mean(dim=0)  # (H, W): binary, one channel
            rows.append({"iou": float(metrics.iou(prob > 0.5, mask[0])[0]),
                         "f1": float(metrics.f1(prob > 0.5, mask[0])[0]),
                         "calibration": float(metrics.calibration_score(prob, mask[0])[0])})
        table.append((pred, rows))
    return table


# --- the curve over K ----------------------------------------------------------------------------
def test_running_means_row_k_is_the_mean_of_the_first_k_generations():
    generations = torch.tensor([0.0, 1.0, 1.0, 0.2]).reshape(4, 1, 1)
    # by hand: 0, (0+1)/2, (0+1+1)/3, (0+1+1+0.2)/4
    expected = torch.tensor([0.0, 0.5, 2 / 3, 0.55]).reshape(4, 1, 1)
    assert torch.allclose(running_means(generations), expected)


@pytest.mark.parametrize("symmetry", ["none", "dihedral"])
def test_curve_equals_separate_predict_runs_of_the_first_k_generations(model, symmetry):
    dataset = _synthetic_test(model)
    k_max = 3
    summary = evaluate(model, dataset, _whole_image_protocol(model), _sample(model, num_generations=k_max,
                       symmetry=symmetry), seed=7, progress=False)
    independent = _independent_prefix_scores(model, dataset, k_max, seed=7, symmetry=symmetry)
    assert summary["curve"]["num_generations"] == [1, 2, 3] and summary["symmetry"] == symmetry
    for k in range(1, k_max + 1):
        for m in ("iou", "f1", "calibration"):
            expected = np.mean([rows[k - 1][m] for _, rows in independent])
            assert summary["curve"][m][k - 1] == pytest.approx(expected, abs=1e-12), (m, k)
    # k = 1 is generation 0 thresholded; k = K is predict's own mask and the final summary.
    first = np.mean([float(metrics.iou(pred.generations[0, 0, 0] > 0.5, dataset[i][1][0])[0])
                     for i, (pred, _) in enumerate(independent)])
    assert summary["curve"]["iou"][0] == pytest.approx(first, abs=1e-12)
    final = np.mean([float(metrics.iou(pred.mask[0, 0], dataset[i][1][0])[0])
                     for i, (pred, _) in enumerate(independent)])
    assert summary["metrics"]["iou"] == pytest.approx(final, abs=1e-12)
    for m in METRICS:
        assert summary["curve"][m][-1] == summary["metrics"][m]


def test_a_k_generation_run_reproduces_the_k_point_of_a_longer_run(model):
    # Generation k's seed depends on (seed, image, k) only, so a K=2 run is the K=3 run's prefix.
    dataset, protocol = _synthetic_test(model, 3), _whole_image_protocol(model)
    long = evaluate(model, dataset, protocol, _sample(model, num_generations=3), progress=False)
    short = evaluate(model, dataset, protocol, _sample(model, num_generations=2, max_batch=1), progress=False)
    for m in METRICS:
        # Probabilities differ by float rounding when rows are batched differently (max_batch);
        # the masks, and so the mask metrics, do not.
        tolerance = {"rel": 1e-4} if m in ("calibration", "ece") else {"abs": 1e-12}  # 1e-5 fails on 1 thread
        assert short["metrics"][m] == pytest.approx(long["curve"][m][1], **tolerance), m
        assert short["curve"][m][0] == pytest.approx(long["curve"][m][0], **tolerance), m


# --- files ---------------------------------------------------------------------------------------
def test_cli_writes_csv_figures_and_a_complete_summary(run, model, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--dataset", "synthetic", "--split", "test", "--generations", "2",
                 "--sampler", "ddim", "--steps", "3", "--max-images", "3", "--seed", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| mIoU |" in printed and "| F1 |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_generations"] == 2 and summary["sampler"] == "ddim" and summary["seed"] == 5
    assert summary["symmetry"] == "none"  # the checkpoint's sample.symmetry
    # the checkpoint's own sampling settings, with the flags given applied
    assert summary["sample"] == asdict(replace(model.config.sample, num_generations=2, sampler="ddim",
                                               num_sampling_steps=3))
    assert summary["model"] == "segdiff"
    assert summary["num_images"] == 3 and summary["split"] == "test" and summary["dataset"] == "synthetic"
    assert summary["checkpoint"] == str(run.resolve())
    assert summary["config"]["model"]["image_size"] == 32
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["synthetic_2_00000", "synthetic_2_00001", "synthetic_2_00002"]
    assert np.mean([float(r["iou"]) for r in rows]) == pytest.approx(summary["metrics"]["iou"], abs=1e-12)
    with open(out / "curve.csv") as f:
        assert [int(r["num_generations"]) for r in csv.DictReader(f)] == [1, 2]
    for name in ("generations_metrics", "generations_calibration", "reliability", "examples"):
        with Image.open(out / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) > 200
    assert (out / "report.md").read_text().startswith("segdiff evaluate: synthetic test split, 3 of 5 images")
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_a_failure_while_writing_leaves_no_summary(model, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.json").write_text('{"stale": true}')  # from an earlier run into the same folder
    (out / "reliability.png").mkdir()  # a folder where a figure goes: renaming onto it fails
    with pytest.raises(OSError):
        evaluate(model, _synthetic_test(model, 2), _whole_image_protocol(model), _sample(model, num_generations=1),
                 out_dir=out, progress=False)
    assert (out / "per_image.csv").exists()  # written before the failure...
    assert not (out / "summary.json").exists()  # ...but nothing claims the run completed


def test_best_and_worst_examples_are_chosen_by_iou():
    extremes = _Extremes(2)
    for index, score in enumerate([0.5, 0.9, 0.1, 0.7, 0.3, 0.95, 0.05]):
        extremes.offer(score, index, f"img{index}", lambda: [])
    titles = [title for title, _ in extremes.rows()]
    assert titles == ["best: img5, IoU 95.0", "best: img1, IoU 90.0", "worst: img2, IoU 10.0",
                      "worst: img6, IoU 5.0"]


# --- protocols -----------------------------------------------------------------------------------
def _write_cityscapes(root: Path) -> None:
    """One official-layout val frame (200x100) with two cars and a bus, no occlusions."""
    objects = [{"label": "road", "polygon": [[0, 70], [199, 70], [199, 99], [0, 99]]},
               {"label": "car", "polygon": [[10, 10], [49, 10], [49, 49], [10, 49]]},
               {"label": "car", "polygon": [[60, 20], [89, 20], [89, 59], [60, 59]]},
               {"label": "bus", "polygon": [[120, 10], [179, 10], [179, 59], [120, 59]]}]
    for folder in ("gtFine/val/lindau", "leftImg8bit/val/lindau"):
        (root / folder).mkdir(parents=True)
    ann = {"imgHeight": 100, "imgWidth": 200, "objects": objects}
    (root / "gtFine/val/lindau/lindau_000000_000019_gtFine_polygons.json").write_text(json.dumps(ann))
    pixels = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png")


def test_cityscapes_scores_at_the_crop_size_and_averages_classes(model, tmp_path):
    _write_cityscapes(tmp_path)
    protocol = protocol_for("cityscapes", 32, setting="tight")
    dataset = build_dataset("cityscapes", tmp_path, "test", protocol.dataset_size, setting="tight")
    summary = evaluate(model, dataset, protocol, _sample(model, num_generations=2), out_dir=tmp_path / "out",
                       progress=False)
    with open(tmp_path / "out" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class"], int(r["height"]), int(r["width"])) for r in rows] == [
        ("car", 40, 40), ("car", 40, 30), ("bus", 50, 60)]  # the crops' own sizes, not 32x32
    # Independently: predict at 32, bilinear to the crop's size, then 0.5.
    for i, row in enumerate(rows):
        image, _ = dataset[i]
        target = dataset.original_mask(i)[0]
        pred = predict(model.net, image[None], model.scheduler, model.config.sample, num_generations=2,
                       seeds=generation_seeds(derive_seed(0, dataset.names[i]), 2), **SAMPLING)
        prob = F.interpolate(pred.prob, size=tuple(target.shape), mode="bilinear", align_corners=False)[0, 0]
        assert float(row["iou"]) == pytest.approx(float(metrics.iou(prob > 0.5, target)[0]), abs=1e-12)
    car = np.mean([float(r["iou"]) for r in rows[:2]])
    bus = float(rows[2]["iou"])
    assert summary["per_class"]["car"]["iou"] == pytest.approx(car, abs=1e-12)
    assert summary["per_class"]["car"]["count"] == 2
    assert summary["metrics"]["iou"] == pytest.approx((car + bus) / 2, abs=1e-12)  # classes weigh equally
    assert summary["paper"]["metrics"] == {"iou": 76.19}  # tight setting
    assert "(the mean is over the 2 classes present" in format_report(summary)


def test_cli_evaluates_cityscapes_in_the_runs_crop_setting_unless_setting_is_given(run, tmp_path):
    _write_cityscapes(tmp_path / "data")
    common = ["evaluate", str(run), "--dataset", "cityscapes", "--data", str(tmp_path / "data"), "--split", "test",
              "--generations", "1", "--sampler", "ddim", "--steps", "3", "--max-images", "1"]
    for flags, paper, side in (([], 76.44, 46), (["--setting", "tight"], 76.19, 40)):
        out = tmp_path / f"eval{len(flags)}"
        assert main([*common, *flags, "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["paper"]["metrics"] == {"iou": paper}  # the run's data.setting is expansion
        with open(out / "per_image.csv") as f:
            row = next(csv.DictReader(f))
        assert (int(row["height"]), int(row["width"])) == (side, side)  # 40 px box, +15 % when expanded


def _shared_folder(data_root: Path, *parts: str) -> Path:
    """data_root/parts, or a skip naming it when this copy of the shared data lacks it."""
    folder = data_root.joinpath(*parts)
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (the shared data lacks it; set SEGDIFF_DATA)")
    return folder


def test_monuseg_samples_four_quadrants_and_scores_at_the_papers_512(data_root, model):
    _shared_folder(data_root, "monuseg", "test")
    protocol = protocol_for("monuseg", 32)
    dataset = build_dataset("monuseg", data_root, "test", protocol.dataset_size)
    summary = evaluate(model, dataset, protocol, _sample(model, num_generations=2), max_images=1, progress=False)
    image, _ = dataset[0]  # (3, 64, 64): the full image at twice the model input
    seeds = [s for tile in range(4) for s in generation_seeds(derive_seed(0, dataset.names[0]), 2, tile)]
    pred = predict(model.net, quadrants(image), model.scheduler, model.config.sample, num_generations=2, seeds=seeds,
                   **SAMPLING)
    prob = stitch_quadrants(pred.prob)  # (1, 64, 64)
    prob = torch.nn.functional.interpolate(prob[None], size=(512, 512), mode="bilinear", align_corners=False)[0, 0]
    target = dataset.original_mask(0)  # the 1000 px mask resized to 512, as the paper scores
    assert target.shape == (1, 512, 512)
    expected = metrics.iou(prob.clamp(0, 1) > 0.5, target[0])[0]
    assert summary["metrics"]["iou"] == pytest.approx(float(expected), abs=1e-9)
    assert summary["paper"]["metrics"] == {"f1": 81.59, "iou": 69.00}


def test_monuseg_at_a_lower_scale_is_tiled_with_the_model_input_and_scored_at_512(data_root, model):
    # A 32 px model on images resized to 128: 4 x 4 tiles, each seeded by its row-major index.
    _shared_folder(data_root, "monuseg", "test")
    protocol = protocol_for("monuseg", 32, resize=128)
    assert protocol.item_size == 128 and "4x4" in protocol.description
    dataset = build_dataset("monuseg", data_root, "test", protocol.dataset_size, resize=128)
    summary = evaluate(model, dataset, protocol, _sample(model, num_generations=1), max_images=1, progress=False)
    image, _ = dataset[0]
    assert image.shape == (3, 128, 128)
    seeds = [s for tile in range(16) for s in generation_seeds(derive_seed(0, dataset.names[0]), 1, tile)]
    parts = torch.stack([image[:, 32 * r:32 * r + 32, 32 * c:32 * c + 32] for r in range(4) for c in range(4)])
    pred = predict(model.net, parts, model.scheduler, model.config.sample, num_generations=1, seeds=seeds, **SAMPLING)
    prob = torch.cat([torch.cat(list(pred.prob[4 * r:4 * r + 4, 0]), dim=-1) for r in range(4)], dim=-2)
    prob = torch.nn.functional.interpolate(prob[None, None], size=(512, 512), mode="bilinear", align_corners=False)
    expected = metrics.iou(prob[0, 0].clamp(0, 1) > 0.5, dataset.original_mask(0)[0])[0]
    assert summary["metrics"]["iou"] == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ValueError, match="resize=100 must be a multiple of the model input 32"):
        protocol_for("monuseg", 32, resize=100)


def test_vaihingen_report_sets_the_paper_numbers_beside_the_run(data_root, model):
    _shared_folder(data_root, "vaihingen", "buildings")
    protocol = protocol_for("vaihingen", 32)
    dataset = build_dataset("vaihingen", data_root, "test", protocol.dataset_size)
    summary = evaluate(model, dataset, protocol, _sample(model, num_generations=1), max_images=2, progress=False)
    report = format_report(summary)
    assert f"| mIoU | {100 * summary['metrics']['iou']:.2f} | 91.12 |" in report
    assert "| F1 |" in report and "95.14" in report and "85.09" in report and "93.83" in report
    assert summary["num_images"] == 2 and summary["dataset_size"] == 68


def test_paper_cityscapes_mean_is_the_mean_of_its_eight_class_ious():
    # An independent check of the transcription: the paper's "Mean" column (76.44) is the mean of its
    # eight class columns, 69.80 + 85.97 + 76.09 + 75.95 + 80.68 + 67.06 + 83.40 + 72.57 = 611.52, / 8.
    assert len(PAPER_CITYSCAPES_IOU) == 8
    assert sum(PAPER_CITYSCAPES_IOU.values()) == pytest.approx(611.52, abs=1e-9)
    assert round(sum(PAPER_CITYSCAPES_IOU.values()) / 8, 2) == PAPER_RESULTS["cityscapes-expansion"]["iou"] == 76.44


# --- bad input -----------------------------------------------------------------------------------
def test_not_a_checkpoint_is_exit_2_naming_the_file(tmp_path, capsys):
    fake = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(fake))  # a real safetensors file, but not segdiff's
    assert main(["evaluate", str(fake), "--dataset", "synthetic", "--out", str(tmp_path / "o")]) == 2
    assert "weights.safetensors: not a segdiff checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_is_exit_2_listing_the_names(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "--dataset", "pascal", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'pascal'" in err and "vaihingen, monuseg, cityscapes, camvid, folder, nnunet, synthetic" in err


def test_split_other_than_val_or_test_is_exit_2_naming_the_argument(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "--dataset", "synthetic", "--split", "train", "--out", str(tmp_path)]) == 2
    assert "--split 'train'" in capsys.readouterr().err


def test_non_binary_mask_in_a_folder_is_exit_2_naming_the_file(run, tmp_path, capsys):
    for sub in ("test/images", "test/masks", "train/images", "train/masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "data/test/images/a.png")
    Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32) % 3 * 100).save(
        tmp_path / "data/test/masks/a.png")  # three grey levels: a soft mask, not a binary one
    assert main(["evaluate", str(run), "--dataset", "folder", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "masks/a.png" in err and "binary" in err
    assert not (tmp_path / "o" / "summary.json").exists()


class _Pairs(torch.utils.data.Dataset):
    """A user's own dataset object: fixed (image, mask) pairs."""

    def __init__(self, pairs):
        self.pairs, self.names = pairs, [f"pair{i}" for i in range(len(pairs))]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]


def test_non_binary_target_or_other_shape_is_a_value_error_naming_the_item(model):
    protocol, sample = protocol_for("folder", 32), _sample(model, num_generations=1)
    image = torch.rand(3, 32, 32)
    soft = _Pairs([(image, torch.full((1, 32, 32), 0.5))])
    with pytest.raises(ValueError, match=r"pair0: target: expected a binary mask"):
        evaluate(model, soft, protocol, sample, progress=False)
    wrong = _Pairs([(image, torch.zeros(1, 16, 16))])
    with pytest.raises(ValueError, match=r"pair0: image and mask differ in size: \(32, 32\) and \(16, 16\)"):
        evaluate(model, wrong, protocol, sample, progress=False)
    small = _Pairs([(torch.rand(3, 16, 16), torch.zeros(1, 16, 16))])
    with pytest.raises(ValueError, match=r"pair0: .*image_size=32"):
        evaluate(model, small, protocol, sample, progress=False)


def test_unknown_sampler_is_exit_2(run, tmp_path, capsys):
    # --sampler lists the library's samplers as its choices: argparse refuses the name itself.
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(run), "--dataset", "synthetic", "--sampler", "euler", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "invalid choice: 'euler'" in capsys.readouterr().err
    with pytest.raises(UserError, match="sampler='euler' is not valid"):
        resolved_sample(SampleConfig(), {"sampler": "euler"})
    assert not (tmp_path / "o").exists()


def test_an_invalid_sampling_value_is_exit_2_before_sampling(run, tmp_path, capsys):
    # The run samples with ddpm; eta belongs to ddim alone (SampleConfig's check, turned into a UserError).
    assert main(["evaluate", str(run), "--dataset", "synthetic", "--eta", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "eta=0.5 applies to sampler 'ddim' only, not 'ddpm'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_symmetry_is_refused_before_sampling(run, model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(run), "--dataset", "synthetic", "--symmetry", "rot", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice: 'rot'" in capsys.readouterr().err
    # evaluate's settings come as a SampleConfig, which cannot hold an unknown symmetry.
    with pytest.raises(ValueError, match="symmetry='rot' is not valid"):
        _sample(model, symmetry="rot")


def test_score_size_samples_at_the_input_and_scores_the_upsampled_probability(model):
    size = 2 * model.config.model.image_size
    protocol, sample = _whole_image_protocol(model, score_size=size), _sample(model, num_generations=2)
    assert protocol.dataset_size == size
    dataset = build_dataset("synthetic", "", "test", protocol.dataset_size, num_test=2)
    summary = evaluate(model, dataset, protocol, sample, progress=False, seed=3)
    assert summary["score_size"] == size and "scored against the" in summary["protocol_description"]
    # By hand: sample the downsized image with the same seeds, upsample the running mean, threshold.
    image, mask = dataset[0]
    small = resize_image(image, model.config.model.image_size)
    pred = predict(model.net, small[None], model.scheduler, model.config.sample, num_generations=2,
                   seeds=generation_seeds(derive_seed(3, dataset.names[0]), 2), keep_generations=True, **SAMPLING)
    prob = torch.nn.functional.interpolate(pred.prob, size=(size, size), mode="bilinear", align_corners=False)
    expected = metrics.iou(prob[0, 0].clamp(0, 1) > 0.5, mask[0])[0]
    first = evaluate(model, dataset, protocol, sample, progress=False, seed=3, max_images=1)
    assert first["metrics"]["iou"] == pytest.approx(float(expected), abs=1e-9)


@pytest.mark.parametrize("dataset", ["monuseg", "cityscapes"])
def test_score_size_is_refused_for_protocols_with_their_own_resolution(dataset):
    # The protocol takes score_size now (evaluate did): refused when it is built, no data needed.
    with pytest.raises(ValueError, match=f"the {dataset} protocol fixes its own scoring resolution"):
        protocol_for(dataset, 32, score_size=256)


def test_reproduce_trains_then_writes_a_test_evaluation(tmp_path):
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            (tmp_path / "data" / split / sub).mkdir(parents=True)
        for i in range(4 if split == "train" else 2):
            image, mask = make_sample(0 if split == "train" else 1, i, 32)
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
                tmp_path / "data" / split / "images" / f"{i}.png")
            Image.fromarray((mask[0].numpy() * 255).astype(np.uint8)).save(
                tmp_path / "data" / split / "masks" / f"{i}.png")
    assert main(["reproduce", "--preset", "tiny", "--dataset", "folder", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "run"), "--steps", "2", "--generations", "2", "--set", "train.val_every=0",
                 "--set", "sample.sampler=ddim", "--set", "sample.num_sampling_steps=3",
                 "--set", "data.val_fraction=0.25"]) == 0
    summary = json.loads((tmp_path / "run" / "test" / "summary.json").read_text())
    assert summary["num_images"] == 2 and summary["num_generations"] == 2 and summary["sampler"] == "ddim"


def test_reproduce_refuses_the_synthetic_demo_data(tmp_path, capsys):
    assert main(["reproduce", "--preset", "tiny", "--out", str(tmp_path)]) == 2
    assert "reproduce runs a benchmark" in capsys.readouterr().err
