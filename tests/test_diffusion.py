"""The schedule and its closed forms, checked against formulas computed here in numpy."""

import numpy as np
import pytest
import torch

from segdiff.config import ConfigError
from segdiff.diffusion import DDPMScheduler, _gather, ancestral_step, from_signed, to_signed


def numpy_tables(T):
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    abar = np.cumprod(1 - betas)
    return betas, abar


def test_linear_schedule_for_t100_runs_from_0001_to_02():
    s = DDPMScheduler(100)
    assert s.betas[0].item() == pytest.approx(0.001)
    assert s.betas[-1].item() == pytest.approx(0.2)
    betas, abar = numpy_tables(100)
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), abar, rtol=1e-12)


@pytest.mark.parametrize("T", [25, 1000])
def test_schedule_scales_with_number_of_steps(T):
    s = DDPMScheduler(T)
    assert s.betas[0].item() == pytest.approx(1e-4 * 1000 / T)
    assert s.betas[-1].item() == pytest.approx(0.02 * 1000 / T)


@pytest.mark.parametrize("b", [1.0, 0.1])
def test_add_noise_is_q_sample(b):
    # input_scale b: the chain diffuses b x_0 (1: the paper)
    s = DDPMScheduler(100, input_scale=b)
    betas, abar = numpy_tables(100)
    g = torch.Generator().manual_seed(0)
    x0 = to_signed(torch.randint(0, 2, (4, 1, 8, 8), generator=g).double())
    noise = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 99])
    expected = np.sqrt(abar[t.numpy()])[:, None, None, None] * b * x0.numpy() + \
        np.sqrt(1 - abar[t.numpy()])[:, None, None, None] * noise.numpy()
    x_t = s.add_noise(x0, noise, t)
    np.testing.assert_allclose(x_t.numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(s.predict_x0(noise, t, x_t), x0)  # x_0 comes back in the mask's units


def test_input_scale_must_be_positive():
    for b in (0.0, -0.5, float("nan")):
        with pytest.raises(ConfigError, match="input_scale=.* must be a positive number"):
            DDPMScheduler(100, input_scale=b)


@pytest.mark.parametrize("t,scale", [(0, 1.0), (20, 1.0), (60, 1.0), (99, 1.0), (40, 0.1)])
def test_posterior_mean_input_is_bayes_rule_for_a_plus_minus_one_mask(t, scale):
    # x_0 = +-1 with probability 1/2 each; x_t | x_0 ~ N(sqrt(abar_t) b x_0, 1 - abar_t): the posterior
    # mean is P(+1 | x_t) - P(-1 | x_t), by Bayes' rule from the two densities in numpy (in logs: at t = 0
    # both densities underflow).
    s = DDPMScheduler(100, input_scale=scale, mask_input="posterior_mean")
    _, abar = numpy_tables(100)
    x_t = np.linspace(-3, 3, 61)
    m, var = np.sqrt(abar[t]) * scale, 1 - abar[t]
    log_plus, log_minus = -(x_t - m) ** 2 / (2 * var), -(x_t + m) ** 2 / (2 * var)  # log densities, less a constant
    evidence = np.logaddexp(log_plus, log_minus)
    expected = np.exp(log_plus - evidence) - np.exp(log_minus - evidence)  # P(+1 | x_t) - P(-1 | x_t)
    got = s.network_input(torch.tensor(x_t, dtype=torch.float64).reshape(61, 1, 1, 1), torch.full((61,), t))
    np.testing.assert_allclose(got.flatten().numpy(), expected, atol=1e-12)


def test_network_input_is_x_t_itself_by_default_and_near_zero_at_the_last_step_with_posterior_mean():
    x_t = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([99, 99])
    assert DDPMScheduler(100).network_input(x_t, t) is x_t  # the paper: the network reads x_t
    assert DDPMScheduler(100, mask_input="posterior_mean").network_input(x_t, t).abs().max() < 0.05
    near_zero = DDPMScheduler(100, mask_input="posterior_mean").network_input(x_t, torch.tensor([0, 0]))
    torch.testing.assert_close(near_zero, x_t.sign(), atol=0.02, rtol=0)  # t = 0: the sign of x_t, the mask
    with pytest.raises(ConfigError, match="mask_input"):
        DDPMScheduler(100, mask_input="x0")


@pytest.mark.parametrize("t,scale", [(1, 1.0), (17, 1.0), (99, 1.0), (17, 0.25)])
def test_posterior_matches_bayes_rule(t, scale):
    # q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1-abar_{t-1}):
    # precision = a_t/b_t + 1/(1-abar_{t-1}); mean = var (sqrt(a_t) x_t/b_t + sqrt(abar_{t-1}) x_0/(1-abar_{t-1})).
    # With input_scale, the chain's x_0 is scale * the mask's.
    s = DDPMScheduler(100, input_scale=scale)
    betas, abar = numpy_tables(100)
    a_t, b_t, abar_prev = 1 - betas[t], betas[t], abar[t - 1]
    var = 1 / (a_t / b_t + 1 / (1 - abar_prev))
    x0, x_t = 0.7, -0.3
    mean = var * (np.sqrt(a_t) * x_t / b_t + np.sqrt(abar_prev) * scale * x0 / (1 - abar_prev))
    assert s.posterior_variance[t].item() == pytest.approx(var, rel=1e-10)
    got = s.posterior_mean(torch.tensor([[x0]], dtype=torch.float64), torch.tensor([[x_t]], dtype=torch.float64),
                           torch.tensor([t]))
    assert got.item() == pytest.approx(mean, rel=1e-10)


@pytest.mark.parametrize("t", [1, 30, 99])
def test_step_mean_is_posterior_mean_at_predicted_x0_and_variance_is_beta(t):
    s = DDPMScheduler(100)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    tt = torch.tensor([t, t])
    mean = s.posterior_mean(s.predict_x0(eps, tt, x_t), x_t, tt)
    torch.testing.assert_close(s.step(eps, t, x_t, noise=torch.zeros_like(x_t)), mean)
    z = torch.ones_like(x_t)
    torch.testing.assert_close(s.step(eps, t, x_t, noise=z) - mean, torch.full_like(x_t, s.betas[t].item() ** 0.5))


def test_last_step_adds_no_noise():
    s = DDPMScheduler(100)
    x_t, eps = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    torch.testing.assert_close(s.step(eps, 0, x_t, noise=torch.randn(1, 1, 4, 4)),
                               s.step(eps, 0, x_t, noise=torch.zeros(1, 1, 4, 4)))


def test_mask_maps_to_signed_and_back():
    m = torch.tensor([0.0, 1.0])
    assert to_signed(m).tolist() == [-1.0, 1.0]
    assert from_signed(to_signed(m)).tolist() == [0.0, 1.0]


def test_timesteps_are_descending_and_respaced_without_mutation():
    s = DDPMScheduler(100)
    assert s.timesteps().tolist() == list(range(99, -1, -1))
    ten = s.timesteps(10)
    assert ten[0] == 99 and ten[-1] == 0 and len(ten) == 10 and (ten[:-1] > ten[1:]).all()
    assert len(s.timesteps()) == 100  # asking for 10 changed nothing
    with pytest.raises(ValueError, match="num_inference_steps=101"):
        s.timesteps(101)


def test_too_few_steps_for_the_linear_schedule_is_refused():
    with pytest.raises(ValueError, match="num_steps=10 must be in \\[21, 1000\\]"):
        DDPMScheduler(10)


def test_training_target_is_the_noise_or_x0_as_configured():
    x0, noise = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert DDPMScheduler(100).training_target(x0, noise) is noise
    assert DDPMScheduler(100, prediction="sample").training_target(x0, noise) is x0
    with pytest.raises(ValueError, match="prediction='v' is not valid"):
        DDPMScheduler(100, prediction="v")


def test_uniform_timesteps_are_the_papers_randint_draws():
    # power 1 must keep every earlier run's draws (and so bit-for-bit resumes) unchanged.
    s = DDPMScheduler(100)
    got = s.sample_timesteps(64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, torch.randint(0, 100, (64,), generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("power", [2.0, 0.5])
def test_biased_timesteps_follow_their_distribution(power):
    # floor(T u^(1/p)) = k  <=>  u in [(k/T)^p, ((k+1)/T)^p): P(k) = ((k+1)/T)^p - (k/T)^p.
    T, n = 25, 400_000
    t = DDPMScheduler(T).sample_timesteps(n, power=power, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) <= T - 1
    k = np.arange(T)
    expected = ((k + 1) / T) ** power - (k / T) ** power
    observed = np.bincount(t.numpy(), minlength=T) / n
    np.testing.assert_allclose(observed, expected, atol=0.003)


def test_timestep_power_must_be_positive():
    from segdiff.config import TrainConfig

    with pytest.raises(ValueError, match="timestep_power=0"):
        TrainConfig(timestep_power=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_returns_the_float64_table_cast_to_the_dtype_of_like(dtype):
    s = DDPMScheduler(100)
    t = torch.tensor([0, 42, 99])
    got = _gather(s.alphas_cumprod, t, torch.zeros(3, 1, 2, 2, dtype=dtype))
    assert got.dtype == dtype and got.shape == (3, 1, 1, 1)
    # abar_0 = 1 - beta_0 = 0.999; the others as numpy computes them, each rounded once to `dtype`.
    _, abar = numpy_tables(100)
    expected = torch.tensor(abar[[0, 42, 99]], dtype=torch.float64).to(dtype)
    assert torch.equal(got.flatten(), expected)
    assert got[0].item() == torch.tensor(0.999, dtype=dtype).item()


def test_gather_casts_on_the_cpu_before_moving_the_table():
    # Apple's MPS has no float64: the table must reach the device already cast. The meta device
    # stands in for it here: no float64 tensor may appear on it.
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor):
                    seen.append((o.device.type, o.dtype))
            return out

    s = DDPMScheduler(100)
    like = torch.empty(2, 1, 4, 4, device="meta")
    with Record():
        out = _gather(s.betas, torch.tensor([3, 7], device="meta"), like)
    assert out.device.type == "meta" and out.dtype == torch.float32
    assert ("meta", torch.float64) not in seen and ("meta", torch.float32) in seen


@pytest.mark.parametrize("t", [1, 30, 99])
def test_step_of_an_x0_predicting_scheduler_given_the_true_x0_is_the_posterior_mean_eq7(t):
    # A network predicting x_0 ("sample") that returns the true x_0: step must give
    # mu~_t(x_t, x_0) = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x_0
    #                 + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t   (Ho et al. eq. 7)
    # plus sigma_t z with sigma_t^2 = beta_t (SegDiff's choice).
    s = DDPMScheduler(100, prediction="sample")
    betas, abar = numpy_tables(100)
    g = torch.Generator().manual_seed(2)
    x0 = to_signed(torch.randint(0, 2, (2, 1, 4, 4), generator=g).double())
    x_t = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    b, a_bar, a_bar_prev = betas[t], abar[t], abar[t - 1]
    mean = (b * np.sqrt(a_bar_prev) / (1 - a_bar) * x0.numpy()
            + (1 - a_bar_prev) * np.sqrt(1 - b) / (1 - a_bar) * x_t.numpy())
    np.testing.assert_allclose(s.step(x0, t, x_t, noise=z).numpy(), mean + np.sqrt(b) * z.numpy(), rtol=1e-10, atol=1e-12)
    # An epsilon scheduler given the same tensor reads it as noise: a different step.
    assert not torch.allclose(DDPMScheduler(100).step(x0, t, x_t, noise=z), s.step(x0, t, x_t, noise=z))


def test_step_with_clip_x0_clamps_the_x0_estimate_first():
    # x_0 output 3.0 clamped to 1.0: the step is then the posterior mean at x_0 = 1 (t = 10, no noise).
    s = DDPMScheduler(100, prediction="sample")
    x_t = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    tt = torch.tensor([10])
    got = s.step(torch.full_like(x_t, 3.0), 10, x_t, noise=torch.zeros_like(x_t), clip_x0=True)
    torch.testing.assert_close(got, s.posterior_mean(torch.ones_like(x_t), x_t, tt))


def test_ancestral_step_adds_noise_only_to_rows_not_at_their_last_step():
    # beta = 0.19, alpha_bar = 0.5, x_t = 1, eps = 0, z = 1: mean = 1 / sqrt(0.81) = 1/0.9, sigma = sqrt(0.19).
    x_t, eps, z = torch.ones(2, 1, 1, 1, dtype=torch.float64), torch.zeros(2, 1, 1, 1, dtype=torch.float64), \
        torch.ones(2, 1, 1, 1, dtype=torch.float64)
    beta, abar = torch.tensor([0.19, 0.19], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    got = ancestral_step(x_t, eps, beta, abar, z, last=torch.tensor([False, True]))
    assert got.flatten().tolist() == pytest.approx([1 / 0.9 + 0.19 ** 0.5, 1 / 0.9], rel=1e-12)
    assert ancestral_step(x_t, eps, 0.19, 0.5, z, last=True).flatten().tolist() == pytest.approx([1 / 0.9] * 2)
    # eps = 1: mean = (1 - 0.19 / sqrt(0.5)) / 0.9
    got = ancestral_step(x_t, torch.ones_like(x_t), 0.19, 0.5, z, last=True)
    assert got.flatten().tolist() == pytest.approx([(1 - 0.19 / 0.5 ** 0.5) / 0.9] * 2, rel=1e-12)
