"""Model kinds behind one interface, and the registry that builds and loads them.

Every model kind implements `Segmenter`: given images and one seed per generation it returns K
generations of per-class probabilities, (B, K, C, H, W) in [0, 1] (K = 1 for a deterministic
model), and it defines its training loss. Evaluation, training validation, `segdiff predict` and
the CLI call only this interface; none of them asks which kind it holds.

- ``segdiff`` (`DiffusionSegmenter`): the SegDiff network and its DDPM schedule. Generations are
  sampled (`sampling.sample_generations`); the loss is the paper's MSE against the noise (or x_0;
  Dice + cross-entropy for x_0's logits), plus the optional Dice term (train.dice_weight) and
  auxiliary head on F (train.aux_weight).
- ``unet`` (`UNetSegmenter`): the plain U-Net baseline (`baseline.UNetBaseline`), one forward
  pass, Dice + cross-entropy; its one "generation" is its probability.

`Ensemble` combines two loaded models (SegDiff and the U-Net, usually) behind the same interface:
each of SegDiff's generations is blended with the partner's probability, so everything that takes
a Segmenter takes an ensemble. It is not a trainable kind and is not in the registry.

A checkpoint or model folder names its kind in its config (`ModelConfig.kind`); `load_model` builds
the kind from the registry `MODEL_CLASSES`, so checkpoint.py and hub.py know neither model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, MaskedDiceLoss
from torch import Tensor, nn

from .baseline import UNetBaseline
from .config import MODEL_KINDS, ConfigError, ExperimentConfig, SampleConfig, TrainConfig
from .diffusion import DDPMScheduler, from_signed
from .encoding import encode
from .hub import load_weights, read_source
from .labels import IGNORE, valid_pixels
from .model import build_network
from .sampling import sample_generations, symmetry_order
from .seeding import derive_seed


class Segmenter(Protocol):
    """What every model kind offers the code above it."""

    kind: ClassVar[str]  # the ModelConfig.kind it is registered under
    uses_ema: ClassVar[bool]  # whether training keeps and evaluates an EMA of the weights
    config: ExperimentConfig
    net: nn.Module  # the trained module: what is optimised, checkpointed and wrapped by DDP

    def num_generations(self, sample: SampleConfig) -> int:
        """K: how many generations `generations` returns per image under `sample`."""

    def sampling_summary(self, sample: SampleConfig) -> dict[str, Any]:
        """The sampler and its number of steps as reports show them: {"sampler": ..., "num_steps": ...}."""

    def generations(self, images: Tensor, seeds: Sequence[int], sample: SampleConfig) -> Tensor:
        """(B, C_in, H, W) images in [0, 1] -> (B, K, C, H, W) probabilities in [0, 1].

        `seeds` holds B * K seeds, image-major; generation k of image i depends on `seeds[i*K + k]`
        alone (a deterministic model ignores them)."""

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor, generator: torch.Generator,
             train: TrainConfig, share: slice) -> Tensor:
        """The training loss of a batch: `net` is `self.net` or its DDP wrapper; `mask` (B, C, H, W)
        in {0, 1}; random draws come from `generator`, made for the global batch of
        `train.batch_size` of which this process holds the rows `share`."""


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


class DiffusionSegmenter:
    """SegDiff (Amit et al. 2021): the network and the DDPM schedule it was trained with."""

    kind: ClassVar[str] = "segdiff"
    uses_ema: ClassVar[bool] = True  # the EMA weights are the ones evaluated, as in the paper

    def __init__(self, config: ExperimentConfig, net: nn.Module | None = None):
        self.config = config
        self.net = net if net is not None else build_network(config.model)
        self.scheduler = DDPMScheduler.from_config(config.diffusion)

    @property
    def device(self) -> torch.device:
        return _device(self.net)

    def num_generations(self, sample: SampleConfig) -> int:
        return sample.num_generations

    def sampling_summary(self, sample: SampleConfig) -> dict[str, Any]:
        return {"sampler": sample.sampler, "num_steps": sample.num_sampling_steps or self.scheduler.num_steps}

    def generations(self, images: Tensor, seeds: Sequence[int], sample: SampleConfig) -> Tensor:
        return sample_generations(self.net, images, self.scheduler, sample, seeds)

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor, generator: torch.Generator,
             train: TrainConfig, share: slice) -> Tensor:
        # t and the noise are drawn for the whole global batch, the same on every rank; each rank
        # takes its slice, so N ranks make the single-process update.
        valid = valid_pixels(mask)  # pixels with a label; ignored ones (IGNORE) are left out of the loss
        m = self.config.model
        x0 = encode(mask, m.num_classes, m.mask_encoding)  # binary: the paper's {-1, +1} mask
        t = self.scheduler.sample_timesteps(train.batch_size, power=train.timestep_power, generator=generator,
                                            device=x0.device)[share]
        noise = torch.randn((train.batch_size, *x0.shape[1:]), generator=generator, device=x0.device)[share]
        x_t = self.scheduler.add_noise(x0, noise, t)
        if train.recycle:
            x_t, t = recycled_input(net, self.scheduler, x0, x_t, noise, t, image, generator, train, share,
                                    self.config.sample.num_sampling_steps)
        x0_prev = (self_condition_input(net, self.scheduler, x_t, t, image, generator, train.batch_size, share)
                   if self.config.model.self_condition else None)
        labelled = None if bool(valid.all()) else valid
        seen = self.scheduler.network_input(x_t, t)  # x_t itself unless diffusion.mask_input says otherwise
        if train.aux_weight:  # deep supervision of F (model.aux_head): its head reads the same run of F
            output, aux_logits = net(seen, t, image, x0_prev, with_aux=True)
        else:
            output = net(seen, t, image, x0_prev)  # the noise, or x_0
        loss = training_loss(output, x0, noise, t, x_t, self.scheduler, train.dice_weight, labelled,
                             dice_batch=train.dice_batch)
        if train.aux_weight:
            loss = loss + train.aux_weight * masked_dice_bce(aux_logits, mask)
        return loss


def training_loss(output: Tensor, x0: Tensor, noise: Tensor, t: Tensor, x_t: Tensor, scheduler: DDPMScheduler,
                  dice_weight: float = 0.0, valid: Tensor | None = None, *, dice_batch: bool = True) -> Tensor:
    """Mean squared error against the scheduler's target (the paper), plus `dice_weight` times a soft
    Dice loss of the x_0 estimate read as a probability. The MSE alone fits the posterior mean, which
    is blind to how small the foreground is; the Dice term weighs errors by the object's size, as
    the overlap metrics do. `valid` (bool, like `x0`; None: all) keeps only labelled pixels: the
    MSE is then their mean, and the Dice term sees neither prediction nor target elsewhere.

    A network that predicts x_0's logits (diffusion.prediction="logits") is trained instead with
    Dice + binary cross-entropy of its output against the mask (`masked_dice_bce`, each channel of
    the signal a mask of its own), the U-Net baseline's loss: unlike the MSE of a bounded estimate,
    its gradient does not fade where the estimate is confidently wrong. Its Dice is one ratio over the
    batch, or with `dice_batch=False` one per image, averaged (the U-Net baseline's, monai's default)."""
    if scheduler.prediction == "logits":
        truth = from_signed(x0)
        if valid is not None:
            truth = torch.where(valid.expand_as(truth), truth, -1)  # -1: left out, as masked_dice_bce reads it
        return masked_dice_bce(output, truth, batch=dice_batch)
    # Mean over pixels and batch, in float32; the reference sums over pixels, which only rescales
    # the gradient (AdamW is invariant to that up to its epsilon).
    target = scheduler.training_target(x0, noise)
    if valid is None:
        loss = F.mse_loss(output.float(), target)
    else:
        valid = valid.expand_as(target)  # one map for every channel of the signal
        loss = (output.float() - target).square().mul(valid).sum() / valid.sum().clamp(min=1)
    if dice_weight:
        probability, truth = from_signed(scheduler.to_x0(output.float(), t, x_t)), from_signed(x0)
        if valid is not None:
            probability, truth = probability * valid, truth * valid
        # One ratio over the whole batch (batch=True), so a tile without foreground is no 0/0.
        loss = loss + dice_weight * DiceLoss(batch=True)(probability, truth)
    return loss


def masked_dice_bce(logits: Tensor, mask: Tensor, smooth: float = 1e-5, *, batch: bool = True) -> Tensor:
    """Soft Dice + binary cross-entropy of `logits` (B, C, H, W) against `mask` (B, C, H, W) in
    {0, 1}, over the pixels whose mask is >= 0 (-1 marks an ignored, void pixel): the auxiliary
    head's loss (train.aux_weight).

    The BCE is the mean over the valid pixels; the Dice is one ratio per channel over the whole batch
    (monai's DiceLoss(sigmoid=True, batch=True), smoothing 1e-5 above and below), with probabilities
    and targets zeroed where ignored, then averaged over channels. One ratio over the batch, so a
    tile without foreground is no 0/0. Without ignored pixels and with one channel it equals monai's
    DiceCELoss(sigmoid=True, batch=True); the logits at ignored pixels never change it. `batch=False`
    takes one Dice ratio per image and channel, averaged, as monai's default (batch=False) does and
    as the U-Net baseline trains (its masked form is monai's MaskedDiceLoss).
    """
    logits = logits.float()
    valid = (mask >= 0).float()
    target = mask.float().clamp(min=0) * valid
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp(min=1)
    probability = torch.sigmoid(logits) * valid
    dims = [*([0] if batch else []), *range(2, logits.ndim)]  # all but the channels (and the images)
    intersection = (probability * target).sum(dims)
    denominator = probability.sum(dims) + target.sum(dims)
    dice = (1 - (2 * intersection + smooth) / (denominator + smooth)).mean()
    return dice + bce


@torch.no_grad()
def own_estimate(net: nn.Module, scheduler: DDPMScheduler, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
    """The network's x_0 estimate from (x_t, t), clamped to [-1, 1] as sampling clamps it: a first
    pass without gradients, past DDP's wrapper (ranks need not agree on this pass)."""
    module = getattr(net, "module", net)
    return scheduler.to_x0(module(scheduler.network_input(x_t, t), t, image).float(), t, x_t, clip_x0=True)


@torch.no_grad()
def self_condition_input(net: nn.Module, scheduler: DDPMScheduler, x_t: Tensor, t: Tensor, image: Tensor,
                         generator: torch.Generator, batch_size: int, share: slice) -> Tensor:
    """What G reads beside x_t when self-conditioning is trained (Chen et al. 2022): for a random
    half of the samples, the network's own x_0 estimate from a first pass without gradients (as
    the previous sampling step gives it), for the other half zeros (as the first step)."""
    use = (torch.rand(batch_size, generator=generator, device=generator.device) < 0.5)[share].to(x_t.device)
    x0_prev = torch.zeros_like(x_t)
    if use.any():
        x0_prev[use] = own_estimate(net, scheduler, x_t[use], t[use], image[use]).to(x0_prev.dtype)
    return x0_prev


@torch.no_grad()
def recycled_input(net: nn.Module, scheduler: DDPMScheduler, x0: Tensor, x_t: Tensor, noise: Tensor, t: Tensor,
                   image: Tensor, generator: torch.Generator, train: TrainConfig, share: slice,
                   num_sampling_steps: int) -> tuple[Tensor, Tensor]:
    """Recycling (Fu et al. 2023, ImgX-DiffSeg): (x_t, t) with a random `train.recycle` share of the
    samples replaced by what the sampler's later calls see. For those, a first pass of the network
    without gradients estimates x_0 from x_{T-1} made of the mask (pure noise, in effect), clamped to
    [-1, 1] as sampling clamps it; their t is drawn uniformly from the sampler's steps after its
    first (`scheduler.timesteps(num_sampling_steps)[1:]`: t = 0 for 2 steps), and their x_t is that
    estimate noised to t with the sample's own noise. The target stays the mask: the network learns
    to correct its own first guess, which training on masks alone never shows it."""
    n = train.batch_size
    use = (torch.rand(n, generator=generator, device=generator.device) < train.recycle)[share].to(x_t.device)
    later = scheduler.timesteps(num_sampling_steps or None)[1:].to(t.device)
    pick = torch.randint(0, len(later), (n,), generator=generator, device=generator.device)[share].to(t.device)
    start = torch.randn((n, *x0.shape[1:]), generator=generator, device=x0.device)[share]
    if not use.any():
        return x_t, t
    last = torch.full((int(use.sum()),), scheduler.num_steps - 1, device=t.device, dtype=t.dtype)
    x_last = scheduler.add_noise(x0[use], start[use], last)
    estimate = own_estimate(net, scheduler, x_last, last, image[use])
    x_t, t = x_t.clone(), t.clone()
    t[use] = later[pick[use]]
    x_t[use] = scheduler.add_noise(estimate, noise[use].float(), t[use]).to(x_t.dtype)
    return x_t, t


class UNetSegmenter:
    """The plain U-Net baseline: one forward pass per image, so one "generation" (K = 1).

    With `sample.symmetry` its probability is averaged over the flipped/rotated copies of the
    image, each mapped back (the test-time augmentation SegDiff's generations get).
    """

    kind: ClassVar[str] = "unet"
    uses_ema: ClassVar[bool] = False  # trained and evaluated on its raw weights, as U-Nets usually are

    def __init__(self, config: ExperimentConfig, net: UNetBaseline | None = None):
        self.config = config
        m = config.model
        self.net = net if net is not None else UNetBaseline(m.in_channels, m.unet_features, m.prob_channels)
        # Binary: Dice + binary cross-entropy on the logits, MONAI's DiceCELoss (sigmoid); with
        # ignored pixels, MONAI's MaskedDiceLoss and the cross-entropy's mean over labelled pixels.
        # C > 2 classes: the softmax's Dice over the one-hot classes (MaskedDiceLoss, ignored pixels
        # masked) + cross-entropy with ignored pixels left out.
        self.multiclass = m.prob_channels > 1
        self._loss = DiceCELoss(sigmoid=True)
        self._masked_dice = (MaskedDiceLoss(softmax=True, to_onehot_y=True) if self.multiclass
                             else MaskedDiceLoss(sigmoid=True))

    @property
    def device(self) -> torch.device:
        return _device(self.net)

    def num_generations(self, sample: SampleConfig) -> int:
        return 1

    def sampling_summary(self, sample: SampleConfig) -> dict[str, Any]:
        return {"sampler": "none (one forward pass)", "num_steps": 0}

    @torch.no_grad()
    def generations(self, images: Tensor, seeds: Sequence[int], sample: SampleConfig) -> Tensor:
        symmetry_order(sample.symmetry, *images.shape[-2:])
        return self.net.probability(images.to(self.device), sample.symmetry)[:, None]  # (B, 1, C, H, W)

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor, generator: torch.Generator,
             train: TrainConfig, share: slice) -> Tensor:
        logits = net(image).float()
        valid = valid_pixels(mask)
        if self.multiclass:
            labels = mask.long()  # IGNORE (-1) becomes the cross-entropy's ignore_index
            ce = F.cross_entropy(logits, labels[:, 0], ignore_index=int(IGNORE)) if bool(valid.any()) else logits.sum() * 0
            return self._masked_dice(logits, labels.clamp(min=0), mask=valid) + ce
        if bool(valid.all()):
            return self._loss(logits, mask)
        truth = mask.clamp(min=0)
        bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
        return self._masked_dice(logits, truth, mask=valid) + bce.mul(valid).sum() / valid.sum().clamp(min=1)


MODEL_CLASSES: dict[str, type] = {"segdiff": DiffusionSegmenter, "unet": UNetSegmenter}
assert tuple(MODEL_CLASSES) == MODEL_KINDS, "every name in config.MODEL_KINDS has a class here"


def build_model(config: ExperimentConfig, net: nn.Module | None = None) -> Segmenter:
    """The `config.model.kind` model for `config` (new weights unless `net` is given)."""
    return MODEL_CLASSES[config.model.kind](config, net)


def load_model(source: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """The model a source holds, its evaluated weights loaded, in eval mode.

    `source` is a checkpoint file, a run folder, a model folder (`segdiff export`) or a Hugging Face
    Hub repo id "user/name" (see `hub`). The kind comes from the source's config; weights that do
    not fit it raise CheckpointError. Nothing is executed: the weights are safetensors, the config JSON.

        >>> model = load_model("runs/vai")  # or "exported/vai", or "user/segdiff-vaihingen"
        >>> probs = model.generations(images, seeds, model.config.sample)  # (B, K, C, H, W)
    """
    found = read_source(source)
    model = build_model(found.config)
    load_weights(model.net, found)
    model.net.to(device).eval()
    return model


DEFAULT_ENSEMBLE_WEIGHT = 0.5  # the partner's share: SegDiff and the U-Net count alike


def check_ensemble_weight(weight: float) -> float:
    """`weight` as a float when it is a number in [0, 1]; ConfigError otherwise."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise ConfigError(f"ensemble weight {weight!r}: the partner's weight must be a number in [0, 1] "
                          "(0: the diffusion model alone, 1: the partner alone)")
    return float(weight)


class Combination:
    """What `Ensemble` and `Refinement` share: a diffusion model, a partner that fits it (same input
    and classes, else ConfigError naming both `sources`), SegDiff's K, the partner's own seeds, and
    no training of its own."""

    uses_ema: ClassVar[bool] = False  # not trained; each member was evaluated on its own weights

    def __init__(self, diffusion: Segmenter, partner: Segmenter, sources: tuple[str, str] | None = None):
        self.sources = tuple(map(str, sources)) if sources else (f"the {diffusion.kind} model",
                                                                 f"the {partner.kind} model")
        check_ensemble_members(diffusion.config, partner.config, self.sources)
        self.diffusion, self.partner = diffusion, partner
        self.config, self.net = diffusion.config, diffusion.net

    @property
    def device(self) -> torch.device:
        return _device(self.net)

    def num_generations(self, sample: SampleConfig) -> int:
        return self.diffusion.num_generations(sample)

    def check_seeds(self, seeds: Sequence[int], batch: int, sample: SampleConfig) -> int:
        """K, after checking that `seeds` hold one per generation of each of `batch` images."""
        k = self.num_generations(sample)
        if len(seeds) != batch * k:
            raise ValueError(f"{len(seeds)} seeds for {batch} image(s) x {k} generations")
        return k

    def partner_seeds(self, seeds: Sequence[int], batch: int, sample: SampleConfig) -> list[int]:
        """The partner's seeds, image-major: derived from each image's first seed, tagged apart."""
        k, kp = self.check_seeds(seeds, batch, sample), self.partner.num_generations(sample)
        return [derive_seed("ensemble partner", seeds[i * k], j) for i in range(batch) for j in range(kp)]

    def partner_mean(self, images: Tensor, seeds: Sequence[int], sample: SampleConfig) -> Tensor:
        """The partner's mean probability (B, C, H, W) on `images`, on this model's device."""
        partner = self.partner.generations(images, self.partner_seeds(seeds, len(images), sample), sample)
        return partner.mean(dim=1).to(self.device)

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor, generator: torch.Generator,
             train: TrainConfig, share: slice) -> Tensor:
        name = type(self).__name__
        raise NotImplementedError(f"{'an' if name[0] in 'AEIOU' else 'a'} {name} is not trained: train its two models "
                                  "(segdiff train, segdiff baseline), then combine the runs")


class Ensemble(Combination):
    """Two models blended: each of `diffusion`'s K generations mixed with `partner`'s mean.

    Generation k of an image is g'_k = (1 - w) * g_k + w * mean_j(p_j), where g_k are `diffusion`'s
    K generations (any Segmenter, SegDiff in practice), p_j the partner's generations (the U-Net's
    one probability, in practice) and w = `weight`, the partner's share (default 0.5: the two count
    alike). So the mean over the K generations is exactly (1 - w) * SegDiff's mean + w * the U-Net's
    probability, every running mean over the first k generations (the curve over K) is blended the
    same way, and evaluation, `segdiff predict` and validation use an ensemble as any model, with no
    branch. The spread of the blended generations is SegDiff's scaled by (1 - w). w = 0 returns
    `diffusion`'s generations and w = 1 the partner's mean repeated K times, each without running the
    other model.

    Seeds: `diffusion` gets the seeds it is given (B * K, image-major). The partner gets its own
    `partner.num_generations(sample)` seeds per image, derived from the image's first seed (none is
    used by the deterministic U-Net), so its noise is never SegDiff's. Both models sample with the
    same `sample` settings (the U-Net reads only `symmetry`).

    The two must take the same input (side, image channels) and segment the same classes (their
    number and names); ConfigError names both sources otherwise. `sources` names them in messages
    (default: their kinds); `Ensemble.load` passes the paths. An ensemble is not trained: `loss`
    raises.

        >>> model = Ensemble(load_model("runs/segdiff"), load_model("runs/unet"), weight=0.5)
        >>> summary = evaluate(model, dataset, protocol)
    """

    kind: ClassVar[str] = "ensemble"

    def __init__(self, diffusion: Segmenter, partner: Segmenter, weight: float = DEFAULT_ENSEMBLE_WEIGHT, *,
                 sources: tuple[str, str] | None = None):
        self.weight = check_ensemble_weight(weight)
        super().__init__(diffusion, partner, sources)

    @classmethod
    def load(cls, diffusion_source: str | Path, partner_source: str | Path, weight: float = DEFAULT_ENSEMBLE_WEIGHT,
             device: str | torch.device = "cpu") -> "Ensemble":
        """Both models loaded with `load_model` (the weight checked first, before anything is read)."""
        check_ensemble_weight(weight)
        return cls(load_model(diffusion_source, device), load_model(partner_source, device), weight,
                   sources=(str(diffusion_source), str(partner_source)))

    def sampling_summary(self, sample: SampleConfig) -> dict[str, Any]:
        own = self.diffusion.sampling_summary(sample)
        return {**own, "sampler": f"{own['sampler']} + {self.partner.kind} (w={self.weight:g})"}

    def describe(self) -> str:
        """One line for logs: the two sources and their weights."""
        return (f"ensemble: {self.diffusion.kind} from {self.sources[0]} (weight {1 - self.weight:g}) + "
                f"{self.partner.kind} from {self.sources[1]} (weight {self.weight:g})")

    @torch.no_grad()
    def generations(self, images: Tensor, seeds: Sequence[int], sample: SampleConfig) -> Tensor:
        k = self.check_seeds(seeds, len(images), sample)
        if self.weight == 0.0:
            return self.diffusion.generations(images, seeds, sample)
        partner_mean = self.partner_mean(images, seeds, sample)[:, None]  # (B, 1, C, H, W)
        if self.weight == 1.0:
            return partner_mean.expand(-1, k, -1, -1, -1).clone()
        own = self.diffusion.generations(images, seeds, sample)
        return (1 - self.weight) * own + self.weight * partner_mean


class Refinement(Combination):
    """SegDiff refining another model's mask (SDEdit, Meng et al. 2022; no retraining): for each
    image, `partner`'s mean probability p is read as the signed mask estimate 2p - 1, noised to
    step `start_step` with each generation's own first noise draw, and `diffusion` samples from
    there down to 0 (`sampling.Start`; `num_sampling_steps` steps over start_step..0, all of them
    when 0). A low start step keeps the partner's mask and lets SegDiff redraw its details; T - 1
    is nearly SegDiff alone (sqrt(abar) = 0.007 at T = 100). Seeds, members and checks are the
    `Ensemble`'s; binary and one-hot masks only (analog bits have no per-class channel to set).

        >>> model = Refinement(load_model("runs/segdiff"), load_model("runs/unet"), start_step=30)
    """

    kind: ClassVar[str] = "refinement"

    def __init__(self, diffusion: Segmenter, partner: Segmenter, start_step: int, *,
                 sources: tuple[str, str] | None = None):
        steps = diffusion.scheduler.num_steps
        if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step < steps:
            raise ConfigError(f"refinement start step {start_step!r}: must be a step in [0, {steps - 1}]")
        if diffusion.config.model.mask_encoding == "bits" and diffusion.config.model.num_classes > 2:
            raise ConfigError("refinement needs a one-hot or binary mask: analog bits have no channel per class")
        self.start_step = start_step
        super().__init__(diffusion, partner, sources)

    def sampling_summary(self, sample: SampleConfig) -> dict[str, Any]:
        own = self.diffusion.sampling_summary(sample)
        return {**own, "sampler": f"{own['sampler']} refining {self.partner.kind} from step {self.start_step}"}

    def describe(self) -> str:
        return (f"refinement: {self.diffusion.kind} from {self.sources[0]} refines {self.partner.kind} from "
                f"{self.sources[1]}, starting at step {self.start_step}")

    @torch.no_grad()
    def generations(self, images: Tensor, seeds: Sequence[int], sample: SampleConfig) -> Tensor:
        init = 2 * self.partner_mean(images, seeds, sample) - 1  # the partner's mask, signed
        return sample_generations(self.net, images, self.diffusion.scheduler, sample, seeds, init=init,
                                  start_step=self.start_step)


def check_ensemble_members(diffusion: ExperimentConfig, partner: ExperimentConfig, sources: tuple[str, str]) -> None:
    """ConfigError naming both sources when two models cannot be ensembled: another input side or
    number of image channels, or other classes (their number, then their names in index order)."""
    a, b = diffusion.model, partner.model
    for what, left, right in (("input size", a.image_size, b.image_size),
                              ("image channels", a.in_channels, b.in_channels),
                              ("number of classes", a.num_classes, b.num_classes),
                              ("classes", list(a.classes), list(b.classes))):
        if left != right:
            raise ConfigError(f"cannot ensemble {sources[0]} ({what} {left}) with {sources[1]} ({what} {right}): "
                              f"the two models must take the same input and segment the same classes")
