"""The DDPM noise schedule and its closed forms (Ho et al. 2020); no network, no loop.

Notation (paper symbol -> name here):
    beta_t          betas
    alpha_t         alphas = 1 - betas
    alpha_bar_t     alphas_cumprod = prod_{s<=t} alpha_s
    x_t             the noisy mask at step t; x_0 the clean mask in diffusion space
    eps_theta       eps_pred, the noise estimate every sampler steps with: the network's output
                    when it predicts the noise (diffusion.prediction="epsilon", the paper), else
                    derived from its x_0 output by `DDPMScheduler.to_epsilon` ("sample"; "logits":
                    x_0 = 2 sigmoid(output) - 1)
    x_hat_0         x0_pred
    sigma_t^2       the ancestral sampler's variance; SegDiff uses beta_t

Conventions, stated once: masks are {0, 1} at every public boundary and {-1, +1} only inside
diffusion (`to_signed` / `from_signed`). Steps t run 0..T-1 and t = 0 is the last denoising step
(x_{-1} is the clean sample). Tables are computed once in float64 and cast at use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import DiffusionConfig


def to_signed(mask: Tensor) -> Tensor:
    """{0, 1} mask -> {-1, +1} diffusion space."""
    return mask * 2 - 1


def from_signed(x: Tensor) -> Tensor:
    """Diffusion space -> [0, 1] (a sample's soft vote)."""
    return ((x + 1) / 2).clamp(0, 1)


def linear_betas(num_steps: int) -> Tensor:
    """Ho et al.'s linear schedule scaled to T steps: 1e-4*(1000/T) .. 0.02*(1000/T)."""
    scale = 1000 / num_steps
    return torch.linspace(1e-4 * scale, 0.02 * scale, num_steps, dtype=torch.float64)


def _gather(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """table[t] shaped to broadcast over `like` (B, 1, H, W), in its dtype and device.

    The float64 table is cast where it lives (the CPU) before it moves: Apple's MPS has no float64.
    """
    out = table.to(like.dtype).to(like.device)[t.to(like.device).long()]
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def _per_row(values: Tensor | float, like: Tensor) -> Tensor:
    """Float64 `values` (one per row, or one for all) cast, then moved, to broadcast over `like`."""
    values = torch.as_tensor(values, dtype=torch.float64)
    return values.to(like.dtype).to(like.device).reshape(-1, *([1] * (like.ndim - 1)))


def ancestral_step(x_t: Tensor, eps_pred: Tensor, beta: Tensor | float, alpha_bar: Tensor | float,
                   noise: Tensor, last: bool | Tensor) -> Tensor:
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, sigma_t^2 = beta_t.

    Ho et al. 2020, eq. 11 and Alg. 2 (SegDiff's sampler), with alpha_t = 1 - beta_t. `beta` and
    `alpha_bar` are float64 values at this step, one per row of `x_t` or one for all: the trained
    tables at t, or a respaced chain's beta'_i with alpha_bar at the kept step. Tensors are cast
    to `x_t`'s dtype before any arithmetic; Python floats (one step shared by all rows, as the
    respaced chain has) keep the coefficients in float64 until they meet `x_t`. `last` (a bool, or
    one per row) marks the final step, which adds no noise; `noise` (z, shaped as `x_t`) is then
    unused.
    """
    if isinstance(beta, float) and isinstance(alpha_bar, float):
        mean = (x_t - beta / (1 - alpha_bar) ** 0.5 * eps_pred) / (1 - beta) ** 0.5
        return mean if last else mean + beta ** 0.5 * noise
    beta64 = torch.as_tensor(beta, dtype=torch.float64)
    beta_x, abar_x = _per_row(beta64, x_t), _per_row(alpha_bar, x_t)
    alpha_x = _per_row(1 - beta64, x_t)  # 1 - beta in float64, as the scheduler's `alphas` table
    # 1. mean (eq. 11)
    mean = (x_t - beta_x / (1 - abar_x).sqrt() * eps_pred) / alpha_x.sqrt()
    # 2. x_{t-1} = mean + sigma_t z, sigma_t = sqrt(beta_t); no noise at the last step
    if isinstance(last, bool):
        return mean if last else mean + beta_x.sqrt() * noise
    nonzero = (~torch.as_tensor(last, dtype=torch.bool)).to(x_t.device).to(x_t.dtype)
    return mean + nonzero.reshape(-1, *([1] * (x_t.ndim - 1))) * beta_x.sqrt() * noise


class DDPMScheduler:
    """Owns betas and the closed forms; immutable after construction.

    >>> s = DDPMScheduler(100)
    >>> x_t = s.add_noise(x0, noise, t)            # q(x_t | x_0), eq. 4
    >>> x_prev = s.step(output, t, x_t, generator=g)   # one ancestral step, eq. 11
    """

    def __init__(self, num_steps: int = 100, beta_schedule: str = "linear", prediction: str = "epsilon",
                 input_scale: float = 1.0, mask_input: str = "x_t"):
        DiffusionConfig(num_steps=num_steps, beta_schedule=beta_schedule, prediction=prediction,
                        input_scale=input_scale, mask_input=mask_input)  # validates
        self.num_steps = num_steps
        self.prediction = prediction
        self.mask_input = mask_input
        # The chain diffuses the signal b x_0 (b = input_scale; 1: the paper). Every method takes and
        # returns x_0 in the mask's units ([-1, 1]); x_t and the samplers' state are the signal's.
        self.input_scale = float(input_scale)
        self.betas = linear_betas(num_steps)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 * x_0 + coef_xt * x_t, posterior_variance), eq. 6-7.
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_mean_coef_x0 = self.betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_mean_coef_xt = (1 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> "DDPMScheduler":
        return cls(config.num_steps, config.beta_schedule, config.prediction, config.input_scale, config.mask_input)

    def network_input(self, x_t: Tensor, t: Tensor) -> Tensor:
        """What the network reads for x_t (the signal's units): x_t itself (mask_input "x_t", the
        paper), or ("posterior_mean") E[x_0 | x_t] in the mask's units for x_0 = +-1 equally likely
        in each pixel and channel, independently: with m = sqrt(abar_t) b and s^2 = 1 - abar_t,
        p(x_t | x_0) = N(m x_0, s^2), so the log-odds of x_0 = 1 are 2 m x_t / s^2 and the mean is
        tanh(m x_t / s^2). Every place the network is called on x_t goes through this."""
        if self.mask_input == "x_t":
            return x_t
        abar = _gather(self.alphas_cumprod, t, x_t)
        return torch.tanh(abar.sqrt() * self.input_scale * x_t / (1 - abar))

    def timesteps(self, num_inference_steps: int | None = None, start: int | None = None) -> Tensor:
        """Descending steps to visit: all T, or `num_inference_steps` evenly spaced (respacing).

        `start` (default T - 1) is the first step: a chain started part way, from a noised
        estimate (`sampling.Start`, SDEdit refinement), visits `num_inference_steps` of the
        steps start..0 (all start + 1 of them by default)."""
        first = self.num_steps - 1 if start is None else int(start)
        if not 0 <= first < self.num_steps:
            raise ValueError(f"start={start} must be a step in [0, {self.num_steps - 1}]")
        n = num_inference_steps or first + 1
        if not 1 <= n <= first + 1:
            raise ValueError(f"num_inference_steps={n} must be in [1, {first + 1}]")
        return torch.linspace(first, 0, n, dtype=torch.float64).round().long()

    def sample_timesteps(self, n: int, *, power: float = 1.0, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> Tensor:
        """n training steps in [0, T): uniform for power 1 (the paper), else P(t) ~ t^(power - 1).

        t = floor(T u^(1/power)) with u uniform, so power 2 gives the high-noise half (t >= T/2)
        three quarters of the draws. Any such weighting keeps the loss's minimiser for each t.
        """
        if power == 1:
            return torch.randint(0, self.num_steps, (n,), generator=generator, device=device)
        u = torch.rand(n, generator=generator, device=device)  # float32: MPS has no float64
        return (self.num_steps * u ** (1 / power)).long().clamp_(max=self.num_steps - 1)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Sample q(x_t | x_0) = N(sqrt(abar_t) b x_0, (1 - abar_t) I) (Ho et al. eq. 4; b =
        `input_scale`, 1 in the paper)."""
        abar = _gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * self.signal(x0) + (1 - abar).sqrt() * noise

    def predict_x0(self, eps_pred: Tensor, t: Tensor, x_t: Tensor) -> Tensor:
        """x_hat_0 = (x_t - sqrt(1 - abar_t) eps) / (sqrt(abar_t) b), eq. 4 solved for x_0."""
        abar = _gather(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - abar).sqrt() * eps_pred) / (abar.sqrt() * self.input_scale)

    def signal(self, x0: Tensor) -> Tensor:
        """x_0 (the mask's units) as the signal the chain diffuses: b x_0."""
        return self.input_scale * x0

    def from_signal(self, x: Tensor) -> Tensor:
        """A sampler's final state (the signal b x_0) back in the mask's units."""
        return x / self.input_scale

    def training_target(self, x0: Tensor, noise: Tensor) -> Tensor:
        """What the network's output is fitted to: the noise (the paper) or x_0 itself (for "logits",
        x_0 = 2 sigmoid(output) - 1 against the mask by cross-entropy, `models.training_loss`)."""
        return noise if self.prediction == "epsilon" else x0

    def to_x0(self, output: Tensor, t: Tensor, x_t: Tensor, *, clip_x0: bool = False) -> Tensor:
        """The network's output as its x_0 estimate, clamped to [-1, 1] with `clip_x0`."""
        if self.prediction == "sample":
            x0 = output
        elif self.prediction == "logits":
            x0 = torch.tanh(output / 2)  # = 2 sigmoid(output) - 1, inside (-1, 1) already
        else:
            x0 = self.predict_x0(output, t, x_t)
        return x0.clamp(-1.0, 1.0) if clip_x0 else x0

    def to_epsilon(self, output: Tensor, t: Tensor, x_t: Tensor, *, clip_x0: bool = False) -> Tensor:
        """The network's output as the noise estimate every sampler steps with.

        For an x_0-predicting network, eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t). With
        `clip_x0` the x_0 estimate is clamped to the masks' range [-1, 1] first (the "clip
        denoised" of improved-diffusion; the paper samples without it), so every sampler steps
        towards a valid mask. An epsilon network without clipping passes through unchanged.
        """
        if self.prediction == "epsilon" and not clip_x0:
            return output
        x0 = self.to_x0(output, t, x_t, clip_x0=clip_x0)
        abar = _gather(self.alphas_cumprod, t, x_t)
        return (x_t - abar.sqrt() * self.signal(x0)) / (1 - abar).sqrt()

    def posterior_mean(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Mean of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7), x_0 in the mask's units."""
        return (_gather(self.posterior_mean_coef_x0, t, x_t) * self.signal(x0)
                + _gather(self.posterior_mean_coef_xt, t, x_t) * x_t)

    def step(self, model_output: Tensor, t: int | Tensor, x_t: Tensor, *, generator: torch.Generator | None = None,
             noise: Tensor | None = None, clip_x0: bool = False) -> Tensor:
        """One ancestral step x_t -> x_{t-1} with sigma_t^2 = beta_t (Ho et al. Alg. 2, SegDiff).

        `model_output` is what the network returns, read as this scheduler's `prediction` says: the
        noise (epsilon) or x_0 (sample); it is converted to the noise estimate by `to_epsilon`, with
        the x_0 estimate clamped to [-1, 1] when `clip_x0` (off by default, as in the paper). The
        step itself is `ancestral_step`. `noise` may be passed instead of a generator to replay a
        fixed draw.
        """
        t = torch.as_tensor(t).reshape(-1).expand(x_t.shape[0])
        eps_pred = self.to_epsilon(model_output, t, x_t, clip_x0=clip_x0)
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        t_cpu = t.cpu().long()  # the float64 tables stay on the CPU (MPS has no float64)
        return ancestral_step(x_t, eps_pred, self.betas[t_cpu], self.alphas_cumprod[t_cpu], noise, t_cpu == 0)
