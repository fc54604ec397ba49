"""Samplers and the K-generation ensemble.

A sampler is a function of a `denoise(x_t, t) -> eps_pred` callable, a scheduler and a shape
(k-diffusion's design): the network is hidden behind the callable, so any sampler runs any
model. Every sampler has the signature
``sample_X(denoise, scheduler, shape, *, generator, device, num_steps) -> x_0`` (signed), where
`num_steps` respaces the trained T steps (None: all of them):

- ``ddpm``: ancestral DDPM, sigma_t^2 = beta_t (the paper's sampler). With fewer steps the chain
  is respaced as in improved-diffusion (Nichol & Dhariwal 2021, sec. 4): the betas are recomputed
  from alpha_bar at the kept steps, so the shorter chain has the same marginals there.
- ``ddim``: Song et al. 2021, eq. 12; ``eta=0`` is deterministic given x_T.
- ``dpm-solver++``: DPM-Solver++(2M) (Lu et al. 2022), a second-order multistep solver of the
  probability-flow ODE, taken from diffusers' `DPMSolverMultistepScheduler` with our betas given
  exactly (`trained_betas=`); it is deterministic given x_T.
- ``sde-dpm-solver++``: SDE-DPM-Solver++(2M), the same solver for the reverse SDE: it draws fresh
  noise at every step, like DDPM. Its first-order version is DDIM with eta = 1.

Deterministic samplers (``ddim`` with eta = 0, ``dpm-solver++``) follow the network's errors
without the correction that fresh noise gives; on a briefly trained model they lose much accuracy
(docs/performance.md, Sampling), so the fast sampler to use is ``sde-dpm-solver++`` (10-20 steps).

Steps are the trained integer steps 0..T-1 (`DDPMScheduler.timesteps(n)`, evenly spaced from T-1
down to 0); the network always sees the step it was trained on.

`predict` is the user-facing call: it encodes each image once (F(I) is never recomputed per
step), runs the K generations of every image as batches of at most `max_batch` rows (memory
stays bounded whatever K is), and averages them into a probability map, a mask and a per-pixel
uncertainty (Amit et al. sec. 3.3). With ``symmetry`` the K generations are spread over flipped
(and rotated) copies of the image, each mapped back before averaging: test-time augmentation at
no extra cost, since K samples are drawn either way. Every generation draws all its noise from
its own generator (one per row), so a result depends on its seed alone: not on `max_batch`, nor
on which images share a call, nor on which process of a sharded run handles it. A
self-conditioned network (`model.self_condition`) is given, at each step, its x_0 estimate of the
step before.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from .config import SAMPLER_NAMES, SYMMETRY_NAMES, SampleConfig
from .diffusion import DDPMScheduler, _gather, ancestral_step
from .encoding import decode, entropy, mutual_information
from .seeding import derive_seed

Denoise = Callable[[Tensor, Tensor], Tensor]


Generator = torch.Generator | list[torch.Generator] | None


def _randn(shape: tuple[int, ...], generator: Generator, like_device: torch.device) -> Tensor:
    """Normal draws on `generator`'s device, moved to where the sample lives.

    A list holds one generator per row (diffusers' convention): each row's noise is then its own,
    whatever rows it is batched with, so chunking the K generations never changes the result.
    """
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([_randn((1, *shape[1:]), g, like_device) for g in generator])
    device = generator.device if generator is not None else like_device
    return torch.randn(shape, generator=generator, device=device).to(like_device)


def generation_seeds(image_seed: int, num_generations: int, index: int = 0) -> list[int]:
    """The seeds of the K generations of one image (or of its tile `index`).

    They depend on (image_seed, index, k) alone (`seeding.derive_seed`), so a sharded run draws
    for each image exactly the noise a single-process run draws."""
    return [derive_seed(image_seed, index, k) for k in range(num_generations)]


# --- samplers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """Where a chain starts part way (SDEdit, Meng et al. 2022): the signed estimate `x0` of the
    mask, rows like the sample's, noised to step `step` with the chain's first noise draw by
    `DDPMScheduler.add_noise` (x_step = sqrt(abar_step) b x0 + sqrt(1 - abar_step) z, b its
    input_scale); the sampler then visits its `num_steps` steps from `step` down to 0
    (`DDPMScheduler.timesteps(n, start=step)`)."""

    x0: Tensor
    step: int


def _first_state(scheduler: DDPMScheduler, shape: tuple[int, ...], generator: Generator, device: torch.device,
                 num_steps: int | None, start: Start | None) -> tuple[Tensor, Tensor]:
    """The chain's first x and the steps it visits: pure noise at T - 1, or `start` noised."""
    noise = _randn(shape, generator, device)
    if start is None:
        return noise, scheduler.timesteps(num_steps)
    if tuple(start.x0.shape) != tuple(shape):
        raise ValueError(f"start.x0 has shape {tuple(start.x0.shape)}, the sample {tuple(shape)}")
    step = torch.full((shape[0],), int(start.step), dtype=torch.long)
    x = scheduler.add_noise(start.x0.to(device=device, dtype=noise.dtype), noise, step)
    return x, scheduler.timesteps(num_steps, start=start.step)

def respaced_betas(scheduler: DDPMScheduler, steps: Tensor) -> Tensor:
    """Betas of the chain that visits only `steps` (descending), as improved-diffusion's respace.

    beta'_i = 1 - alpha_bar(s_i) / alpha_bar(s_{i+1}) with alpha_bar after the last step = 1, so
    the respaced chain's alpha_bar' equals alpha_bar at every kept step (float64).
    With all T steps these are the trained betas.
    """
    abar = scheduler.alphas_cumprod[steps]  # (n,) at s_0 > s_1 > ... > s_{n-1}
    abar_next = torch.cat([abar[1:], torch.ones(1, dtype=abar.dtype)])
    return 1 - abar / abar_next


@torch.no_grad()
def sample_ddpm(denoise: Denoise, scheduler: DDPMScheduler, shape: tuple[int, ...], *,
                generator: Generator = None, device: torch.device | str = "cpu",
                num_steps: int | None = None, start: Start | None = None) -> Tensor:
    """Ancestral DDPM, sigma_t^2 = beta_t (the paper's sampler). Returns x_0 (signed).

    All T steps by default; `num_steps` < T runs the respaced chain (`respaced_betas`). One noise
    draw per step and row, the last one unused, in both cases. `start`: begin part way (`Start`).
    """
    device = torch.device(device)
    x, steps = _first_state(scheduler, shape, generator, device, num_steps, start)
    # All T steps: the trained betas (tables cast to x's dtype). Fewer: the respaced chain's
    # beta'_i (equal to them at n = T), as float64 scalars.
    full = start is None and num_steps in (None, scheduler.num_steps)
    betas = scheduler.betas[steps] if full else respaced_betas(scheduler, steps)
    for i, t in enumerate(steps):
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        eps = denoise(x, t_batch)  # `denoise` returns the noise estimate already: no `to_epsilon` here
        noise = _randn(shape, generator, device)
        beta, abar = (betas[i], scheduler.alphas_cumprod[t]) if full else (float(betas[i]),
                                                                           float(scheduler.alphas_cumprod[t]))
        # Ho et al. eq. 11; no noise after the last step.
        x = ancestral_step(x, eps, beta, abar, noise, last=i + 1 == len(steps))
    return scheduler.from_signal(x)


@torch.no_grad()
def sample_ddim(denoise: Denoise, scheduler: DDPMScheduler, shape: tuple[int, ...], *,
                generator: Generator = None, device: torch.device | str = "cpu",
                num_steps: int | None = None, eta: float = 0.0, start: Start | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) on `num_steps` respaced steps; eta=0 is deterministic given x_T.
    `start`: begin part way (`Start`)."""
    device = torch.device(device)
    x, steps = _first_state(scheduler, shape, generator, device, num_steps, start)
    abar = scheduler.alphas_cumprod
    for i, t in enumerate(steps):
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        eps = denoise(x, t_batch)
        x0 = scheduler.predict_x0(eps, t_batch, x)
        abar_t = _gather(abar, t_batch, x)
        if i + 1 < len(steps):
            abar_prev = _gather(abar, steps[i + 1].expand(shape[0]), x)
        else:
            abar_prev = torch.ones_like(abar_t)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        x = abar_prev.sqrt() * scheduler.signal(x0) + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(steps):
            x = x + sigma * _randn(shape, generator, device)
    return scheduler.from_signal(x)


def dpm_solver_scheduler(scheduler: DDPMScheduler, num_steps: int | None = None, *, order: int = 2,
                         stochastic: bool = False, steps: Tensor | None = None):
    """diffusers' DPM-Solver++ scheduler on our exact betas, set to visit `scheduler.timesteps(n)`.

    stochastic: the SDE variant (``sde-dpmsolver++``), else the ODE one. A fresh object per
    sampling run: diffusers' schedulers keep per-run state (the previous model outputs, the step
    index), which is why ours stays immutable and builds this one. The last step goes to
    sigma = 0 (x_0 itself) and is first order, as diffusers does for short schedules. `steps`
    (descending) replaces `scheduler.timesteps(num_steps)`, e.g. a chain started part way.
    """
    # diffusers is imported here, not at the module's top: it takes seconds to import, and only
    # these two samplers need it.
    from diffusers import DPMSolverMultistepScheduler

    solver = DPMSolverMultistepScheduler(
        num_train_timesteps=scheduler.num_steps,
        trained_betas=scheduler.betas.numpy(),  # our linear 0.001..0.2 (T=100), exactly
        solver_order=order, algorithm_type="sde-dpmsolver++" if stochastic else "dpmsolver++",
        prediction_type="epsilon", thresholding=False, lower_order_final=True, final_sigmas_type="zero",
    )
    with warnings.catch_warnings():  # diffusers calls np.array on a torch tensor; numpy 2 complains, harmlessly
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        solver.set_timesteps(timesteps=(scheduler.timesteps(num_steps) if steps is None else steps).tolist())
    return solver


@torch.no_grad()
def sample_dpm_solver(denoise: Denoise, scheduler: DDPMScheduler, shape: tuple[int, ...], *,
                      generator: Generator = None, device: torch.device | str = "cpu",
                      num_steps: int | None = None, order: int = 2, stochastic: bool = False,
                      start: Start | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) on `num_steps` respaced steps; one network call per step.

    ODE (deterministic given x_T) by default; `stochastic=True` is SDE-DPM-Solver++(2M), whose
    per-step noise comes from `generator` (a list: one generator per row, diffusers' convention
    too, so chunking never changes the result). `start`: begin part way (`Start`).
    """
    device = torch.device(device)
    x, steps = _first_state(scheduler, shape, generator, device, num_steps, start)
    solver = dpm_solver_scheduler(scheduler, order=order, stochastic=stochastic, steps=steps)
    for t in solver.timesteps:
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        x = solver.step(denoise(x, t_batch), int(t), x, generator=generator, return_dict=False)[0]
    return scheduler.from_signal(x)


