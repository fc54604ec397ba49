"""Samplers and the K-generation ensemble."""

import pytest
import torch

from segdiff import DDPMScheduler, DiffusionSegmenter, SegDiff, predict, sample_ddim, sample_ddpm
from segdiff.diffusion import _gather, from_signed, to_signed
from segdiff.config import SYMMETRY_NAMES, DiffusionConfig, ExperimentConfig, SampleConfig
from segdiff.sampling import (
    SAMPLER_FUNCTIONS, SYMMETRIES, Start, apply_symmetry, dpm_solver_scheduler, generation_seeds,
    invert_symmetry, respaced_betas, sample_dpm_solver, sample_generations,
)
from segdiff.seeding import derive_seed
from segdiff.sliding import predict_sliding, quadrants, stitch_quadrants, window_starts, window_weights


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


@pytest.mark.parametrize("steps", [10, 25])
def test_respaced_ddpm_with_true_noise_recovers_x0(x0, steps):
    s = DDPMScheduler(100)
    out = sample_ddpm(oracle(s, x0), s, x0.shape, generator=torch.Generator().manual_seed(1), num_steps=steps)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_ddpm_rejects_more_steps_than_trained():
    s = DDPMScheduler(100)
    with pytest.raises(ValueError, match=r"must be in \[1, 100\]"):
        sample_ddpm(lambda x, t: x, s, (1, 1, 4, 4), num_steps=101)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = SegDiff.from_preset("tiny").eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


@pytest.fixture(scope="module")
def segmenter(net):
    """`net` with the T = 25 schedule the tests sample it with, as the sliding-window code takes it."""
    return DiffusionSegmenter(ExperimentConfig(model=net.config, diffusion=DiffusionConfig(25)), net)


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
    assert p.generations.shape == (2, 4, 1, 32, 32)  # (B, K, C, H, W)
    torch.testing.assert_close(p.prob, p.generations.mean(1))
    torch.testing.assert_close(p.uncertainty, p.generations.std(1, unbiased=False))
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


def test_predict_rejects_an_override_that_is_not_a_sample_config_field(net):
    with pytest.raises(TypeError, match="unknown sampling option.* num_steps; valid: .*num_sampling_steps"):
        predict(net, torch.rand(1, 3, 32, 32), DDPMScheduler(25), num_steps=4)


def test_predict_takes_its_settings_from_a_sample_config_and_overrides_replace_fields(net):
    s, images, seeds = DDPMScheduler(25), torch.rand(1, 3, 32, 32), [5, 6]
    sample = SampleConfig(num_generations=2, sampler="ddim", num_sampling_steps=3)
    from_config = predict(net, images, s, sample, seeds=seeds, keep_generations=True)
    from_keywords = predict(net, images, s, num_generations=2, sampler="ddim", num_sampling_steps=3, seeds=seeds,
                            keep_generations=True)
    assert torch.equal(from_config.generations, from_keywords.generations)
    overridden = predict(net, images, s, sample, num_generations=1, seeds=seeds[:1], keep_generations=True)
    assert torch.equal(overridden.generations, from_config.generations[:, :1])
    assert torch.equal(sample_generations(net, images, s, sample, seeds), from_config.generations)


# --- respacing, DPM-Solver++ ------------------------------------------------------------------------
def test_respaced_betas_keep_alphas_cumprod_at_the_kept_steps():
    s = DDPMScheduler(100)
    torch.testing.assert_close(respaced_betas(s, s.timesteps()), s.betas.flip(0), atol=1e-12, rtol=0)
    steps = s.timesteps(10)  # 99, 88, ..., 0
    betas = respaced_betas(s, steps)
    # the respaced chain's alpha_bar at kept step s_i is the product of (1 - beta') over s_i and below
    chain_abar = torch.cumprod((1 - betas).flip(0), 0).flip(0)
    torch.testing.assert_close(chain_abar, s.alphas_cumprod[steps], atol=1e-12, rtol=0)


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("stochastic", [False, True])
def test_dpm_solver_with_true_noise_recovers_x0(x0, steps, stochastic):
    s = DDPMScheduler(100)
    generator = [torch.Generator().manual_seed(i) for i in range(3)]
    out = sample_dpm_solver(oracle(s, x0), s, x0.shape, generator=generator, num_steps=steps, stochastic=stochastic)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler,steps", [("sde-dpm-solver++", 100), ("ddpm", 100)])
