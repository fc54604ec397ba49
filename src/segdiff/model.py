"""The SegDiff network: eps_theta(x_t, I, t) = D(E'(F(I) + G(x_t), t), t).

Amit et al. 2021, sec. 3 and docs/paper.md "Architecture". The network only predicts: the
noise eps (diffusion.prediction="epsilon", the paper), the clean mask x_0 ("sample") or x_0's
logits ("logits"), as the config says; `DDPMScheduler.to_epsilon` reads its output each way.
The schedule and the sampling loop live in `diffusion.py` and `sampling.py`. `BasicUNetDenoiser`
(model.body="basicunet", not in the paper) offers the same interface with the U-Net baseline's network.

What depends on t is split from what does not: `cond = net.encode_image(image)` runs the image
encoder F once per image, `net.denoise(x_t, t, cond)` runs at every step. Calling `net(x_t, t,
image)` does both, for training; with `model.aux_head` (not in the paper), `net(x_t, t, image,
with_aux=True)` also returns the auxiliary head's mask logits read from the same run of F.

Conventions: images enter in [0, 1] (mapped to [-1, 1] here, once); x_t is the noisy mask in
diffusion space (B, 1, H, W); t holds integer steps 0..T-1 (the reference embeds the integer step,
not a rescaled one).

Conditioning variants (the paper's ablation, Table 4):
- ``sum``: F(I) + G(x_t) (the method).
- ``concat``: F(I) and G(x_t) concatenated on channels (2C channels enter E').
- ``image-concat``: I concatenated to x_t before G; there is no encoder F.
- ``add-after-down-N``: G(x_t) alone enters E'; F(I), brought to the resolution and width of
  the N-th downsampling's output by N stride-2 3x3 convs, is added right after that
  downsampling (N = 1, 3, 5).
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import Tensor, nn

from .checkpoint import CheckpointError
from .config import ExperimentConfig, ModelConfig
from .hub import load_weights, read_source

def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches and the output start as the identity / zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer steps (B,) -> (B, dim), as in improved-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# --- image encoder F: ESRGAN's RRDB trunk ----------------------------------------------------------
class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense concatenation; output scaled by 0.2 and added to the input."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth if i < 4 else channels, 3, padding=1) for i in range(5)
        )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for i, conv in enumerate(self.convs):
            out = conv(torch.cat(features, dim=1))
            if i < 4:
                features.append(F.leaky_relu(out, 0.2))
        return x + 0.2 * out


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, scaled by 0.2, plus the input."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.2 * self.blocks(x)


class ImageEncoder(nn.Module):
    """F: conv, RRDB trunk with a residual around it, conv, LeakyReLU, conv. No norm, no t."""

    def __init__(self, in_channels: int, out_channels: int, width: int, growth: int, num_blocks: int):
        super().__init__()
        self.conv_first = nn.Conv2d(in_channels, width, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(width, growth) for _ in range(num_blocks)))
        self.trunk_conv = nn.Conv2d(width, width, 3, padding=1)
        self.conv_hr = nn.Conv2d(width, width, 3, padding=1)
        self.conv_last = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, image: Tensor) -> Tensor:
        fea = self.conv_first(image)
        fea = fea + self.trunk_conv(self.trunk(fea))
        return self.conv_last(F.leaky_relu(self.conv_hr(fea), 0.2))


# --- U-Net parts (improved-diffusion style) ------------------------------------------------------------
class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; + timestep embedding; GroupNorm, SiLU, dropout, zero conv; skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(norm(channels, groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        # The embedding is added before the second norm (no scale-shift): with it the reference's
        # parameter counts (159,838,209 for Vaihingen) are reproduced exactly.
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_norm = norm(out_channels, groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        h = self.out_norm(h)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions, with a zero-initialised output projection."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm = norm(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))  # (B, 3C, HW)
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h * w)
        return x + self.proj_out(out).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Block(nn.ModuleList):
    """A sequence of layers of which the residual blocks also take the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb)
        return x