def sample_sde_dpm_solver(denoise: Denoise, scheduler: DDPMScheduler, shape: tuple[int, ...], *,
                          generator: Generator = None, device: torch.device | str = "cpu",
                          num_steps: int | None = None, start: Start | None = None) -> Tensor:
    """SDE-DPM-Solver++(2M) on `num_steps` respaced steps: fresh noise every step, like DDPM."""
    return sample_dpm_solver(denoise, scheduler, shape, generator=generator, device=device, num_steps=num_steps,
                             stochastic=True, start=start)


SAMPLER_FUNCTIONS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpm-solver++": sample_dpm_solver,
                     "sde-dpm-solver++": sample_sde_dpm_solver}
SAMPLERS = SAMPLER_NAMES  # the config's list of names is the one source
assert tuple(SAMPLER_FUNCTIONS) == SAMPLERS, "every name in config.SAMPLER_NAMES has a function here"


# --- symmetries (test-time augmentation) --------------------------------------------------------
# Element g of the dihedral group of the square: rotate by 90 * _ROTATIONS[g] degrees after a
# horizontal flip when _FLIPS[g]. The first four (identity, h-flip, 180, v-flip) keep any H x W
# shape; the last four rotate by 90 degrees and need square images.
_ROTATIONS = (0, 0, 2, 2, 1, 1, 3, 3)
_FLIPS = (False, True, False, True, False, True, False, True)
SYMMETRIES = {"none": 1, "flips": 4, "dihedral": 8}  # name -> how many group elements are used
assert tuple(SYMMETRIES) == SYMMETRY_NAMES, "every name in config.SYMMETRY_NAMES has an order here"