def test_stochastic_samplers_draw_from_the_data_distribution(sampler, steps):
    """Gaussian data N(0.5, 0.3^2) with its ideal denoiser: 8192 samples have its mean and std.

    (At T = 100 steps; with sigma_t^2 = beta_t and few steps the spread comes out a little wider.)
    """
    s = DDPMScheduler(100)
    denoise, _, _ = _gaussian_ode_case(s, mu=0.5, sd=0.3)
    out = SAMPLER_FUNCTIONS[sampler](denoise, s, (8, 1, 32, 32), generator=torch.Generator().manual_seed(2),
                                     num_steps=steps)
    assert abs(out.mean().item() - 0.5) < 0.02 and abs(out.std().item() - 0.3) < 0.02
    # and reproducible: all its noise comes from the generator
    again = SAMPLER_FUNCTIONS[sampler](denoise, s, (8, 1, 32, 32), generator=torch.Generator().manual_seed(2),
                                       num_steps=steps)
    assert torch.equal(out, again)


def test_dpm_solver_runs_our_schedule_and_steps():
    s = DDPMScheduler(100)
    solver = dpm_solver_scheduler(s, 10)
    assert solver.timesteps.tolist() == s.timesteps(10).tolist()  # 99, 88, ..., 0: trained integer steps
    torch.testing.assert_close(solver.alphas_cumprod.double(), s.alphas_cumprod, atol=1e-6, rtol=1e-5)


def _gaussian_ode_case(s, mu=0.0, sd=1.0):
    """Data x_0 ~ N(mu, sd^2) per pixel: the ideal eps and the exact end of the probability-flow ODE.

    x_t ~ N(sqrt(abar) mu, abar sd^2 + 1 - abar), E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) /
    (abar sd^2 + 1 - abar); the ODE keeps each pixel's standardised value, so from x_T it ends at
    mu + sd (x_T - sqrt(abar_T) mu) / sqrt(abar_T sd^2 + 1 - abar_T).
    """
    def denoise(x_t, t):
        abar = _gather(s.alphas_cumprod, t, x_t)
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * mu) / (abar * sd**2 + 1 - abar)
    shape = (2, 1, 16, 16)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    abar_T = float(s.alphas_cumprod[-1])
    exact = mu + sd * (x_T - abar_T**0.5 * mu) / (abar_T * sd**2 + 1 - abar_T) ** 0.5
    return denoise, shape, exact


def test_dpm_solver_is_second_order_where_ddim_is_first_order():
    s = DDPMScheduler(100)
    denoise, shape, exact = _gaussian_ode_case(s)
    error = {}
    for name, sampler in (("dpm", sample_dpm_solver), ("ddim", sample_ddim)):
        for n in (50, 100):
            out = sampler(denoise, s, shape, generator=torch.Generator().manual_seed(1), num_steps=n)
            error[name, n] = (out - exact).abs().mean().item()
    # Halving the step size: a first-order method's error halves, a second-order one's quarters.
    assert error["ddim", 50] / error["ddim", 100] < 2.5
    assert error["dpm", 50] / error["dpm", 100] > 3.5
    assert error["dpm", 100] < error["ddim", 100] / 4


@pytest.mark.parametrize("sampler,steps", [("ddpm", 0), ("ddpm", 10), ("ddim", 10), ("dpm-solver++", 5),
                                           ("sde-dpm-solver++", 5)])
