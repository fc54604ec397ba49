"""Tests for segdiff.data.augment: joint geometry, binary masks, colour jitter, reproducibility."""

from __future__ import annotations

import colorsys

import pytest
import torch

from segdiff.data.augment import (
    CITYSCAPES_AUGMENT,
    MONUSEG_AUGMENT,
    VAIHINGEN_AUGMENT,
    AffineParams,
    AugmentSpec,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_affine,
    augment_pair,
    color_jitter,
    item_generator,
    sample_affine,
)


def _shape_pair(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """An off-centre L-shape drawn identically in the image's red channel and in the mask
    (asymmetric, so a wrong flip or rotation direction cannot go unnoticed)."""
    mask = torch.zeros(1, size, size)
    mask[0, 10:30, 12:18] = 1.0
    mask[0, 24:30, 12:34] = 1.0
    image = torch.full((3, size, size), 0.25)
    image[0] = mask[0]
    return image, mask


def test_item_generator_is_reproducible_and_distinct_per_item_and_epoch():
    draw = lambda g: torch.rand(4, generator=g)  # noqa: E731
    assert torch.equal(draw(item_generator(3, 1, 7)), draw(item_generator(3, 1, 7)))
    assert not torch.equal(draw(item_generator(3, 1, 7)), draw(item_generator(3, 1, 8)))
    assert not torch.equal(draw(item_generator(3, 1, 7)), draw(item_generator(3, 2, 7)))
    assert not torch.equal(draw(item_generator(3, 1, 7)), draw(item_generator(4, 1, 7)))
    with pytest.raises(ValueError):
        item_generator(-1, 0, 0)


def test_identity_params_change_nothing():
    image, mask = _shape_pair()
    out_image, out_mask = apply_affine(image, mask, AffineParams())
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


def test_rotation_by_90_degrees_equals_rot90_in_image_and_mask():
    # On a square image with align_corners=False a quarter turn maps pixel centres onto pixel
    # centres, so bilinear resampling must reproduce torch.rot90 exactly, for both tensors.
    image, mask = _shape_pair()
    out_image, out_mask = apply_affine(image, mask, AffineParams(angle=90.0))
    matches = [k for k in (1, -1) if torch.equal(out_mask, torch.rot90(mask, k, dims=(1, 2)))]
    assert len(matches) == 1
    expected_image = torch.rot90(image, matches[0], dims=(1, 2))
    assert torch.allclose(out_image, expected_image, atol=1e-5)


def test_flips_move_image_and_mask_identically():
    image, mask = _shape_pair()
    out_image, out_mask = apply_affine(image, mask, AffineParams(hflip=True, vflip=True))
    assert torch.equal(out_mask, mask.flip(-1).flip(-2))
    assert torch.equal(out_image, image.flip(-1).flip(-2))


def test_zoom_by_two_about_the_centre_scales_the_area_by_four():
    mask = torch.zeros(1, 64, 64)
    mask[0, 24:40, 24:40] = 1.0  # 16x16 square centred on the image centre
    image = mask.expand(3, -1, -1).clone()
    _, out_mask = apply_affine(image, mask, AffineParams(scale=2.0))
    rows, cols = torch.nonzero(out_mask[0], as_tuple=True)
    assert out_mask.sum().item() == pytest.approx(32 * 32, rel=0.05)
    assert rows.float().mean().item() == pytest.approx(31.5, abs=0.5)
    assert cols.float().mean().item() == pytest.approx(31.5, abs=0.5)


@pytest.mark.parametrize("mask_mode", ["bilinear", "nearest"])
def test_random_rotation_scale_flip_keep_mask_binary_and_aligned_with_image(mask_mode):
    # The red channel carries the same {0, 1} shape as the mask; after any transform, the
    # resampled red channel thresholded at 0.5 must be the mask (same grid, same flips).
    image, mask = _shape_pair()
    spec = AugmentSpec(rotation=(0, 360), scale=(0.75, 1.5), hflip=0.5, vflip=0.5, mask_mode=mask_mode)
    for index in range(20):
        params = sample_affine(spec, item_generator(0, 0, index))
        out_image, out_mask = apply_affine(image, mask, params, mask_mode=mask_mode)
        assert out_mask.shape == mask.shape and out_mask.dtype == torch.float32
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        red = (out_image[0] >= 0.5).float()
        if mask_mode == "bilinear":
            assert torch.equal(red, out_mask[0])
        else:  # nearest differs from thresholded bilinear only along the boundary
            assert (red != out_mask[0]).float().mean().item() < 0.02
        if out_mask.sum() > 0:  # the shape's centroid moved identically in both
            centre_red = torch.nonzero(red).float().mean(0)
            centre_mask = torch.nonzero(out_mask[0]).float().mean(0)
            assert torch.allclose(centre_red, centre_mask, atol=1.0)


def test_non_square_rotation_keeps_shapes_rigid():
    # A centred disc stays a disc (same area) under rotation on a 48x96 image: the
    # normalised-coordinate correction in the affine matrix is what makes this hold.
    h, w = 48, 96
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    disc = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) <= 15**2).float()[None]
    _, out = apply_affine(disc.expand(3, -1, -1).clone(), disc, AffineParams(angle=37.0))
    assert out.sum().item() == pytest.approx(disc.sum().item(), rel=0.03)
    rows, cols = torch.nonzero(out[0], as_tuple=True)
    assert (rows.max() - rows.min()).item() == pytest.approx((cols.max() - cols.min()).item(), abs=1)