def symmetry_order(symmetry: str, height: int, width: int) -> int:
    """How many transforms `symmetry` cycles through; checks the name and, for rotations, the shape."""
    if symmetry not in SYMMETRIES:
        raise ValueError(f"symmetry={symmetry!r} is not valid; choose one of {', '.join(SYMMETRIES)}")
    if symmetry == "dihedral" and height != width:
        raise ValueError(f"symmetry='dihedral' rotates by 90 degrees, which needs square images; these are "
                         f"{height} x {width} (use 'flips')")
    return SYMMETRIES[symmetry]


def apply_symmetry(x: Tensor, g: int) -> Tensor:
    """Transform g of (..., H, W): flip horizontally if _FLIPS[g], then rotate by 90 * _ROTATIONS[g] degrees."""
    x = x.flip(-1) if _FLIPS[g] else x
    return torch.rot90(x, _ROTATIONS[g], dims=(-2, -1)) if _ROTATIONS[g] else x


def invert_symmetry(x: Tensor, g: int) -> Tensor:
    """The inverse of `apply_symmetry(., g)`: maps a prediction on the transformed image back."""
    x = torch.rot90(x, -_ROTATIONS[g], dims=(-2, -1)) if _ROTATIONS[g] else x
    return x.flip(-1) if _FLIPS[g] else x