def test_batched_generations_with_cached_features_match_the_reference_pattern(net, sampler, steps):
    """predict (F(I) once, K rows batched) == the full network at every step, one generation at a time."""
    s, images, k = DDPMScheduler(25), torch.rand(2, 3, 32, 32), 3
    seeds = [derive_seed(7, i) for i in range(2 * k)]
    fast = predict(net, images, s, num_generations=k, sampler=sampler, num_sampling_steps=steps, max_batch=64,
                   seeds=seeds, keep_generations=True)
    for row, seed in enumerate(seeds):
        image = images[row // k][None]
        x0 = SAMPLER_FUNCTIONS[sampler](lambda x, t: net(x, t, image), s, (1, 1, 32, 32),
                                        generator=[torch.Generator().manual_seed(seed)],
                                        num_steps=steps or None)  # all T: 0 in SampleConfig, None here
        torch.testing.assert_close(fast.generations[row // k, row % k], from_signed(x0)[0], atol=1e-4, rtol=0)


def test_predict_with_seeds_does_not_depend_on_the_other_images(net):
    s, images = DDPMScheduler(25), torch.rand(2, 3, 32, 32)
    seeds_a, seeds_b = generation_seeds(derive_seed(0, "a"), 3), generation_seeds(derive_seed(0, "b"), 3)
    together = predict(net, images, s, num_generations=3, sampler="ddim", num_sampling_steps=5, seeds=seeds_a + seeds_b)
    alone = predict(net, images[1:], s, num_generations=3, sampler="ddim", num_sampling_steps=5, seeds=seeds_b,
                    max_batch=2)
    torch.testing.assert_close(together.prob[1:], alone.prob, atol=1e-5, rtol=0)
    other = predict(net, images[1:], s, num_generations=3, sampler="ddim", num_sampling_steps=5, seeds=seeds_a)
    assert not torch.allclose(other.prob, alone.prob, atol=1e-3)


def test_predict_checks_seed_count_and_eta(net):
    with pytest.raises(ValueError, match="2 seeds for 1 image"):
        predict(net, torch.rand(1, 3, 32, 32), DDPMScheduler(25), num_generations=3, seeds=[1, 2])
    with pytest.raises(ValueError, match="eta"):
        predict(net, torch.rand(1, 3, 32, 32), DDPMScheduler(25), num_generations=1, sampler="ddpm", eta=0.5)


def test_derive_seed_separates_its_parts():
    seeds = {derive_seed(0, "a", 0, k) for k in range(50)} | {derive_seed(1, "a", 0, 0), derive_seed(0, "b", 0, 0)}
    assert len(seeds) == 52 and all(0 <= x < 2**62 for x in seeds)
    assert derive_seed(0, "a1") != derive_seed(0, "a", 1)
    assert generation_seeds(5, 3, 2) == [derive_seed(5, 2, k) for k in range(3)]


def test_autocast_runs_the_network_in_bfloat16_and_stays_close(net):
    dtypes = []
    handle = net.out.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    try:
        s, images, seeds = DDPMScheduler(25), torch.rand(1, 3, 32, 32), [3, 4]
        kwargs = dict(num_generations=2, sampler="ddim", num_sampling_steps=3, seeds=seeds, keep_generations=True)
        ref = predict(net, images, s, **kwargs)
        low = predict(net, images, s, autocast=True, **kwargs)
    finally:
        handle.remove()
    assert dtypes[:3] == [torch.float32] * 3 and dtypes[3:] == [torch.bfloat16] * 3
    assert low.generations.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: the maps agree to a few percent, not bit for bit
    assert (low.generations - ref.generations).abs().mean() < 0.05


@pytest.mark.slow
def test_compiled_denoise_gives_the_eager_result(net):
    s, images, seeds = DDPMScheduler(25), torch.rand(1, 3, 32, 32), [3, 4]
    eager = predict(net, images, s, num_generations=2, sampler="ddim", num_sampling_steps=3, seeds=seeds)
    compiled = predict(net, images, s, num_generations=2, sampler="ddim", num_sampling_steps=3, seeds=seeds,
                       compile=True)
    torch.testing.assert_close(compiled.prob, eager.prob, atol=1e-4, rtol=0)


# --- sliding windows ---------------------------------------------------------------------------------
def test_window_starts_cover_the_image_with_at_least_the_overlap():
    assert window_starts(64, 32, 0) == [0, 32]
    assert window_starts(32, 32, 8) == [0] and window_starts(20, 32, 8) == [0]
    for length, tile, overlap in ((77, 32, 8), (100, 32, 0), (1000, 256, 64), (33, 32, 31)):
        starts = window_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] == length - tile
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match="overlap=32 must be in"):
        window_starts(64, 32, 32)


@pytest.mark.parametrize("length,overlap", [(77, 8), (64, 0), (100, 12)])
def test_linear_weights_cross_fade_to_one(length, overlap):
    """Where at most two windows meet (overlap <= tile / 2) the weights sum to 1 at every pixel."""
    starts = window_starts(length, 32, overlap)
    total = torch.zeros(length, dtype=torch.float64)
    for start, w in zip(starts, window_weights(starts, 32, "linear")):
        total[start:start + 32] += w
        assert (w > 0).all()
    torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64))


