"""A plain U-Net baseline: the question every diffusion result must answer is "better than this?".

MONAI's `BasicUNet` (a well-kept, plain encoder-decoder U-Net) predicts the mask in one forward
pass. It is trained by the same `training.train` loop as SegDiff (model kind ``unet``,
`models.UNetSegmenter`: Dice + binary cross-entropy), on the same data pipeline, and scored by
`segdiff evaluate` with the same protocol and metrics; a deterministic network has one
"generation": K = 1.

    segdiff baseline --preset vaihingen-cpu --data DATA --out runs/unet --time-budget 60
    segdiff evaluate runs/unet --dataset vaihingen --data DATA --split test
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet
from torch import Tensor, nn

from .sampling import apply_symmetry, invert_symmetry, symmetry_order


class UNetBaseline(nn.Module):
    """image (B, C_in, S, S) as the datasets give it -> mask logits (B, C, S, S)."""

    def __init__(self, in_channels: int = 3, features: tuple[int, ...] = (32, 32, 64, 128, 256, 32),
                 out_channels: int = 1):
        super().__init__()
        self.features = tuple(features)
        self.net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                             features=self.features)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)

    @torch.no_grad()
    def probability(self, image: Tensor, symmetry: str = "none") -> Tensor:
        """Sigmoid of the logits (one channel: binary), or their softmax over the classes (C > 1
        channels); with `symmetry`, averaged over the flipped/rotated copies of the image, each
        mapped back (the test-time augmentation `sampling.predict` gives SegDiff)."""
        order = symmetry_order(symmetry, *image.shape[-2:])
        act = torch.sigmoid if self.net.final_conv.out_channels == 1 else (lambda x: torch.softmax(x, dim=1))
        return torch.stack([invert_symmetry(act(self(apply_symmetry(image, g))), g)
                            for g in range(order)]).mean(0)