# --- the ensemble ---------------------------------------------------------------------------------
@dataclass
class Prediction:
    """The ensemble of K generations per image; every map carries the class axis (B, C, H, W).

    Binary (the paper's case): C = 1, the foreground probability. prob: the mean of the generations,
    in [0, 1]; mask: prob > 0.5 (the reference's soft vote); uncertainty: the per-pixel standard
    deviation across generations (0 when K = 1).
    C > 1 classes (`ModelConfig.prob_channels`): prob holds C class probabilities summing to 1;
    mask is the one-hot argmax; uncertainty is the entropy of the mean (B, 1, H, W), in nats; and
    disagreement the mutual information between the generations and the class (B, 1, H, W): the
    part of that entropy that comes from the generations disagreeing (`encoding.mutual_information`).
    labels: the class index of every pixel (B, 1, H, W) int64, for both (binary: the mask).
    generations: (B, K, C, H, W), kept when asked for (e.g. to score every K from one run).
    """

    prob: Tensor
    mask: Tensor
    uncertainty: Tensor
    labels: Tensor
    disagreement: Tensor | None = None
    generations: Tensor | None = None

    @classmethod
    def from_generations(cls, generations: Tensor, *, keep: bool = False) -> "Prediction":
        """Average (B, K, C, H, W) generations in [0, 1] into a Prediction (Amit et al. sec. 3.3)."""
        prob = generations.mean(dim=1)
        if prob.shape[1] == 1:
            return cls.from_maps(prob, generations.std(dim=1, unbiased=False), generations=generations if keep else None)
        return cls.from_maps(prob, entropy(prob), mutual_information(generations),
                             generations=generations if keep else None)

    @classmethod
    def from_maps(cls, prob: Tensor, uncertainty: Tensor, disagreement: Tensor | None = None, *,
                  generations: Tensor | None = None) -> "Prediction":
        """A Prediction from its mean probability and uncertainty maps (e.g. blended windows): the
        mask and labels follow from `prob`."""
        if prob.shape[1] == 1:
            mask = (prob > 0.5).float()
            return cls(prob=prob, mask=mask, uncertainty=uncertainty, labels=mask.long(), generations=generations)
        labels = prob.argmax(dim=1, keepdim=True)
        mask = torch.zeros_like(prob).scatter_(1, labels, 1.0)
        return cls(prob=prob, mask=mask, uncertainty=uncertainty, labels=labels, disagreement=disagreement,
                   generations=generations)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device does it natively (CPU, Ampere+ GPUs), else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, Callable]" = weakref.WeakKeyDictionary()