def test_sliding_at_overlap_0_is_exactly_the_quadrant_protocol(net, segmenter):
    """MoNuSeg: an image twice the input, four quadrants sampled separately and stitched."""
    s, image = DDPMScheduler(25), torch.rand(3, 64, 64)
    kwargs = dict(num_generations=3, sampler="ddpm", num_sampling_steps=8, max_batch=64)
    tiled = predict_sliding(segmenter, image, overlap=0, generator=torch.Generator().manual_seed(0), **kwargs)
    parts = predict(net, quadrants(image), s, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(tiled.prob[0], stitch_quadrants(parts.prob))
    assert torch.equal(tiled.uncertainty[0], stitch_quadrants(parts.uncertainty))
    assert torch.equal(tiled.mask, (tiled.prob > 0.5).float())


def test_sliding_blends_overlapping_windows_linearly(net, segmenter):
    s, image = DDPMScheduler(25), torch.rand(3, 32, 50)
    kwargs = dict(num_generations=2, sampler="ddim", num_sampling_steps=4, max_batch=64)
    tiled = predict_sliding(segmenter, image, overlap=8, image_seed=11, **kwargs)
    assert window_starts(50, 32, 8) == [0, 18]  # columns 18..31 are shared
    seeds = generation_seeds(11, 2, 0) + generation_seeds(11, 2, 1)
    windows = predict(net, torch.stack([image[:, :, :32], image[:, :, 18:]]), s, seeds=seeds, **kwargs).prob[:, 0]
    expected = torch.zeros(32, 50, dtype=torch.float64)
    expected[:, :18] = windows[0, :, :18]
    expected[:, 32:] = windows[1, :, 14:]
    ramp = torch.arange(1, 15, dtype=torch.float64) / 15  # window 1's weight across the 14 shared columns
    expected[:, 18:32] = (1 - ramp) * windows[0, :, 18:] + ramp * windows[1, :, :14]
    torch.testing.assert_close(tiled.prob[0, 0], expected.float(), atol=1e-6, rtol=0)


def test_sliding_pads_small_images_and_keeps_any_size(segmenter):
    for h, w in ((20, 45), (7, 3)):
        pred = predict_sliding(segmenter, torch.rand(3, h, w), overlap=4, num_generations=1, sampler="ddim",
                               num_sampling_steps=2, image_seed=0)
        assert pred.prob.shape == pred.uncertainty.shape == pred.mask.shape == (1, 1, h, w)
        assert 0 <= pred.prob.min() and pred.prob.max() <= 1


def test_channels_last_gives_the_plain_result_within_float_rounding(net):
    s, images = DDPMScheduler(25), torch.rand(2, 3, 32, 32)
    plain = predict(net, images, s, num_generations=3, generator=torch.Generator().manual_seed(4), keep_generations=True)
    nhwc = predict(net, images, s, num_generations=3, generator=torch.Generator().manual_seed(4), keep_generations=True,
                   channels_last=True)
    torch.testing.assert_close(nhwc.generations, plain.generations, atol=1e-4, rtol=0)


# --- x_0-predicting networks and clipping ------------------------------------------------------------
class _X0Oracle(torch.nn.Module):
    """A network that predicts x_0 and always outputs the true x_0 (or a scaled copy of it)."""

    def __init__(self, x0, scale=1.0):
        super().__init__()
        self.x0, self.scale, self.w = x0, scale, torch.nn.Parameter(torch.zeros(()))

    def encode_image(self, image):
        return image

    def denoise(self, x_t, t, cond):
        return self.scale * self.x0[: x_t.shape[0]] + 0 * self.w


@pytest.mark.parametrize("sampler,steps", [("ddpm", 0), ("ddpm", 10), ("ddim", 25), ("dpm-solver++", 10),
                                           ("sde-dpm-solver++", 10)])
def test_every_sampler_recovers_x0_from_an_x0_predicting_network(x0, sampler, steps):
    s = DDPMScheduler(100, prediction="sample")  # steps 0: all T
    pred = predict(_X0Oracle(x0), torch.zeros(3, 1, 8, 8), s, num_generations=1, sampler=sampler,
                   num_sampling_steps=steps, seeds=[0, 1, 2])
    torch.testing.assert_close(pred.prob, from_signed(x0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 10), ("ddim", 25), ("sde-dpm-solver++", 2)])
