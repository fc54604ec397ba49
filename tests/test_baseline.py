"""The U-Net baseline: trained on the same pipeline, saved safely, scored by the same evaluation."""

import json

import pytest
import torch

from segdiff.baseline import UNetBaseline, train_baseline
from segdiff.checkpoint import CheckpointError, load_model
from segdiff.cli import main
from segdiff.config import ExperimentConfig
from segdiff.data import build_dataset
from segdiff.evaluation import evaluate


def _config(out, **train):
    return ExperimentConfig.tiny().override([
        "data.num_train=32", "data.num_test=4", f"train.out_dir={out}", "train.batch_size=8", "train.max_steps=4",
        "train.val_every=2", "train.log_every=1", *(f"train.{k}={v}" for k, v in train.items())])


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("unet")
    train_baseline(_config(out), features=(8, 8, 16, 16, 32, 8), progress=False)
    return out


def test_run_folder_holds_logs_config_and_checkpoints(baseline_run):
    records = [json.loads(line) for line in (baseline_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "val"] == [2, 4]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4]
    assert all(0 <= r["val_iou"] <= 1 for r in records if r["event"] == "val")
    config = json.loads((baseline_run / "config.json").read_text())
    assert config["baseline"] == "monai.BasicUNet" and config["features"] == [8, 8, 16, 16, 32, 8]
    assert (baseline_run / "best.safetensors").exists() and (baseline_run / "last.safetensors").exists()


def test_training_is_deterministic_under_a_seed(baseline_run, tmp_path):
    train_baseline(_config(tmp_path), features=(8, 8, 16, 16, 32, 8), progress=False)
    a, _ = load_model(baseline_run / "last.safetensors", allow_baseline=True)
    b, _ = load_model(tmp_path / "last.safetensors", allow_baseline=True)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_cosine_schedule_sets_the_lr_of_each_update(tmp_path):
    from segdiff.training import learning_rate

    cfg = _config(tmp_path, lr_schedule="cosine", val_every=0)
    train_baseline(cfg, features=(8, 8, 16, 16, 32, 8), progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    logged = [r["lr"] for r in records if r["event"] == "train"]
    assert logged == [learning_rate(cfg.train, n) for n in range(4)]
    # lr_n = lr (1 + cos(pi n / 4)) / 2 with lr = 1e-3: 1, (2 + sqrt 2) / 4, 1/2, (2 - sqrt 2) / 4 times lr.
    assert logged == pytest.approx([1e-3, 1e-3 * (2 + 2 ** 0.5) / 4, 0.5e-3, 1e-3 * (2 - 2 ** 0.5) / 4], rel=1e-12)


def test_sampling_commands_refuse_a_baseline_checkpoint_by_name(baseline_run):
    with pytest.raises(CheckpointError, match="U-Net baseline checkpoint"):
        load_model(baseline_run)


def test_evaluate_scores_the_baseline_with_one_generation(baseline_run):
    model, config = load_model(baseline_run, allow_baseline=True)
    assert isinstance(model, UNetBaseline)
    dataset = build_dataset("synthetic", "", "test", config.model.image_size, num_test=3)
    summary = evaluate(model, config, dataset, num_generations=30, progress=False)
    assert summary["num_generations"] == 1 and summary["model"] == "UNetBaseline"
    assert len(summary["curve"]["iou"]) == 1
    # The metrics are those of the network's own thresholded probability.
    image, mask = dataset[0]
    prob = model.probability(image[None])[0, 0]
    inter = ((prob > 0.5) & (mask[0] > 0.5)).sum()
    union = ((prob > 0.5) | (mask[0] > 0.5)).sum()
    first = evaluate(model, config, dataset, max_images=1, progress=False)
    assert first["metrics"]["iou"] == pytest.approx(float(inter / union) if union else 1.0)


def test_baseline_symmetry_averages_the_mapped_back_passes(baseline_run):
    model, config = load_model(baseline_run, allow_baseline=True)
    image = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model.probability(image, "none"), torch.sigmoid(model(image)))
    passes = [torch.sigmoid(model(image.flip(dims))).flip(dims) if dims else torch.sigmoid(model(image))
              for dims in ((), (-1,), (-2, -1), (-2,))]  # identity, h-flip, 180 degrees, v-flip
    by_hand = sum(passes) / 4
    torch.testing.assert_close(model.probability(image, "flips"), by_hand)
    dataset = build_dataset("synthetic", "", "test", config.model.image_size, num_test=2)
    summary = evaluate(model, config, dataset, symmetry="dihedral", progress=False)
    assert summary["symmetry"] == "dihedral" and summary["num_generations"] == 1
    # The score is that of the eight-pass average, thresholded at 0.5: IoU per image, then the mean.
    ious = []
    for image, mask in (dataset[i] for i in range(len(dataset))):
        pred = model.probability(image[None], "dihedral")[0, 0] > 0.5
        inter, union = (pred & (mask[0] > 0.5)).sum(), (pred | (mask[0] > 0.5)).sum()
        ious.append(float(inter / union) if union else 1.0)
    assert summary["metrics"]["iou"] == pytest.approx(sum(ious) / len(ious))
    assert summary["metrics"]["iou"] != evaluate(model, config, dataset, progress=False)["metrics"]["iou"]


def test_cli_trains_and_evaluates_the_baseline(tmp_path, capsys):
    assert main(["baseline", "--preset", "tiny", "--out", str(tmp_path / "u"), "--steps", "2",
                 "--features", "8", "8", "16", "16", "32", "8", "--set", "data.num_train=16",
                 "--set", "train.val_every=0"]) == 0
    assert main(["evaluate", str(tmp_path / "u"), "--dataset", "synthetic", "--out", str(tmp_path / "e"),
                 "--max-images", "2"]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["num_generations"] == 1 and summary["num_images"] == 2