def compiled_denoise(model) -> Callable:
    """`torch.compile(model.denoise)`, compiled once per model object and reused across calls."""
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model.denoise)
    return _COMPILED[model]


def resolve_sample(sample: SampleConfig | None, overrides: dict) -> SampleConfig:
    """`sample` (default: the paper's SampleConfig) with `overrides` (SampleConfig field names) applied."""
    sample = sample or SampleConfig()
    valid = {f.name for f in fields(SampleConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return replace(sample, **overrides) if overrides else sample


def draw_seeds(count: int, generator: torch.Generator | None) -> list[int]:
    """`count` generation seeds drawn from `generator` (or torch's global one when None)."""
    return torch.randint(0, 2**62, (count,), generator=generator,
                         device=generator.device if generator is not None else "cpu").tolist()


@torch.no_grad()
def sample_generations(model, images: Tensor, scheduler: DDPMScheduler, sample: SampleConfig,
                       seeds: Sequence[int], *, init: Tensor | None = None, start_step: int | None = None) -> Tensor:
    """The K = `sample.num_generations` generations of every image: (B, K, C, H, W) in [0, 1].

    `model` is a SegDiff network (`encode_image`, `denoise`); `images` (B, C_in, H, W) in [0, 1].
    F(I) is computed once per image (and transform, with `sample.symmetry`); the B*K generations
    run in chunks of `sample.max_batch`. Generation k of image i draws all its noise from a
    generator seeded with `seeds[i * K + k]`, so the result depends on the seeds alone, not on
    `max_batch` or on which images share the call.

    sample.sampler: one of `SAMPLERS`; num_sampling_steps: respaced steps (0: all T); eta: DDIM's.
    autocast: run the network in bfloat16 (float16 on GPUs without bf16) under `torch.autocast`;
    the sampler's arithmetic stays float32; faster only where the hardware has bfloat16 units.
    compile: `torch.compile` the per-step network call (compiled once per model object).
    channels_last: feed the per-step network NHWC tensors (faster convolutions on CPUs).
    clip_x0: clamp each step's x_0 estimate to [-1, 1] (`DDPMScheduler.to_epsilon`). Networks that
    predict x_0 (`diffusion.prediction="sample"`) are converted to the noise estimate here, so
    every sampler serves both.
    symmetry: "none", "flips" or "dihedral" (square images): generation k of an image is sampled on
    its copy under transform k mod n (`apply_symmetry`; n = 4 or 8, identity first) and mapped back,
    so the ensemble also averages over the flips/rotations the model was trained with.
    init, start_step: SDEdit refinement (`Start`): every generation of image i starts from
    `init[i]` (B, mask channels, H, W), a signed estimate of its mask (e.g. another model's
    2p - 1), noised to `start_step`, and runs `num_sampling_steps` steps from there (all of
    start_step..0 when 0).
    """
    sample_fn = SAMPLER_FUNCTIONS[sample.sampler]
    options = {"eta": sample.eta} if sample.sampler == "ddim" else {}
    num_steps = sample.num_sampling_steps or None
    k = sample.num_generations
    device = next(model.parameters()).device
    images = images.to(device)
    b, _, h, w = images.shape
    order = symmetry_order(sample.symmetry, h, w)
    config = getattr(model, "config", None)
    self_condition = getattr(config, "self_condition", False)
    channels = getattr(config, "mask_channels", 1)  # of the denoised signal ...
    num_classes, encoding = getattr(config, "num_classes", 2), getattr(config, "mask_encoding", "onehot")
    classes_out = getattr(config, "prob_channels", 1)  # ... and of the class probabilities read from it
    rows_total = b * k
    if (init is None) != (start_step is None):
        raise ValueError("init and start_step go together: the estimate to refine and the step it is noised to")
    if init is not None and tuple(init.shape) != (b, channels, h, w):
        raise ValueError(f"init has shape {tuple(init.shape)}; expected {(b, channels, h, w)}: one signed mask "
                         "estimate per image")
    if len(seeds) != rows_total:
        raise ValueError(f"{len(seeds)} seeds for {b} image(s) x {k} generations = {rows_total} rows")
    denoise_fn = compiled_denoise(model) if sample.compile else model.denoise
    precision = (torch.autocast(device.type, dtype=autocast_dtype(device)) if sample.autocast
                 else contextlib.nullcontext())
    used = min(order, k)  # transforms some generation is sampled under
    with precision:  # F(I): once per image and transform; row g * b + i is image i under transform g
        cond = torch.cat([model.encode_image(apply_symmetry(images, g)) for g in range(used)])
    layout = torch.channels_last if sample.channels_last else torch.contiguous_format
    cond = cond.contiguous(memory_format=layout)
    owner = torch.arange(b, device=device).repeat_interleave(k)  # image of each row
    transform = torch.arange(k, device=device).repeat(b) % order  # its symmetry g
    out = torch.empty(rows_total, classes_out, h, w, device=device)
    for start in range(0, rows_total, sample.max_batch):
        rows = owner[start:start + sample.max_batch]
        row_transforms = transform[start:start + sample.max_batch]
        cond_rows = cond[row_transforms * b + rows].contiguous(memory_format=layout)
        row_generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds[start:start + len(rows)]]

        previous: list[Tensor] = []  # self-conditioning: the last step's x_0 estimate of these rows

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            with precision:
                extra = (previous[-1],) if self_condition and previous else ()
                seen = scheduler.network_input(x, t).contiguous(memory_format=layout)
                output = denoise_fn(seen, t, cond_rows, *extra).float()
            if self_condition:
                previous[:] = [scheduler.to_x0(output, t, x, clip_x0=True)]
            return scheduler.to_epsilon(output, t, x, clip_x0=sample.clip_x0)

        start_at = None
        if init is not None:  # each row's image's estimate, under the row's transform
            start_at = Start(torch.stack([apply_symmetry(init[int(i)].to(device), int(g))
                                          for i, g in zip(rows, row_transforms)]), int(start_step))
        x0 = sample_fn(denoise, scheduler, (len(rows), channels, h, w), generator=row_generators, device=device,
                       num_steps=num_steps, start=start_at, **options)
        x0 = decode(x0.float(), num_classes, encoding)  # binary: from_signed, the paper's soft vote
        if order > 1:
            x0 = torch.stack([invert_symmetry(x, int(g)) for x, g in zip(x0, row_transforms)])
        out[start:start + len(rows)] = x0
    return out.reshape(b, k, classes_out, h, w)


@torch.no_grad()
def predict(model, images: Tensor, scheduler: DDPMScheduler, sample: SampleConfig | None = None, *,
            generator: torch.Generator | None = None, seeds: Sequence[int] | None = None,
            keep_generations: bool = False, **overrides) -> Prediction:
    """Segment `images` (B, C_in, H, W) in [0, 1] with a SegDiff network: K generations averaged.

    `sample` holds every sampling setting (default: the paper's, `SampleConfig()`); keyword
    `overrides` replace its fields, e.g. ``predict(net, x, s, num_generations=8, sampler="ddim")``.
    Generation seeds come from `seeds` (B*K, image-major: row i*K + k is generation k of image i)
    or else are drawn from `generator`; see `sample_generations` for what each setting does.
    """
    sample = resolve_sample(sample, overrides)
    seeds = draw_seeds(len(images) * sample.num_generations, generator) if seeds is None else seeds
    return Prediction.from_generations(sample_generations(model, images, scheduler, sample, seeds),
                                       keep=keep_generations)