def test_every_sampler_recovers_x0_from_a_network_of_its_logits(x0, sampler, steps):
    # Logits of +-20 read as x_0 = 2 sigmoid(z) - 1 = +-(1 - 4e-9): the mask itself, unclamped.
    s = DDPMScheduler(100, prediction="logits")
    pred = predict(_X0Oracle(x0, scale=20.0), torch.zeros(3, 1, 8, 8), s, num_generations=1, sampler=sampler,
                   num_sampling_steps=steps, seeds=[0, 1, 2])
    torch.testing.assert_close(pred.prob, from_signed(x0), atol=1e-4, rtol=0)


class _InputRecorder(_X0Oracle):
    """The oracle, recording the mask input of each call."""

    def __init__(self, x0):
        super().__init__(x0)
        self.seen = []

    def denoise(self, x_t, t, cond):
        self.seen.append((x_t.clone(), t.clone()))
        return super().denoise(x_t, t, cond)


def test_the_network_reads_the_posterior_mean_of_x_t_when_the_scheduler_says_so(x0):
    # diffusion.mask_input="posterior_mean": every call reads tanh(sqrt(abar) x_t / (1 - abar)), so at the
    # first step (pure noise) the mask input is about 0, and the sampler still ends on the oracle's x_0
    # (the solver steps with x_t itself, not with what the network reads).
    s = DDPMScheduler(100, prediction="sample", mask_input="posterior_mean")
    net = _InputRecorder(x0)
    pred = predict(net, torch.zeros(3, 1, 8, 8), s, num_generations=1, sampler="sde-dpm-solver++",
                   num_sampling_steps=2, seeds=[0, 1, 2])
    torch.testing.assert_close(pred.prob, from_signed(x0), atol=1e-4, rtol=0)
    (first, t_first), (second, t_second) = net.seen
    assert int(t_first[0]) == 99 and first.abs().max() < 0.05
    assert int(t_second[0]) < 99 and second.abs().max() <= 1  # a tanh: inside [-1, 1] at every step
    plain = _InputRecorder(x0)
    predict(plain, torch.zeros(3, 1, 8, 8), DDPMScheduler(100, prediction="sample"), num_generations=1,
            sampler="sde-dpm-solver++", num_sampling_steps=2, seeds=[0, 1, 2])
    torch.testing.assert_close(first, s.network_input(plain.seen[0][0], t_first))  # the same noise, read through


@pytest.mark.parametrize("sampler,steps", [("ddpm", 0), ("ddpm", 10), ("ddim", 25), ("dpm-solver++", 10),
                                           ("sde-dpm-solver++", 2)])
def test_every_sampler_recovers_x0_at_an_input_scale(x0, sampler, steps):
    # The chain runs on 0.1 x_0 (diffusion.input_scale); each sampler must hand back x_0 itself.
    s = DDPMScheduler(100, prediction="sample", input_scale=0.1)
    pred = predict(_X0Oracle(x0), torch.zeros(3, 1, 8, 8), s, num_generations=1, sampler=sampler,
                   num_sampling_steps=steps, seeds=[0, 1, 2])
    torch.testing.assert_close(pred.prob, from_signed(x0), atol=1e-4, rtol=0)
    # ... also from a chain started part way at the truth (SDEdit refinement), whose start is noised
    # as add_noise noises: the first x is sqrt(abar) 0.1 x_0 + sqrt(1 - abar) z.
    out = SAMPLER_FUNCTIONS[sampler](_eps_oracle(s, x0), s, x0.shape,
                                     generator=[torch.Generator().manual_seed(i) for i in range(3)],
                                     num_steps=5, start=Start(x0, 40))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def _eps_oracle(scheduler, x0):
    """The noise a perfect x_0 network implies, through the scheduler's own conversion."""
    return lambda x_t, t: scheduler.to_epsilon(x0, t, x_t)