# --- the network ------------------------------------------------------------------------------------
class SegDiff(nn.Module):
    """The SegDiff predictor of the noise (or of x_0 with diffusion.prediction="sample", or of x_0's
    logits with "logits").

    >>> net = SegDiff.from_preset("tiny")
    >>> cond = net.encode_image(torch.rand(2, 3, 32, 32))      # F(I), once per image
    >>> output = net.denoise(torch.randn(2, 1, 32, 32), torch.tensor([5, 9]), cond)  # eps or x_0
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        c, groups = config.base_channels, config.norm_groups
        emb_dim = 4 * c
        self.time_embed = nn.Sequential(nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # Conditioning: F and G, and where F(I) joins the U-Net.
        variant = config.conditioning
        self.add_after_down = int(variant.rsplit("-", 1)[1]) if variant.startswith("add-after-down-") else 0
        mask_in = config.mask_channels * (1 + config.self_condition) + (config.in_channels if variant == "image-concat" else 0)
        self.mask_encoder = nn.Conv2d(mask_in, c, 3, padding=1)  # G
        self.image_encoder = None if variant == "image-concat" else ImageEncoder(
            config.in_channels, c, config.rrdb_channels, config.rrdb_growth, config.rrdb_blocks
        )
        first_channels = 2 * c if variant == "concat" else c

        # Encoder E'.
        self.input_blocks = nn.ModuleList()
        skip_channels, ch, resolution = [first_channels], first_channels, config.image_size
        cond_down_widths: list[int] = []
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * c, config.dropout, groups)]
                ch = mult * c
                if resolution in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, config.num_heads, groups))
                self.input_blocks.append(Block(layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(Block([Downsample(ch)]))
                skip_channels.append(ch)
                cond_down_widths.append(ch)
                resolution //= 2
        # Index into input_blocks after which F(I) is added (add-after-down-N), and the stride-2
        # convs that bring F(I) to that resolution and width.
        self.cond_index = -1
        self.cond_down = None
        if self.add_after_down:
            downs = [i for i, b in enumerate(self.input_blocks) if isinstance(b[0], Downsample)]
            self.cond_index = downs[self.add_after_down - 1]
            widths = [c] + cond_down_widths[: self.add_after_down]
            convs: list[nn.Module] = []
            for i in range(self.add_after_down):
                convs += [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
                if i < self.add_after_down - 1:
                    convs.append(nn.SiLU())
            self.cond_down = nn.Sequential(*convs)

        self.middle_block = Block([
            ResBlock(ch, emb_dim, ch, config.dropout, groups),
            AttentionBlock(ch, config.num_heads, groups),
            ResBlock(ch, emb_dim, ch, config.dropout, groups),
        ])

        # Decoder D: one more block per level than the encoder, each taking a skip.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * c, config.dropout, groups)]
                ch = mult * c
                if resolution in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, config.num_heads, groups))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    resolution *= 2
                self.output_blocks.append(Block(layers))
        self.out = nn.Sequential(norm(ch, groups), nn.SiLU(), zero_module(nn.Conv2d(ch, config.mask_channels, 3, padding=1)))

        # Deep supervision of F (config.aux_head): mask logits from F(I) at full resolution, before
        # any cond_down. Built last, so that the layers above get the same initial weights with or
        # without it; absent when off, so the paper's networks and their checkpoints are unchanged.
        # Not zero-initialised: its loss must reach F from the first step.
        self.aux_head = nn.Sequential(
            norm(c, groups), nn.SiLU(), nn.Conv2d(c, config.mask_channels, 3, padding=1)
        ) if config.aux_head else None

    # --- constructors -----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SegDiff":
        """The network of a named preset (`vaihingen`, `monuseg`, `cityscapes`, `small`, `tiny`).

        Keyword overrides replace `ModelConfig` fields, e.g. ``conditioning="concat"``.
        """
        config = ExperimentConfig.from_preset(name).model
        valid = set(asdict(config))
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        return cls(replace(config, **overrides))

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str | torch.device = "cpu") -> "SegDiff":
        """The trained network of a model source, in eval mode: a model folder (`segdiff export`), a
        Hugging Face Hub repo id "user/name", a checkpoint file or a run folder (see `segdiff.hub`).

        Only JSON and safetensors are read. A source of another model kind (the U-Net baseline) is
        refused by name; `segdiff.load_model` loads any kind, with its sampler settings.

        >>> net = SegDiff.from_pretrained("exported/vaihingen")  # or "user/segdiff-vaihingen"
        """
        found = read_source(source)
        kind = found.config.model.kind
        if kind != "segdiff":
            raise CheckpointError(f"{source}: holds a {kind!r} model, not SegDiff; load it with "
                                  "segdiff.load_model, which builds any model kind")
        if found.config.model.body != "segdiff":
            raise CheckpointError(f"{source}: holds a SegDiff whose denoiser is model.body="
                                  f"{found.config.model.body!r}, not the paper's network; load it with "
                                  "segdiff.load_model, which builds either")
        net = cls(found.config.model)
        load_weights(net, found)
        return net.to(device).eval()

    # --- the two halves ---------------------------------------------------------------------------
    def encode_image(self, image: Tensor) -> Tensor:
        """Everything that depends on the image alone (F(I), or I itself for image-concat).

        image: (B, C_in, H, W) in [0, 1]. Computed once per image and reused at every step.
        """
        return self._to_cond(self._image_features(image))

    def _image_features(self, image: Tensor) -> Tensor:
        """F(I) at full resolution, (B, C, H, W) (the image in [-1, 1] for image-concat): what the
        auxiliary head reads."""
        image = image * 2 - 1
        return image if self.image_encoder is None else self.image_encoder(image)

    def _to_cond(self, features: Tensor) -> Tensor:
        """F(I) brought to where it joins the U-Net (add-after-down-N: its resolution and width)."""
        return self.cond_down(features) if self.cond_down is not None else features

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor, x0_prev: Tensor | None = None) -> Tensor:
        """The prediction (B, 1, H, W) from x_t (B, 1, H, W), steps t (B,), cond.

        It is the noise eps_theta when the network is trained with diffusion.prediction="epsilon"
        (the paper), the x_0 estimate with "sample" and its logits with "logits";
        `DDPMScheduler.to_epsilon` converts each to the noise estimate the samplers step with.
        `cond` may have batch 1 (one image, many generations): it is broadcast. With
        `config.self_condition`, G reads `x0_prev` (the previous x_0 estimate, (B, 1, H, W);
        None: zeros, as at the first sampling step) beside x_t.
        """
        if cond.shape[0] != x_t.shape[0]:
            cond = cond.expand(x_t.shape[0], *cond.shape[1:])
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))
        if self.config.self_condition:
            x_t = torch.cat([x_t, torch.zeros_like(x_t) if x0_prev is None else x0_prev], dim=1)
        variant = self.config.conditioning
        if variant == "image-concat":
            h = self.mask_encoder(torch.cat([x_t, cond], dim=1))
        elif variant == "concat":
            h = torch.cat([cond, self.mask_encoder(x_t)], dim=1)
        elif variant == "sum":
            h = cond + self.mask_encoder(x_t)
        else:  # add-after-down-N: joins below
            h = self.mask_encoder(x_t)
        skips = [h]
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb)
            if i == self.cond_index:
                h = h + cond
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor, x0_prev: Tensor | None = None, *,
                with_aux: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """`denoise(x_t, t, encode_image(image), x0_prev)`, the training call.

        With `with_aux` (needs `config.aux_head`) it returns (that output, the auxiliary head's mask
        logits (B, C_mask, H, W)), both from one run of F, which is a large part of a step. A flag
        of forward, not a method of its own, so that a DDP wrapper passes it through and sees every
        parameter used.
        """
        features = self._image_features(image)
        output = self.denoise(x_t, t, self._to_cond(features), x0_prev)
        if not with_aux:
            return output
        if self.aux_head is None:
            raise ValueError("with_aux=True needs a network built with model.aux_head=true")
        return output, self.aux_head(features)


class BasicUNetDenoiser(nn.Module):
    """SegDiff's denoiser with the U-Net baseline's network (model.body="basicunet"; not in the paper).

    MONAI's BasicUNet (widths `unet_features`) maps the image, in [-1, 1], concatenated with x_t to
    the x_0 estimate (or its logits), without the step t: at the noise levels a sampler visits, x_t
    itself tells how noisy it is. The same interface as `SegDiff`, so the scheduler, the samplers
    and the training loop serve both: `encode_image` is the image rescaled, `denoise` the U-Net.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.net = BasicUNet(spatial_dims=2, in_channels=config.in_channels + config.mask_channels,
                             out_channels=config.mask_channels, features=tuple(config.unet_features))

    def encode_image(self, image: Tensor) -> Tensor:
        """The image (B, C_in, H, W) in [0, 1], brought to [-1, 1] as x_t is."""
        return image * 2 - 1

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor, x0_prev: Tensor | None = None) -> Tensor:
        """The prediction (B, C_mask, H, W) from x_t and cond (batch 1 is broadcast); t is not read."""
        if cond.shape[0] != x_t.shape[0]:
            cond = cond.expand(x_t.shape[0], *cond.shape[1:])
        return self.net(torch.cat([cond, x_t], dim=1))

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor, x0_prev: Tensor | None = None) -> Tensor:
        """`denoise(x_t, t, encode_image(image))`, the training call."""
        return self.denoise(x_t, t, self.encode_image(image))


def build_network(config: ModelConfig) -> nn.Module:
    """SegDiff's denoising network as `config.body` names it: the paper's `SegDiff` or `BasicUNetDenoiser`."""
    return BasicUNetDenoiser(config) if config.body == "basicunet" else SegDiff(config)
