"""Samplers and the K-generation ensemble.

A sampler is a function of a `denoise(x_t, t) -> eps_pred` callable, a scheduler and a shape
(k-diffusion's design): the network is hidden behind the callable, so any sampler runs any
model. `predict` is the user-facing call: it encodes each image once (F(I) is never recomputed
per step), runs the K generations of every image as batches of at most `max_batch` rows (memory
stays bounded whatever K is), and averages them into a probability map, a mask and a per-pixel
uncertainty (Amit et al. sec. 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .diffusion import DDPMScheduler, _gather, from_signed

Denoise = Callable[[Tensor, Tensor], Tensor]
SAMPLERS = ("ddpm", "ddim")


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


@torch.no_grad()
def sample_ddpm(denoise: Denoise, scheduler: DDPMScheduler, shape: tuple[int, ...], *,
                generator: Generator = None, device: torch.device | str = "cpu",
                num_steps: int | None = None) -> Tensor:
    """Ancestral DDPM over all T steps, sigma_t^2 = beta_t (the paper's sampler). Returns x_0 (signed)."""
    if num_steps not in (None, scheduler.num_steps):
        raise ValueError(f"ddpm runs all {scheduler.num_steps} trained steps; use --sampler ddim for fewer")
    device = torch.device(device)
    x = _randn(shape, generator, device)
    for t in scheduler.timesteps():
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        x = scheduler.step(denoise(x, t_batch), t_batch, x, noise=_randn(shape, generator, device))
    return x


@torch.no_grad()
def sample_ddim(denoise: Denoise, scheduler: DDPMScheduler, shape: tuple[int, ...], *,
                generator: Generator = None, device: torch.device | str = "cpu",
                num_steps: int | None = None, eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) on `num_steps` respaced steps; eta=0 is deterministic given x_T."""
    device = torch.device(device)
    x = _randn(shape, generator, device)
    steps = scheduler.timesteps(num_steps)
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
        x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(steps):
            x = x + sigma * _randn(shape, generator, device)
    return x


SAMPLER_FUNCTIONS = {"ddpm": sample_ddpm, "ddim": sample_ddim}


@dataclass
class Prediction:
    """The ensemble of K generations per image, all (B, 1, H, W) in [0, 1].

    prob: mean of the generations mapped to [0, 1]; mask: prob > 0.5 (the reference's soft vote);
    uncertainty: per-pixel standard deviation across generations (0 when K = 1).
    generations: (B, K, H, W), kept when asked for (e.g. to score every K from one run).
    """

    prob: Tensor
    mask: Tensor
    uncertainty: Tensor
    generations: Tensor | None = None


@torch.no_grad()
def predict(model, images: Tensor, scheduler: DDPMScheduler, *, num_generations: int = 30,
            sampler: str = "ddpm", num_steps: int | None = None, max_batch: int = 32,
            generator: torch.Generator | None = None, keep_generations: bool = False) -> Prediction:
    """Segment `images` (B, C, H, W) in [0, 1] with `num_generations` samples each.

    F(I) is computed once per image; the B*K generations run in chunks of `max_batch`. Each
    generation draws its noise from its own generator, seeded from `generator`, so the result
    depends on the seed alone, not on `max_batch` or on which images share the call.
    """
    if sampler not in SAMPLER_FUNCTIONS:
        raise ValueError(f"sampler={sampler!r} is not valid; choose one of {', '.join(SAMPLER_FUNCTIONS)}")
    if num_generations < 1 or max_batch < 1:
        raise ValueError("num_generations and max_batch must be >= 1")
    sample = SAMPLER_FUNCTIONS[sampler]
    device = next(model.parameters()).device
    images = images.to(device)
    b, _, h, w = images.shape
    cond = model.encode_image(images)  # F(I): once per image
    owner = torch.arange(b, device=device).repeat_interleave(num_generations)  # image of each row
    seeds = torch.randint(0, 2**62, (b * num_generations,), generator=generator,
                          device=generator.device if generator is not None else "cpu").tolist()
    out = torch.empty(b * num_generations, 1, h, w, device=device)
    for start in range(0, b * num_generations, max_batch):
        rows = owner[start:start + max_batch]
        cond_rows = cond[rows]
        row_generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[start:start + len(rows)]]
        x0 = sample(lambda x, t: model.denoise(x, t, cond_rows), scheduler, (len(rows), 1, h, w),
                    generator=row_generators, device=device, num_steps=num_steps)
        out[start:start + len(rows)] = from_signed(x0.float())
    generations = out.reshape(b, num_generations, h, w)
    prob = generations.mean(dim=1, keepdim=True)
    uncertainty = generations.std(dim=1, keepdim=True, unbiased=False)
    return Prediction(prob=prob, mask=(prob > 0.5).float(), uncertainty=uncertainty,
                      generations=generations if keep_generations else None)