def test_to_epsilon_at_an_input_scale_by_hand(x0):
    """eps = (x_t - sqrt(abar) b x_0) / sqrt(1 - abar): the same x_0 estimate read with b = 1 and
    with b = 0.1 differs by sqrt(abar) 0.9 x_0 / sqrt(1 - abar)."""
    x_t, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([50, 50, 50])
    eps_small = DDPMScheduler(100, prediction="sample", input_scale=0.1).to_epsilon(x0, t, x_t)
    eps_paper = DDPMScheduler(100, prediction="sample").to_epsilon(x0, t, x_t)
    abar = _gather(DDPMScheduler(100).alphas_cumprod, t, x_t)
    torch.testing.assert_close(eps_small - eps_paper, abar.sqrt() * 0.9 * x0 / (1 - abar).sqrt())


def test_to_epsilon_inverts_add_noise_for_both_parameterisations(x0):
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 50, 99])
    for prediction in ("epsilon", "sample"):
        s = DDPMScheduler(100, prediction=prediction)
        x_t = s.add_noise(x0, noise, t)
        output = s.training_target(x0, noise)  # a perfect network's output
        torch.testing.assert_close(s.to_epsilon(output, t, x_t), noise, atol=1e-4, rtol=0)
        torch.testing.assert_close(s.to_epsilon(output, t, x_t, clip_x0=True), noise, atol=1e-4, rtol=0)
    # An epsilon network without clipping passes through untouched (the paper's sampler, bit for bit).
    s = DDPMScheduler(100)
    assert s.to_epsilon(noise, t, x0) is noise


def test_clip_x0_clamps_the_estimate_to_the_mask_range(x0):
    """x_0 estimates 3x too large: clipped, the sampler still lands on x_0; unclipped it overshoots."""
    s = DDPMScheduler(100, prediction="sample")
    images = torch.zeros(3, 1, 8, 8)
    clipped = predict(_X0Oracle(x0, scale=3.0), images, s, num_generations=1, sampler="ddim", num_sampling_steps=10,
                      seeds=[0, 1, 2], clip_x0=True)
    torch.testing.assert_close(clipped.prob, from_signed(x0), atol=1e-4, rtol=0)
    x_t, t = torch.randn(3, 1, 8, 8), torch.tensor([90, 90, 90])
    eps = s.to_epsilon(3 * x0, t, x_t, clip_x0=True)
    abar = _gather(s.alphas_cumprod, t, x_t)
    torch.testing.assert_close((x_t - (1 - abar).sqrt() * eps) / abar.sqrt(), x0, atol=1e-4, rtol=0)


# --- symmetries (test-time augmentation) --------------------------------------------------------
def test_the_eight_symmetries_are_distinct_and_invert_exactly():
    x = torch.arange(3 * 4 * 4).float().reshape(1, 3, 4, 4)
    images = [apply_symmetry(x, g) for g in range(8)]
    assert len({tuple(i.flatten().tolist()) for i in images}) == 8  # the whole dihedral group
    for g in range(8):
        assert torch.equal(invert_symmetry(images[g], g), x)
    # Hand-checked elements: 1 = horizontal flip, 2 = 180 degrees, 3 = vertical flip, 4 = 90 degrees.
    assert torch.equal(images[1], x.flip(-1)) and torch.equal(images[2], x.flip(-1).flip(-2))
    assert torch.equal(images[3], x.flip(-2)) and torch.equal(images[4], torch.rot90(x, 1, (-2, -1)))
    wide = torch.rand(1, 1, 3, 5)  # the first four keep any shape
    assert all(apply_symmetry(wide, g).shape == wide.shape for g in range(4))
    assert tuple(SYMMETRIES) == SYMMETRY_NAMES