def test_augment_pair_is_reproducible_under_a_generator_and_varies_with_it():
    image, mask = _shape_pair()
    image = image + 0.3 * torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    image = image.clamp(0, 1)
    a = augment_pair(image, mask, VAIHINGEN_AUGMENT, item_generator(5, 0, 1))
    b = augment_pair(image, mask, VAIHINGEN_AUGMENT, item_generator(5, 0, 1))
    c = augment_pair(image, mask, VAIHINGEN_AUGMENT, item_generator(5, 1, 1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    for spec in (VAIHINGEN_AUGMENT, MONUSEG_AUGMENT, CITYSCAPES_AUGMENT):
        out_image, out_mask = augment_pair(image, mask, spec, item_generator(0, 0, 3))
        assert out_image.min() >= 0 and out_image.max() <= 1
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}


def test_colour_adjustments_match_torchvision_definitions():
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(3, 8, 8, generator=gen)
    assert torch.allclose(adjust_brightness(image, 0.5), image * 0.5)
    assert torch.equal(adjust_brightness(image, 1.0), image)
    # Contrast 0: every pixel is the mean luma (0.2989 R + 0.587 G + 0.114 B).
    luma = (0.2989 * image[0] + 0.587 * image[1] + 0.114 * image[2]).mean()
    assert torch.allclose(adjust_contrast(image, 0.0), luma.expand_as(image))
    # Saturation 0: greyscale, all channels equal.
    grey = adjust_saturation(image, 0.0)
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])


def test_hue_shift_agrees_with_colorsys():
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(3, 4, 5, generator=gen)
    shift = 0.21
    out = adjust_hue(image, shift)
    for y in range(4):
        for x in range(5):
            h, s, v = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
            expected = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
            assert out[:, y, x].tolist() == pytest.approx(expected, abs=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert adjust_hue(red, 1 / 3).flatten().tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    assert torch.allclose(adjust_hue(image, 0.0), image, atol=1e-6)


def test_colour_jitter_without_ranges_is_identity_and_draws_nothing():
    image = torch.rand(3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert color_jitter(image, AugmentSpec(), gen) is image
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())


def test_spec_rejects_invalid_ranges():
    with pytest.raises(ValueError):
        AugmentSpec(scale=(0.0, 1.0))
    with pytest.raises(ValueError):
        AugmentSpec(hue=0.7)
    with pytest.raises(ValueError):
        AugmentSpec(hflip=1.5)
    with pytest.raises(ValueError):
        AugmentSpec(mask_mode="bicubic")  # type: ignore[arg-type]
