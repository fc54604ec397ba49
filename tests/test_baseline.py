"""The U-Net baseline: trained by the same loop, saved safely, scored by the same protocol."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from segdiff.checkpoint import find_resume_checkpoint, load_checkpoint
from segdiff.cli import main
from segdiff.config import ExperimentConfig, SampleConfig
from segdiff.data import build_dataset, make_dataset
from segdiff.evaluation import evaluate
from segdiff.models import UNetSegmenter, load_model
from segdiff.protocol import protocol_for
from segdiff.training import train

FEATURES = "model.unet_features=[8, 8, 16, 16, 32, 8]"


def _config(out, *sets):
    return ExperimentConfig.tiny().override([
        "model.kind=unet", FEATURES, "data.num_train=32", "data.num_test=4", f"train.out_dir={out}",
        "train.batch_size=8", "train.max_steps=4", "train.val_every=2", "train.log_every=1", *sets])


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("unet")
    train(_config(out), progress=False)
    return out


def test_the_baseline_trains_through_the_one_training_loop(baseline_run):
    records = [json.loads(line) for line in (baseline_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "val"] == [2, 4]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4]
    assert all(0 <= r["val_iou"] <= 1 for r in records if r["event"] == "val")
    config = json.loads((baseline_run / "config.json").read_text())
    assert config["model"]["kind"] == "unet" and config["model"]["unet_features"] == [8, 8, 16, 16, 32, 8]
    names = {p.name for p in baseline_run.iterdir()}
    assert {"best.safetensors", "last.safetensors", "last-4.safetensors", "log.csv"} <= names
    last = load_file(str(baseline_run / "last.safetensors"))
    assert any(k.startswith("optim/") for k in last)  # resumable: AdamW state, RNG states
    # No EMA for the U-Net: the evaluated weights are the raw weights.
    for key in (k for k in last if k.startswith("model/")):
        assert torch.equal(last[key], last["ema/" + key[len("model/"):]]), key
    best = load_file(str(baseline_run / "best.safetensors"))
    assert best and all(k.startswith("ema/") for k in best)  # the evaluated weights alone


def test_training_is_deterministic_under_a_seed(baseline_run, tmp_path):
    train(_config(tmp_path), progress=False)
    a = load_model(baseline_run / "last.safetensors").net
    b = load_model(tmp_path / "last.safetensors").net
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_a_resumed_baseline_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    whole = _config(tmp_path / "whole", "train.max_steps=6", "train.save_every=3", "train.val_every=3")
    train(whole, progress=False)
    half = _config(tmp_path / "half", "train.max_steps=3", "train.save_every=3", "train.val_every=3")
    train(half, progress=False)
    resumed = _config(tmp_path / "half", "train.max_steps=6", "train.save_every=3", "train.val_every=3")
    train(resumed, progress=False, resume=tmp_path / "half")
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("whole", "half"))
    assert set(a) == set(b)
    for key in (k for k in a if k.startswith(("model/", "ema/", "optim/"))):
        assert torch.equal(a[key], b[key]), key
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("whole", "half")]
    assert [r["loss"] for r in logs[0] if r["event"] == "train"] == [r["loss"] for r in logs[1] if r["event"] == "train"]


def test_a_killed_baseline_run_resumes_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "segdiff.cli", "baseline", "--preset", "tiny", "--out", str(run),
               "--steps", "100000", "--features", "8", "8", "16", "16", "32", "8",
               "--set", "data.num_train=32", "--set", "train.save_every=2", "--set", "train.val_every=0"]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(run.glob("last-*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # What --resume reads: last.safetensors, or a newer last-<step> when the kill came between the two writes
    step = load_checkpoint(find_resume_checkpoint(run), config_only=True).state["step"]
    assert step >= 2
    assert main(["train", "--resume", str(run), "--steps", str(step + 2)]) == 0
    assert load_model(run / "last.safetensors").config.model.kind == "unet"


def test_cosine_schedule_sets_the_lr_of_each_update(tmp_path):
    cfg = _config(tmp_path, "train.lr_schedule=cosine", "train.val_every=0")
    train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    logged = [r["lr"] for r in records if r["event"] == "train"]
    # Update n of 4 uses lr * (1 + cos(pi n / 4)) / 2 (tiny's lr is 1e-3).
    by_hand = [1e-3 * (1 + math.cos(math.pi * n / 4)) / 2 for n in range(4)]
    assert logged == pytest.approx(by_hand, rel=1e-12)


def test_evaluate_scores_the_baseline_with_one_generation(baseline_run):
    model = load_model(baseline_run)
    assert isinstance(model, UNetSegmenter)
    dataset = build_dataset("synthetic", "", "test", model.config.model.image_size, num_test=3)
    protocol = protocol_for("synthetic", model.config.model.image_size)
    summary = evaluate(model, dataset, protocol, progress=False)
    assert summary["num_generations"] == 1 and summary["model"] == "unet"
    assert summary["sampler"] == "none (one forward pass)"
    assert len(summary["curve"]["iou"]) == 1
    # The metrics are those of the network's own thresholded probability.
    image, mask = dataset[0]
    prob = torch.sigmoid(model.net(image[None]))[0, 0]
    inter = ((prob > 0.5) & (mask[0] > 0.5)).sum()
    union = ((prob > 0.5) | (mask[0] > 0.5)).sum()
    first = evaluate(model, dataset, protocol, max_images=1, progress=False)
    assert first["metrics"]["iou"] == pytest.approx(float(inter / union) if union else 1.0)


def test_baseline_symmetry_averages_the_mapped_back_passes(baseline_run):
    net = load_model(baseline_run).net
    image = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(net.probability(image, "none"), torch.sigmoid(net(image)))
    passes = [torch.sigmoid(net(image.flip(dims))).flip(dims) if dims else torch.sigmoid(net(image))
              for dims in ((), (-1,), (-2, -1), (-2,))]  # identity, h-flip, 180 degrees, v-flip
    torch.testing.assert_close(net.probability(image, "flips"), sum(passes) / 4)


def test_evaluate_with_dihedral_symmetry_scores_the_eight_pass_average(baseline_run):
    model = load_model(baseline_run)
    dataset = build_dataset("synthetic", "", "test", model.config.model.image_size, num_test=2)
    protocol = protocol_for("synthetic", model.config.model.image_size)
    sample = SampleConfig(symmetry="dihedral")
    summary = evaluate(model, dataset, protocol, sample, progress=False)
    assert summary["symmetry"] == "dihedral" and summary["num_generations"] == 1
    # The score is that of the eight-pass average, thresholded at 0.5: IoU per image, then the mean.
    ious = []
    for image, mask in (dataset[i] for i in range(len(dataset))):
        pred = model.net.probability(image[None], "dihedral")[0, 0] > 0.5
        inter, union = (pred & (mask[0] > 0.5)).sum(), (pred | (mask[0] > 0.5)).sum()
        ious.append(float(inter / union) if union else 1.0)
    assert summary["metrics"]["iou"] == pytest.approx(sum(ious) / len(ious))


def test_cli_trains_and_evaluates_the_baseline(tmp_path, capsys):
    assert main(["baseline", "--preset", "tiny", "--out", str(tmp_path / "u"), "--steps", "2",
                 "--features", "8", "8", "16", "16", "32", "8", "--set", "data.num_train=16",
                 "--set", "train.val_every=0"]) == 0
    assert main(["evaluate", str(tmp_path / "u"), "--dataset", "synthetic", "--out", str(tmp_path / "e"),
                 "--max-images", "2", "--symmetry", "flips"]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["num_generations"] == 1 and summary["num_images"] == 2
    assert summary["sample"]["symmetry"] == "flips"


def test_evaluate_scores_a_baseline_run_on_monuseg_with_the_quadrant_protocol(baseline_run, data_root, tmp_path):
    if not (data_root / "monuseg" / "test" / "images").is_dir():
        pytest.skip(f"MoNuSeg test images not found under {data_root / 'monuseg'}")
    assert main(["evaluate", str(baseline_run), "--dataset", "monuseg", "--data", str(data_root),
                 "--max-images", "1", "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["protocol"] == "monuseg" and summary["num_generations"] == 1
    model = load_model(baseline_run)
    image, mask = make_dataset(model.config.override(["data.dataset=monuseg", f"data.root={data_root}"]), "test")[0]
    assert mask.shape[-1] == 2 * model.config.model.image_size  # scored on the whole 2S image


def test_a_baseline_run_is_evaluated_on_vaihingen(baseline_run, data_root, tmp_path):
    if not (data_root / "vaihingen").is_dir():
        pytest.skip(f"Vaihingen not found under {data_root}")
    assert main(["evaluate", str(baseline_run), "--dataset", "vaihingen", "--data", str(data_root),
                 "--max-images", "1", "--score-size", "64", "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["protocol"] == "vaihingen" and summary["score_size"] == 64


def test_predict_segments_images_with_a_baseline_run_like_any_model(baseline_run, tmp_path):
    image, _ = build_dataset("synthetic", "", "test", 32, num_test=1)[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).resize((40, 36)).save(tmp_path / "a.png")
    assert main(["predict", str(baseline_run), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 0
    prob = torch.from_numpy(np.array(Image.open(tmp_path / "o" / "a_prob.png"))).float() / 255
    assert prob.shape == (36, 40)
    # One forward pass at the model's input, resized back: what the network gives, to PNG rounding.
    model = load_model(baseline_run)
    small = torch.nn.functional.interpolate(torch.from_numpy(np.array(
        Image.open(tmp_path / "a.png"))).permute(2, 0, 1)[None].float() / 255, size=(32, 32), mode="bilinear",
        antialias=True, align_corners=False).clamp(0, 1)
    expected = torch.nn.functional.interpolate(torch.sigmoid(model.net(small)), size=(36, 40), mode="bilinear",
                                               align_corners=False)[0, 0]
    assert (prob - expected).abs().max() <= 1 / 255 + 1e-6
