"""How a label map becomes the signal the diffusion model denoises, and how a generation is read back.

- Binary (2 classes, the paper): one channel, the mask in {-1, +1} (foreground +1). A generation's
  x_0 in [-1, 1] reads as the foreground probability (x_0 + 1) / 2 (`diffusion.from_signed`).
- "onehot" (C > 2 classes): C channels in {-1, +1}, +1 on the pixel's class: the direct extension
  of the paper's mask. A generation's x_0 reads as class probabilities by clamping (x_0 + 1) / 2 to
  [0, 1] per channel and dividing by the sum over channels (a pixel with every channel at -1 is
  uniform).
- "bits" (analog bits, Chen et al. 2023, "Analog Bits"): ceil(log2 C) channels in {-1, +1}, the
  binary digits of the class index (least significant first). A generation's x_0 reads as bit
  probabilities q_i = (x_i + 1) / 2 clamped to [0, 1], and class c gets prod_i q_i^(bit_i(c)) *
  (1 - q_i)^(1 - bit_i(c)), renormalised over the C real classes (codes >= C are dropped).

Ignored pixels (`labels.IGNORE`) encode to -1 in every channel; the losses mask them out, so what
they encode to does not train anything.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import mask_channels

__all__ = ["decode", "encode", "entropy", "mask_channels", "mutual_information"]


def _bit_table(num_classes: int, device: torch.device) -> Tensor:
    """(C, bits) float {0, 1}: row c holds the binary digits of c, least significant first."""
    bits = mask_channels(num_classes, "bits")
    codes = torch.arange(num_classes, device=device)[:, None]
    return ((codes >> torch.arange(bits, device=device)) & 1).float()


def encode(labels: Tensor, num_classes: int, encoding: str = "onehot") -> Tensor:
    """Label maps (B, 1, H, W), values class indices or IGNORE -> the signal (B, M, H, W) in {-1, +1}."""
    if labels.ndim != 4 or labels.shape[1] != 1:
        raise ValueError(f"labels must be (B, 1, H, W), found {tuple(labels.shape)}")
    channels = mask_channels(num_classes, encoding)
    if num_classes == 2:
        return labels.clamp(min=0) * 2 - 1
    ignored = labels[:, 0] < 0
    index = labels[:, 0].clamp(min=0).long()
    if int(index.max()) >= num_classes:
        raise ValueError(f"labels hold class {int(index.max())}, outside 0..{num_classes - 1}")
    if encoding == "onehot":
        signal = torch.nn.functional.one_hot(index, num_classes).permute(0, 3, 1, 2).float()
    else:
        signal = _bit_table(num_classes, labels.device)[index].permute(0, 3, 1, 2)
    signal = signal * 2 - 1
    signal[ignored[:, None].expand(-1, channels, -1, -1)] = -1.0
    return signal.to(labels.dtype if labels.is_floating_point() else torch.float32)


def decode(x0: Tensor, num_classes: int, encoding: str = "onehot") -> Tensor:
    """Generations' x_0 (..., M, H, W) in about [-1, 1] -> class probabilities (..., C, H, W).

    Binary: the foreground probability (one channel). Otherwise C channels summing to 1 (see the
    module docstring for each encoding).
    """
    q = ((x0.float() + 1) / 2).clamp(0, 1)
    if num_classes == 2:
        return q
    if encoding == "onehot":
        total = q.sum(dim=-3, keepdim=True)
        return torch.where(total > 0, q / total.clamp(min=1e-12), torch.full_like(q, 1.0 / num_classes))
    table = _bit_table(num_classes, x0.device)  # (C, bits)
    q = q.movedim(-3, -1)[..., None, :]  # (..., H, W, 1, bits)
    p = (table * q + (1 - table) * (1 - q)).prod(dim=-1)  # (..., H, W, C)
    total = p.sum(dim=-1, keepdim=True)
    p = torch.where(total > 0, p / total.clamp(min=1e-12), torch.full_like(p, 1.0 / num_classes))
    return p.movedim(-1, -3)


def entropy(p: Tensor, dim: int = -3) -> Tensor:
    """Shannon entropy in nats of class probabilities along `dim` (0 log 0 = 0), the dim kept."""
    return -(p * p.clamp(min=1e-12).log()).sum(dim=dim, keepdim=True)


def mutual_information(generations: Tensor) -> Tensor:
    """How much K generations (B, K, C, H, W) of class probabilities disagree: the entropy of their
    mean minus the mean of their entropies (B, 1, H, W), >= 0; 0 when all agree (the BALD score)."""
    return (entropy(generations.mean(dim=1)) - entropy(generations).mean(dim=1)).clamp(min=0)
