"""Label maps to diffusion signals and generations back to class probabilities (segdiff.encoding)."""

from __future__ import annotations

import math

import pytest
import torch

from segdiff.encoding import decode, encode, entropy, mask_channels, mutual_information
from segdiff.labels import IGNORE


def test_channel_counts():
    assert mask_channels(2) == 1 and mask_channels(2, "bits") == 1
    assert mask_channels(11) == 11 and mask_channels(11, "bits") == 4
    assert mask_channels(4, "bits") == 2 and mask_channels(5, "bits") == 3


def test_binary_encoding_is_the_papers_signed_mask():
    labels = torch.tensor([[[[0.0, 1.0], [IGNORE, 1.0]]]])
    assert encode(labels, 2).tolist() == [[[[-1.0, 1.0], [-1.0, 1.0]]]]


def test_onehot_and_bits_encode_by_hand_and_decode_back_to_the_class():
    labels = torch.tensor([[[[0.0, 2.0, 4.0, IGNORE]]]])  # C = 5
    onehot = encode(labels, 5, "onehot")
    assert onehot[0, :, 0, 1].tolist() == [-1, -1, 1, -1, -1]
    assert onehot[0, :, 0, 3].tolist() == [-1] * 5  # ignored: no class
    bits = encode(labels, 5, "bits")  # 3 bits, least significant first
    assert bits[0, :, 0, 0].tolist() == [-1, -1, -1]  # 0 = 000
    assert bits[0, :, 0, 2].tolist() == [-1, -1, 1]  # 4 = 001 read LSB first
    for signal, encoding in ((onehot, "onehot"), (bits, "bits")):
        probs = decode(signal, 5, encoding)
        assert torch.allclose(probs.sum(dim=1), torch.ones(1, 1, 4))
        assert probs[0, :, 0, :3].argmax(dim=0).tolist() == [0, 2, 4]


def test_decoding_soft_values_by_hand():
    # one-hot, C = 3: x = (0, 1, -1) -> q = (0.5, 1, 0) -> p = (1/3, 2/3, 0)
    p = decode(torch.tensor([0.0, 1.0, -1.0]).view(1, 3, 1, 1), 3, "onehot").flatten()
    assert p.tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    # bits, C = 3 (2 bits): x = (0, -1) -> q = (0.5, 0): codes 00, 01 (c=1: bit0 = 1), 10 (c=2)
    # p(0) = 0.5 * 1, p(1) = 0.5 * 1, p(2) = 0.5 * 0; code 11 (=3) is not a class
    p = decode(torch.tensor([0.0, -1.0]).view(1, 2, 1, 1), 3, "bits").flatten()
    assert p.tolist() == pytest.approx([0.5, 0.5, 0.0])
    # all channels at -1: uniform
    p = decode(-torch.ones(1, 3, 1, 1), 3, "onehot").flatten()
    assert p.tolist() == pytest.approx([1 / 3] * 3)


def test_entropy_and_mutual_information_by_hand():
    agree = torch.tensor([0.5, 0.5]).view(1, 1, 2, 1, 1).expand(1, 4, 2, 1, 1)
    assert entropy(agree[:, 0]).item() == pytest.approx(math.log(2))
    assert mutual_information(agree).item() == pytest.approx(0.0, abs=1e-7)  # uncertain, but all agree
    split = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 2, 1, 1)  # two sure generations that disagree
    assert mutual_information(split).item() == pytest.approx(math.log(2))
