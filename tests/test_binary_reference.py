"""The binary path reproduces what it predicted before the class-axis redesign, to float rounding.

tests/fixtures/binary_reference.safetensors holds a fixed tiny network (two conditionings), fixed
inputs and the predictions the code of commit 4683c4f made for them with several samplers, the
MoNuSeg quadrant protocol and the sliding window (tests/fixtures/make_binary_reference.py wrote it).
On the machine that wrote it the predictions are equal bit for bit; another CPU's kernels (AVX2
against AVX-512) round differently, by up to 3.5e-5 after a 100-step chain on a 2-core AMD EPYC
without AVX-512, so the comparison allows 1e-4: a change to the maths moves them far more.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from segdiff import DDPMScheduler, DiffusionSegmenter, SegDiff
from segdiff.config import DiffusionConfig, ExperimentConfig
from segdiff.sampling import predict
from segdiff.sliding import predict_quadrants, predict_sliding

FIXTURE = Path(__file__).parent / "fixtures" / "binary_reference.safetensors"
ROUNDING = 1e-4  # float rounding between CPUs (module docstring)


def _fixture():
    with safe_open(str(FIXTURE), framework="pt") as f:
        cases = json.loads(f.metadata()["cases"])
    return cases, load_file(str(FIXTURE))


CASES, TENSORS = _fixture()


def _network(conditioning: str) -> SegDiff:
    net = SegDiff.from_preset("tiny", conditioning=conditioning)
    prefix = f"weights/{conditioning}/"
    net.load_state_dict({k[len(prefix):]: v for k, v in TENSORS.items() if k.startswith(prefix)}, strict=True)
    return net.eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_binary_predictions_match_the_pre_redesign_fixture(name):
    case = CASES[name]
    net = _network(case["conditioning"])
    config = ExperimentConfig.tiny()
    config = ExperimentConfig(model=net.config, diffusion=DiffusionConfig(config.diffusion.num_steps,
                                                                          prediction=case["prediction"]))
    scheduler = DDPMScheduler.from_config(config.diffusion)
    model = DiffusionSegmenter(config, net)  # the interface the protocols call
    x = TENSORS[f"{name}/images"]
    options = dict(case["options"])
    if "num_steps" in options:  # the fixture's keyword, from before SampleConfig was passed down
        options["num_sampling_steps"] = options.pop("num_steps")
    k = options["num_generations"]
    seeds = [1000 + i for i in range(len(x) * k * (4 if name == "quadrants" else 1))]
    if name == "quadrants":
        pred = predict_quadrants(model, x, seeds=seeds, keep_generations=True, **options)
    elif name == "sliding":
        pred = predict_sliding(model, x[0], overlap=8, image_seed=7, **options)
    else:
        pred = predict(net, x, scheduler, seeds=seeds, keep_generations=True, **options)
    assert pred.prob.shape == TENSORS[f"{name}/prob"].shape
    assert torch.allclose(pred.prob, TENSORS[f"{name}/prob"], rtol=0, atol=ROUNDING)
    assert torch.allclose(pred.uncertainty, TENSORS[f"{name}/uncertainty"], rtol=0, atol=ROUNDING)
    if f"{name}/generations" in TENSORS:
        assert pred.generations.shape[2] == 1  # (B, K, C, H, W): the binary path has one channel
        assert torch.allclose(pred.generations[:, :, 0], TENSORS[f"{name}/generations"], rtol=0, atol=ROUNDING)
    # The fixture is not trivial: the generations differ and the probability is not constant.
    assert pred.uncertainty.max() > 0.01 and pred.prob.std() > 0.01
