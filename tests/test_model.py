"""The network: the paper's presets, the ablation variants, and the split of F from the rest."""

import pytest
import torch

from segdiff import SegDiff
from segdiff.config import CONDITIONINGS, ModelConfig

# The reference code's own model builder (docs/paper.md, "Architecture").
REFERENCE_PARAMETERS = {"vaihingen": 159_838_209, "monuseg": 164_154_753, "cityscapes": 162_766_017}
REFERENCE_F_PARAMETERS = {"vaihingen": 4.47e6, "monuseg": 8.78e6, "cityscapes": 10.94e6}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", sorted(REFERENCE_PARAMETERS))
def test_paper_preset_parameter_count_matches_reference(preset):
    with torch.device("meta"):  # counts without allocating 160 M floats
        net = SegDiff.from_preset(preset)
    total = count(net)
    assert abs(total - REFERENCE_PARAMETERS[preset]) / REFERENCE_PARAMETERS[preset] < 0.01
    assert total == REFERENCE_PARAMETERS[preset]  # in fact it is exact
    assert count(net.image_encoder) == pytest.approx(REFERENCE_F_PARAMETERS[preset], rel=1e-3)


@pytest.mark.parametrize("preset,size", [("vaihingen", 64), ("monuseg", 64), ("cityscapes", 32)])
def test_paper_preset_forward_shape_at_small_size(preset, size):
    torch.manual_seed(0)
    net = SegDiff.from_preset(preset, image_size=size).eval()
    x = torch.randn(1, 1, size, size)
    eps = net(x, torch.tensor([7]), torch.rand(1, 3, size, size))
    assert eps.shape == (1, 1, size, size)


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_cpu_preset_forward_and_backward(preset):
    net = SegDiff.from_preset(preset)
    s = net.config.image_size
    eps = net(torch.randn(2, 1, s, s), torch.tensor([0, 99]), torch.rand(2, 3, s, s))
    assert eps.shape == (2, 1, s, s)
    eps.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_first_level_wider_than_base_channels_builds_and_runs():
    # The output conv reads the first level's width (channel_mult[0] * C), not C.
    net = SegDiff(ModelConfig(image_size=32, base_channels=16, channel_mult=(2, 4), num_res_blocks=1,
                              attention_resolutions=(), norm_groups=8, rrdb_blocks=0))
    assert net.out[-1].in_channels == 32
    assert net(torch.randn(2, 1, 32, 32), torch.tensor([3, 50]), torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 32)


def test_zero_initialised_output_predicts_zero_noise_at_init():
    net = SegDiff.from_preset("tiny")
    eps = net(torch.randn(3, 1, 32, 32), torch.tensor([1, 2, 3]), torch.rand(3, 3, 32, 32))
    assert torch.equal(eps, torch.zeros_like(eps))


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_conditioning_variant_runs_and_uses_the_image(conditioning):
    torch.manual_seed(0)
    config = ModelConfig(image_size=64, base_channels=32, channel_mult=(1, 1, 2, 2, 2, 2), num_res_blocks=1,
                         attention_resolutions=(8,), rrdb_blocks=1, rrdb_channels=16, rrdb_growth=8,
                         dropout=0.0, conditioning=conditioning)
    net = SegDiff(config).eval()
    for p in net.parameters():  # undo the zero init so that the output depends on the inputs
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 64, 64), torch.tensor([3, 50])
    images = torch.rand(2, 3, 64, 64)
    eps = net(x, t, images)
    assert eps.shape == (2, 1, 64, 64)
    assert not torch.allclose(eps, net(x, t, torch.rand(2, 3, 64, 64)))  # the image matters
    has_f = conditioning != "image-concat"
    assert (net.image_encoder is not None) == has_f


def test_concat_variant_doubles_first_width_and_image_concat_widens_g():
    concat = SegDiff.from_preset("tiny", conditioning="concat")
    assert concat.input_blocks[0][0].in_layers[2].in_channels == 2 * concat.config.base_channels
    image_concat = SegDiff.from_preset("tiny", conditioning="image-concat")
    assert image_concat.mask_encoder.in_channels == 4


def test_add_after_down_n_adds_features_at_that_resolution():
    net = SegDiff.from_preset("small", conditioning="add-after-down-3")
    cond = net.encode_image(torch.rand(1, 3, 128, 128))
    assert cond.shape[-1] == 128 // 2**3


def test_denoise_with_cached_features_equals_full_forward():
    torch.manual_seed(0)
    net = SegDiff.from_preset("tiny").eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    image, x, t = torch.rand(1, 3, 32, 32), torch.randn(4, 1, 32, 32), torch.tensor([0, 5, 50, 99])
    cached = net.denoise(x, t, net.encode_image(image))  # batch-1 features broadcast over 4 rows
    full = net(x, t, image.expand(4, -1, -1, -1))
    torch.testing.assert_close(cached, full)


def test_self_conditioning_widens_g_and_reads_the_previous_estimate():
    torch.manual_seed(0)
    net = SegDiff.from_preset("tiny", self_condition=True).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    assert net.mask_encoder.in_channels == 2
    image, x, t = torch.rand(2, 3, 32, 32), torch.randn(2, 1, 32, 32), torch.tensor([3, 90])
    cond = net.encode_image(image)
    # No estimate yet (the first sampling step) is the estimate 0; another estimate changes the output.
    torch.testing.assert_close(net.denoise(x, t, cond), net.denoise(x, t, cond, torch.zeros_like(x)))
    assert not torch.allclose(net.denoise(x, t, cond), net.denoise(x, t, cond, torch.ones_like(x)), atol=1e-4)
    torch.testing.assert_close(net(x, t, image, torch.ones_like(x)), net.denoise(x, t, cond, torch.ones_like(x)))


def test_from_preset_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*vaihingen"):
        SegDiff.from_preset("nope")
    with pytest.raises(ValueError, match="unknown model option.*colour"):
        SegDiff.from_preset("tiny", colour=1)
    with pytest.raises(ValueError, match="conditioning='product' is not valid"):
        SegDiff.from_preset("tiny", conditioning="product")
