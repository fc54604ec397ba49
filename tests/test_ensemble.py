"""The SegDiff + U-Net ensemble (`models.Ensemble`): its generations blend SegDiff's with the U-Net's
probability, so its mean and its whole curve over K are the weighted blend; `segdiff evaluate` and
`segdiff predict` take it with --ensemble; models that do not fit together, and weights outside
[0, 1], are refused."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdiff import metrics
from segdiff.checkpoint import Checkpoint, save_checkpoint
from segdiff.cli import main
from segdiff.config import ConfigError, ExperimentConfig, SampleConfig
from segdiff.data import image_to_tensor, make_dataset, read_image, resize_image
from segdiff.data.synthetic import make_sample
from segdiff.evaluation import evaluate
from segdiff.models import Ensemble, build_model, load_model
from segdiff.protocol import protocol_for, running_means
from segdiff.sampling import Prediction, generation_seeds
from segdiff.seeding import derive_seed
from segdiff.training import train

UNET_FEATURES = "model.unet_features=[8, 8, 16, 16, 32, 8]"
# Both runs: 2 training steps on synthetic shapes; SegDiff samples K=3 with DDIM in 3 of T=25 steps.
COMMON = ["data.num_train=16", "data.num_test=3", "train.batch_size=4", "train.max_steps=2", "train.val_every=0",
          "train.device=cpu", "diffusion.num_steps=25", "sample.num_generations=3", "sample.sampler=ddim",
          "sample.num_sampling_steps=3"]


@pytest.fixture(scope="module")
def segdiff_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segdiff")
    train(ExperimentConfig.tiny().override([*COMMON, f"train.out_dir={out}"]), progress=False)
    return out


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unet")
    train(ExperimentConfig.tiny().override(["model.kind=unet", UNET_FEATURES, *COMMON, f"train.out_dir={out}"]),
          progress=False)
    return out


def _random_unet(folder: Path, *sets: str) -> Path:
    """A U-Net checkpoint of the tiny preset with `sets` applied, random weights (no training)."""
    cfg = ExperimentConfig.tiny().override(["model.kind=unet", UNET_FEATURES, *sets])
    path = folder / "unet.safetensors"
    save_checkpoint(path, Checkpoint(config=cfg, ema=build_model(cfg).net.state_dict()))
    return path


def _images(count: int = 2) -> torch.Tensor:
    return torch.stack([make_sample(3, i, 32)[0] for i in range(count)])


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_the_ensembles_mean_and_curve_over_k_are_the_weighted_blend(segdiff_run, unet_run, weight):
    diffusion, unet = load_model(segdiff_run), load_model(unet_run)
    sample = diffusion.config.sample
    images = _images()
    seeds = [s for i in range(len(images)) for s in generation_seeds(derive_seed(0, f"image {i}"), 3)]
    ensemble = Ensemble(diffusion, unet, weight=weight)
    assert ensemble.num_generations(sample) == 3 and ensemble.kind == "ensemble"
    blended = ensemble.generations(images, seeds, sample)  # (B, K, 1, H, W)
    assert blended.shape == (2, 3, 1, 32, 32)

    # Each model on its own, with the same seeds (the U-Net has K = 1 and ignores its seed).
    own = diffusion.generations(images, seeds, sample)
    probability = unet.generations(images, [0, 1], sample)[:, 0]  # (B, 1, H, W)
    expected = (1 - weight) * own.mean(dim=1) + weight * probability
    assert torch.allclose(blended.mean(dim=1), expected, atol=1e-6)
    for b in range(len(images)):  # every running mean over the first k generations: the curve over K
        curve = (1 - weight) * running_means(own[b]) + weight * probability[b]
        assert torch.allclose(running_means(blended[b]), curve, atol=1e-6)
    if weight == 0.0:
        assert torch.equal(blended, own)  # exactly SegDiff's
    if weight == 1.0:
        assert torch.equal(blended, probability[:, None].expand_as(blended))  # exactly the U-Net's, K times


class _Recorder:
    """A stand-in Segmenter with K = 2 generations that records the seeds it is given."""

    kind = "recorder"

    def __init__(self, config: ExperimentConfig, value: float):
        self.config, self.value, self.net, self.seen = config, value, torch.nn.Linear(1, 1), []

    def num_generations(self, sample):
        return 2

    def sampling_summary(self, sample):
        return {"sampler": "recorder", "num_steps": 1}

    def generations(self, images, seeds, sample):
        self.seen.append(list(seeds))
        return torch.full((len(images), 2, 1, *images.shape[-2:]), self.value)


def test_each_model_gets_its_own_number_of_seeds_and_the_partner_never_the_diffusions():
    cfg = ExperimentConfig.tiny()
    diffusion, partner = build_model(cfg), _Recorder(cfg, 0.8)
    sample = SampleConfig(num_generations=2, sampler="ddim", num_sampling_steps=2)
    seeds = [11, 12, 21, 22]
    out = Ensemble(diffusion, partner, weight=0.25).generations(_images(), seeds, sample)
    assert len(partner.seen) == 1 and len(partner.seen[0]) == 4  # 2 images x the partner's K = 2
    assert not set(partner.seen[0]) & set(seeds)
    again = Ensemble(diffusion, _Recorder(cfg, 0.8), weight=0.25)
    again.generations(_images(), seeds, sample)
    assert again.partner.seen == partner.seen  # derived from the seeds alone
    alone = diffusion.generations(_images(), seeds, sample)
    assert torch.allclose(out, 0.75 * alone + 0.25 * 0.8)
    with pytest.raises(NotImplementedError, match="an Ensemble is not trained"):
        Ensemble(diffusion, partner).loss(diffusion.net, _images(), torch.zeros(2, 1, 32, 32), torch.Generator(),
                                          cfg.train, slice(None))


def test_evaluate_with_ensemble_records_the_partner_and_scores_the_python_ensemble(segdiff_run, unet_run, tmp_path,
                                                                                capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(segdiff_run), "--dataset", "synthetic", "--max-images", "2", "--ensemble",
                 str(unet_run), "--ensemble-weight", "0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"unet from {unet_run} (weight 0.3)" in printed and f"segdiff from {segdiff_run} (weight 0.7)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ensemble"] == {"partner": str(unet_run.resolve()), "partner_kind": "unet", "weight": 0.3}
    assert summary["model"] == "ensemble" and summary["checkpoint"] == str(segdiff_run.resolve())
    assert summary["sampler"] == "ddim + unet (w=0.3)" and summary["num_generations"] == 3

    model = Ensemble(load_model(segdiff_run), load_model(unet_run), weight=0.3)
    protocol = protocol_for("synthetic", 32)
    dataset = make_dataset(model.config, "test", image_size=protocol.dataset_size)
    by_python = evaluate(model, dataset, protocol, model.config.sample, seed=0, max_images=2, progress=False)
    assert summary["metrics"]["iou"] == pytest.approx(by_python["metrics"]["iou"], abs=1e-12)
    assert summary["curve"]["iou"] == pytest.approx(by_python["curve"]["iou"], abs=1e-12)


def test_predict_with_ensemble_writes_the_blended_prediction(segdiff_run, unet_run, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray((make_sample(3, 5, 40)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "pred"
    assert main(["predict", str(segdiff_run), str(photo), "--out", str(out), "--ensemble", str(unet_run),
                 "--ensemble-weight", "0.4"]) == 0
    model = Ensemble(load_model(segdiff_run), load_model(unet_run), weight=0.4)
    image = resize_image(image_to_tensor(read_image(photo)), 32)[None]
    pred = Prediction.from_generations(model.generations(image, generation_seeds(derive_seed(0, "photo"), 3),
                                                         model.config.sample))
    prob = torch.nn.functional.interpolate(pred.prob, size=(40, 40), mode="bilinear", align_corners=False)[0, 0]
    written = np.asarray(Image.open(out / "photo_prob.png")).astype(np.int16)
    assert np.abs(written - (prob.clamp(0, 1).numpy() * 255 + 0.5).astype(np.int16)).max() <= 1
    with open(out / "uncertainty.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["mean_entropy"]) == pytest.approx(float(metrics.mean_entropy(pred.prob)[0]), rel=1e-6)


def test_models_of_another_input_size_or_other_classes_are_refused_naming_both(segdiff_run, tmp_path, capsys):
    diffusion = load_model(segdiff_run)
    mismatches = (("size", "model.image_size=64", r"input size 32\) with .* \(input size 64\)"),
                  ("classes", "model.num_classes=3", r"number of classes 2\) with .* \(number of classes 3\)"),
                  ("names", "model.class_names=[ground, building]", r"classes \['background', 'foreground'\]\) with"))
    for name, setting, what in mismatches:
        folder = tmp_path / name
        folder.mkdir()
        other = _random_unet(folder, setting)
        with pytest.raises(ConfigError, match=what) as caught:
            Ensemble(diffusion, load_model(other), sources=(str(segdiff_run), str(other)))
        assert str(segdiff_run) in str(caught.value) and str(other) in str(caught.value)
        assert main(["evaluate", str(segdiff_run), "--dataset", "synthetic", "--max-images", "1",
                     "--ensemble", str(other), "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("segdiff evaluate: error: cannot ensemble")
        assert str(segdiff_run) in err and str(other) in err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan, True])
def test_a_weight_outside_0_1_is_refused(weight):
    cfg = ExperimentConfig.tiny()
    with pytest.raises(ConfigError, match=r"the partner's weight must be a number in \[0, 1\]"):
        Ensemble(build_model(cfg), build_model(cfg.override(["model.kind=unet", UNET_FEATURES])), weight=weight)


def test_the_cli_refuses_a_bad_weight_before_loading_anything(tmp_path, capsys):
    missing = str(tmp_path / "no-such-run")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    assert main(["predict", missing, str(photo), "--out", str(tmp_path / "o"), "--ensemble", missing,
                 "--ensemble-weight", "2"]) == 2
    assert "ensemble weight 2.0: the partner's weight must be a number in [0, 1]" in capsys.readouterr().err
    assert main(["evaluate", missing, "--dataset", "synthetic", "--ensemble-weight", "0.5"]) == 2
    assert "--ensemble-weight applies with --ensemble" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# SDEdit refinement: SegDiff starts from the U-Net's mask, noised to an intermediate step


def test_a_chain_started_part_way_visits_its_steps_from_the_start_down():
    from segdiff.diffusion import DDPMScheduler
    from segdiff.sampling import SAMPLER_FUNCTIONS, Start

    scheduler = DDPMScheduler(num_steps=100)
    assert scheduler.timesteps(4, start=30).tolist() == [30, 20, 10, 0]
    assert scheduler.timesteps(start=3).tolist() == [3, 2, 1, 0]
    with pytest.raises(ValueError, match=r"start=100 must be a step in \[0, 99\]"):
        scheduler.timesteps(4, start=100)
    with pytest.raises(ValueError, match=r"num_inference_steps=5 must be in \[1, 4\]"):
        scheduler.timesteps(5, start=3)
    for name, sampler in SAMPLER_FUNCTIONS.items():
        seen = []

        def denoise(x, t):
            seen.append(int(t[0]))
            return torch.zeros_like(x)

        sampler(denoise, scheduler, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0), num_steps=4,
                start=Start(torch.zeros(2, 1, 4, 4), 30))
        assert seen == [30, 20, 10, 0], name


def test_a_chain_started_from_the_truth_with_a_perfect_denoiser_returns_the_truth():
    # The noise a perfect denoiser reports is (x_t - sqrt(abar) x0) / sqrt(1 - abar): its x_0 estimate is x0
    # at every step, so deterministic DDIM ends at x0 exactly, from whatever noise was drawn at the start.
    from segdiff.diffusion import DDPMScheduler
    from segdiff.sampling import Start, sample_ddim

    scheduler = DDPMScheduler(num_steps=100)
    truth = torch.where(torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5, 1.0, -1.0)

    def denoise(x, t):
        abar = scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x - abar.sqrt() * truth) / (1 - abar).sqrt()

    x0 = sample_ddim(denoise, scheduler, tuple(truth.shape), generator=torch.Generator().manual_seed(2),
                     num_steps=5, start=Start(truth, 40))
    assert torch.allclose(x0, truth, atol=1e-5)


def test_refinement_samples_k_generations_from_the_partners_mask_deterministically(segdiff_run, unet_run):
    from segdiff.models import Refinement

    segdiff, unet = load_model(segdiff_run), load_model(unet_run)
    model = Refinement(segdiff, unet, start_step=10)
    images = torch.stack([make_sample(i, 32)[0] for i in range(2)])
    sample = SampleConfig(num_generations=3, sampler="ddim", num_sampling_steps=3)
    seeds = [s for i in range(2) for s in generation_seeds(i, 3)]
    first = model.generations(images, seeds, sample)
    assert first.shape == (2, 3, 1, 32, 32) and 0 <= float(first.min()) and float(first.max()) <= 1
    assert torch.equal(model.generations(images, seeds, sample), first)
    assert not torch.equal(segdiff.generations(images, seeds, sample), first)  # the start is the U-Net's mask
    assert "refining unet from step 10" in model.sampling_summary(sample)["sampler"]
    with pytest.raises(ConfigError, match=r"refinement start step 25: must be a step in \[0, 24\]"):
        Refinement(segdiff, unet, start_step=25)


def test_evaluate_with_refine_step_scores_the_python_refinement_and_records_it(segdiff_run, unet_run, tmp_path,
                                                                               capsys):
    from segdiff.models import Refinement

    out = tmp_path / "eval"
    assert main(["evaluate", str(segdiff_run), "--dataset", "synthetic", "--max-images", "2", "--ensemble",
                 str(unet_run), "--refine-step", "12", "--out", str(out)]) == 0
    assert f"refines unet from {unet_run}, starting at step 12" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refinement"] == {"partner": str(unet_run.resolve()), "partner_kind": "unet", "start_step": 12}
    assert "ensemble" not in summary and summary["model"] == "refinement"
    model = Refinement(load_model(segdiff_run), load_model(unet_run), start_step=12)
    protocol = protocol_for("synthetic", 32)
    dataset = make_dataset(model.config, "test", image_size=protocol.dataset_size)
    by_python = evaluate(model, dataset, protocol, model.config.sample, seed=0, max_images=2, progress=False)
    assert summary["metrics"]["iou"] == pytest.approx(by_python["metrics"]["iou"], abs=1e-12)


def test_the_cli_refuses_refine_step_without_a_partner_or_beside_a_weight(tmp_path, capsys):
    missing = str(tmp_path / "no-such-run")
    assert main(["evaluate", missing, "--dataset", "synthetic", "--refine-step", "10"]) == 2
    assert "--refine-step applies with --ensemble RUN" in capsys.readouterr().err
    assert main(["evaluate", missing, "--dataset", "synthetic", "--ensemble", missing, "--refine-step", "10",
                 "--ensemble-weight", "0.5"]) == 2
    assert "give one" in capsys.readouterr().err