class _PixelOracle(torch.nn.Module):
    """Predicts x_0 as the image's first channel, pixel by pixel: equivariant under every symmetry,
    so mapping each generation back must reproduce the un-augmented answer exactly."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def encode_image(self, image):
        return image[:, :1] * 2 - 1

    def denoise(self, x_t, t, cond):
        return cond + 0 * self.w


@pytest.mark.parametrize("symmetry", ["flips", "dihedral"])
def test_symmetric_generations_are_mapped_back_to_the_image(symmetry):
    s = DDPMScheduler(100, prediction="sample")
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0, :3, :5] = 1  # an asymmetric mask: a wrong inverse moves it
    images[1, 0, 5:, 6:] = 1
    plain = predict(_PixelOracle(), images, s, num_generations=8, sampler="ddim", num_sampling_steps=10,
                    seeds=range(16))
    sym = predict(_PixelOracle(), images, s, num_generations=8, sampler="ddim", num_sampling_steps=10, seeds=range(16),
                  symmetry=symmetry, keep_generations=True)
    torch.testing.assert_close(plain.prob, images[:, :1], atol=1e-4, rtol=0)
    torch.testing.assert_close(sym.generations, images[:, None, :1].expand(2, 8, 1, 8, 8), atol=1e-4, rtol=0)


def test_generation_k_is_sampled_on_the_image_under_transform_k_mod_n(net):
    s, image = DDPMScheduler(25), torch.rand(1, 3, 32, 32)
    seeds = generation_seeds(derive_seed(0, "img"), 10)
    sym = predict(net, image, s, num_generations=10, sampler="ddim", num_sampling_steps=5, seeds=seeds, max_batch=3,
                  symmetry="dihedral", keep_generations=True)
    for k in (0, 3, 6, 9):  # k = 9 wraps round to transform 1
        g = k % 8
        alone = predict(net, apply_symmetry(image, g), s, num_generations=1, sampler="ddim", num_sampling_steps=5,
                        seeds=[seeds[k]], keep_generations=True)
        # Batched with other rows against alone: float rounding, up to 1.9e-5 on a CPU without AVX-512.
        torch.testing.assert_close(sym.generations[:, k], invert_symmetry(alone.generations[:, 0], g),
                                   atol=1e-4, rtol=0)


def test_dihedral_symmetry_refuses_non_square_images_and_unknown_names(net):
    with pytest.raises(ValueError, match=r"needs square images; these are 32 x 48 \(use 'flips'\)"):
        predict(net, torch.rand(1, 3, 32, 48), DDPMScheduler(25), num_generations=2, symmetry="dihedral")
    with pytest.raises(ValueError, match="symmetry='rot' is not valid; choose one of none, flips, dihedral"):
        predict(net, torch.rand(1, 3, 32, 32), DDPMScheduler(25), num_generations=2, symmetry="rot")


class _SelfConditionedOracle(_X0Oracle):
    """An x_0-predicting 'network' with self-conditioning that records the estimates it is given."""

    config = type("Config", (), {"self_condition": True})()

    def __init__(self, x0):
        super().__init__(x0, scale=1.5)
        self.seen = []

    def denoise(self, x_t, t, cond, x0_prev=None):
        self.seen.append(None if x0_prev is None else x0_prev.clone())
        return super().denoise(x_t, t, cond)


def test_self_conditioning_feeds_each_step_the_previous_clamped_estimate(x0):
    s = DDPMScheduler(100, prediction="sample")
    net = _SelfConditionedOracle(x0)
    pred = predict(net, torch.zeros(3, 1, 8, 8), s, num_generations=1, sampler="sde-dpm-solver++",
                   num_sampling_steps=5, seeds=[0, 1, 2], clip_x0=True)
    assert len(net.seen) == 5 and net.seen[0] is None  # the first step has no estimate yet
    for seen in net.seen[1:]:  # then the previous step's x_0 estimate, 1.5 x0 clamped to [-1, 1]
        torch.testing.assert_close(seen, x0)
    torch.testing.assert_close(pred.prob, from_signed(x0), atol=1e-4, rtol=0)
