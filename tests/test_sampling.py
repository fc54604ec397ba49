"""Samplers and the K-generation ensemble."""

import pytest
import torch

from segdiff import DDPMScheduler, SegDiff, predict, sample_ddim, sample_ddpm
from segdiff.diffusion import _gather, to_signed


def oracle(scheduler, x0):
    """A 'network' that returns the true noise of a fixed x_0: eps = (x_t - sqrt(abar) x0) / sqrt(1-abar)."""
    def denoise(x_t, t):
        abar = _gather(scheduler.alphas_cumprod, t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    return denoise


@pytest.fixture
def x0():
    g = torch.Generator().manual_seed(0)
    return to_signed(torch.randint(0, 2, (3, 1, 8, 8), generator=g).float())


def test_ddpm_with_true_noise_recovers_x0(x0):
    s = DDPMScheduler(100)
    out = sample_ddpm(oracle(s, x0), s, x0.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("steps,eta", [(100, 0.0), (25, 0.0), (10, 1.0)])
def test_ddim_with_true_noise_recovers_x0(x0, steps, eta):
    s = DDPMScheduler(100)
    out = sample_ddim(oracle(s, x0), s, x0.shape, generator=torch.Generator().manual_seed(1), num_steps=steps, eta=eta)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_ddpm_refuses_respacing():
    s = DDPMScheduler(100)
    with pytest.raises(ValueError, match="ddim"):
        sample_ddpm(lambda x, t: x, s, (1, 1, 4, 4), num_steps=10)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = SegDiff.from_preset("tiny").eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


def test_predict_is_deterministic_under_generator_and_varies_with_seed(net):
    images, s = torch.rand(2, 3, 32, 32), DDPMScheduler(25)
    run = lambda seed: predict(net, images, s, num_generations=3, generator=torch.Generator().manual_seed(seed))  # noqa
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.prob, b.prob) and torch.equal(a.uncertainty, b.uncertainty)
    assert not torch.equal(a.prob, c.prob)


def test_predict_shapes_and_ensemble_statistics(net):
    s = DDPMScheduler(25)
    p = predict(net, torch.rand(2, 3, 32, 32), s, num_generations=4, generator=torch.Generator().manual_seed(0),
                keep_generations=True)
    assert p.prob.shape == p.mask.shape == p.uncertainty.shape == (2, 1, 32, 32)
    assert p.generations.shape == (2, 4, 32, 32)
    torch.testing.assert_close(p.prob[:, 0], p.generations.mean(1))
    torch.testing.assert_close(p.uncertainty[:, 0], p.generations.std(1, unbiased=False))
    assert torch.equal(p.mask, (p.prob > 0.5).float())
    assert p.prob.min() >= 0 and p.prob.max() <= 1


def test_predict_result_does_not_depend_on_max_batch(net):
    s, images = DDPMScheduler(25), torch.rand(2, 3, 32, 32)
    big = predict(net, images, s, num_generations=5, max_batch=64, generator=torch.Generator().manual_seed(3))
    small = predict(net, images, s, num_generations=5, max_batch=3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(big.prob, small.prob)


def test_image_encoder_runs_once_per_predict_call(net):
    calls = []
    handle = net.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        predict(net, torch.rand(2, 3, 32, 32), DDPMScheduler(25), num_generations=5, max_batch=4,
                generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert len(calls) == 1  # not K * T = 100 times


def test_predict_rejects_unknown_sampler(net):
    with pytest.raises(ValueError, match="sampler='euler' is not valid"):
        predict(net, torch.rand(1, 3, 32, 32), DDPMScheduler(25), sampler="euler")
