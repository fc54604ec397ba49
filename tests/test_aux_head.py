"""The auxiliary head on F(I) (model.aux_head, train.aux_weight): deep supervision of the image encoder."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from segdiff import models
from segdiff.checkpoint import load_checkpoint
from segdiff.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from segdiff.model import SegDiff
from segdiff.models import build_model, masked_dice_bce
from segdiff.training import train


def aux_config(weight: float = 0.5) -> ExperimentConfig:
    cfg = ExperimentConfig.from_preset("tiny")
    return replace(cfg, model=replace(cfg.model, aux_head=True), train=replace(cfg.train, aux_weight=weight))


# ----------------------------------------------------------------------------------------------
# The loss


def test_masked_dice_bce_matches_a_hand_computed_case_and_ignores_void_pixels():
    ln3 = math.log(3)
    # One 2x2 tile; the bottom-left pixel is void (-1). Probabilities of the valid ones: 1/2, 3/4, 3/4.
    mask = torch.tensor([[[[1.0, 0.0], [-1.0, 1.0]]]])
    logits = torch.tensor([[[[0.0, ln3], [7.0, ln3]]]], requires_grad=True)
    # BCE over the 3 valid pixels: (-ln 1/2 - ln 1/4 - ln 3/4) / 3 = (5 ln 2 - ln 3) / 3.
    # Dice: intersection 1/2 + 3/4 = 5/4, sum of p 2, sum of mask 2 -> 1 - 2.5 / 4.
    expected = (1 - (2.5 + 1e-5) / (4 + 1e-5)) + (5 * math.log(2) - ln3) / 3
    loss = masked_dice_bce(logits, mask)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert logits.grad[0, 0, 1, 0] == 0 and (logits.grad[0, 0, 0] != 0).all()
    # Whatever the logit at the void pixel, the loss stays.
    for value in (-7.0, 0.0, 30.0):
        moved = logits.detach().clone()
        moved[0, 0, 1, 0] = value
        assert masked_dice_bce(moved, mask).item() == pytest.approx(loss.item(), abs=1e-7)


@pytest.mark.parametrize("channels", [1, 2])
def test_masked_dice_bce_without_void_pixels_is_monais_batch_dice_plus_bce(channels):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, channels, 8, 8, generator=g) * 3
    mask = (torch.rand(3, channels, 8, 8, generator=g) > 0.7).float()
    mask[1] = 0  # a tile without foreground: one ratio over the batch keeps it no 0/0
    if channels == 1:
        reference = DiceCELoss(sigmoid=True, batch=True)(logits, mask)
    else:  # DiceCELoss takes softmax cross-entropy over several channels; the head's are independent
        reference = (DiceLoss(sigmoid=True, batch=True)(logits, mask)
                     + torch.nn.functional.binary_cross_entropy_with_logits(logits, mask))
    assert masked_dice_bce(logits, mask).item() == pytest.approx(reference.item(), abs=1e-6)


@pytest.mark.parametrize("void", [False, True])
def test_per_image_dice_bce_is_the_unet_baselines_loss(void):
    # train.dice_batch=false: the logits network's loss is the U-Net's (monai's DiceCELoss, or its
    # MaskedDiceLoss + the cross-entropy over labelled pixels), whatever the void pixels.
    from segdiff.config import ExperimentConfig
    from segdiff.labels import IGNORE

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 8, 8, generator=g) * 3
    mask = (torch.rand(4, 1, 8, 8, generator=g) > 0.8).float()
    mask[2] = 0  # an image without foreground
    if void:
        mask[torch.rand(4, 1, 8, 8, generator=g) > 0.7] = IGNORE
    unet = build_model(ExperimentConfig.cpu().override(["model.kind=unet"]))
    reference = unet.loss(lambda image: logits, torch.zeros(4, 3, 8, 8), mask, g, unet.config.train, slice(None))
    ours = masked_dice_bce(logits, mask, batch=False)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)
    assert ours.item() != pytest.approx(masked_dice_bce(logits, mask).item(), abs=1e-3)  # not the batch ratio


# ----------------------------------------------------------------------------------------------
# The network


def test_without_aux_head_the_network_and_its_checkpoints_are_unchanged():
    cfg = ExperimentConfig.from_preset("tiny")
    torch.manual_seed(0)
    plain = SegDiff(cfg.model)
    assert plain.aux_head is None and not [k for k in plain.state_dict() if "aux" in k]
    # A config written before the option (no aux_head, no aux_weight) reads as the option off.
    old = cfg.to_dict()
    del old["model"]["aux_head"], old["train"]["aux_weight"]
    assert ExperimentConfig.from_dict(old) == cfg
    # The head is built last: with the same seed every other layer starts the same, so the same
    # prediction, and the state dicts differ by the head's keys alone.
    torch.manual_seed(0)
    with_head = SegDiff(aux_config().model)
    extra = set(with_head.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("aux_head.") for k in extra)
    assert set(plain.state_dict()) <= set(with_head.state_dict())
    x_t, t, image = torch.randn(2, 1, 32, 32), torch.tensor([3, 70]), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(with_head(x_t, t, image), plain(x_t, t, image), rtol=0, atol=0)
        output, logits = with_head(x_t, t, image, with_aux=True)
    torch.testing.assert_close(output, plain(x_t, t, image).detach(), rtol=0, atol=0)
    assert logits.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="aux_head"):
        plain(x_t, t, image, with_aux=True)


@pytest.mark.parametrize("conditioning", ["sum", "add-after-down-1"])
def test_the_aux_term_alone_trains_f_at_the_start_from_one_run_of_f(conditioning):
    cfg = aux_config(0.5)
    cfg = replace(cfg, model=replace(cfg.model, conditioning=conditioning))
    torch.manual_seed(0)
    segmenter = build_model(cfg)
    net = segmenter.net.train()
    g = torch.Generator().manual_seed(1)
    image = torch.rand(16, 3, 32, 32, generator=g)
    mask = (torch.rand(16, 1, 32, 32, generator=g) > 0.6).float()
    f_runs = []
    net.image_encoder.register_forward_hook(lambda *a: f_runs.append(1))

    def loss_and_grads(train_config: TrainConfig) -> tuple[float, dict[str, torch.Tensor]]:
        net.zero_grad(set_to_none=False)
        loss = segmenter.loss(net, image, mask, torch.Generator().manual_seed(2), train_config, slice(None))
        loss.backward()
        return loss.item(), {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                             for n, p in net.named_parameters()}

    plain, plain_grads = loss_and_grads(replace(cfg.train, aux_weight=0.0))
    both, grads = loss_and_grads(cfg.train)
    assert len(f_runs) == 2  # one run of F per loss, the head's included
    # The zero-initialised output layer passes no gradient back at the start: without the head, F
    # learns nothing from the first step; with it, F and the head get the aux term's gradient.
    f_names = [n for n in grads if n.startswith("image_encoder.")]
    assert all(plain_grads[n].abs().max() == 0 for n in f_names)
    assert all(grads[n].abs().max() > 0 for n in f_names)
    assert all(grads[n].abs().max() > 0 for n in grads if n.startswith("aux_head."))
    with torch.no_grad():
        aux = masked_dice_bce(net.aux_head(net._image_features(image)), mask).item()
    assert both == pytest.approx(plain + 0.5 * aux, abs=1e-5)


# ----------------------------------------------------------------------------------------------
# The config


def test_aux_config_errors_name_the_fields():
    cfg = ExperimentConfig.from_preset("tiny")
    with pytest.raises(ConfigError, match="aux_weight=-1"):
        TrainConfig(aux_weight=-1)
    with pytest.raises(ConfigError, match=r"train.aux_weight=0.5 needs model.aux_head=true"):
        replace(cfg, train=replace(cfg.train, aux_weight=0.5))
    with pytest.raises(ConfigError, match=r"model.aux_head=true needs train.aux_weight > 0"):
        replace(cfg, model=replace(cfg.model, aux_head=True))
    with pytest.raises(ConfigError, match="aux_head=true .* kind='unet'"):
        ModelConfig(kind="unet", aux_head=True)
    with pytest.raises(ConfigError, match="aux_head=true .* conditioning='image-concat'"):
        ModelConfig(conditioning="image-concat", aux_head=True)
    # The command line's --set takes both together, in any order.
    assert cfg.override(["train.aux_weight=0.5", "model.aux_head=true"]) == aux_config(0.5)


# ----------------------------------------------------------------------------------------------
# Training and sampling


def test_a_run_logs_mse_plus_the_weighted_aux_loss_and_sampling_never_runs_the_head(tmp_path: Path, monkeypatch):
    values = []
    original = models.masked_dice_bce

    def spy(logits, mask):
        value = original(logits, mask)
        values.append(value.item())
        return value

    monkeypatch.setattr(models, "masked_dice_bce", spy)
    cfg = ExperimentConfig.tiny().override([
        "data.num_train=64", "diffusion.num_steps=25", "train.val_every=0", "train.batch_size=8",
        "train.device=cpu", f"train.out_dir={tmp_path}", "diffusion.prediction=sample", "train.max_steps=1",
        "train.log_every=1", "model.aux_head=true", "train.aux_weight=0.5"])
    train(cfg, progress=False)
    # The zero-initialised output layer gives x_0 = 0 at step 1: MSE exactly 1 (x_0 is +-1).
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert len(values) == 1 and first["loss"] == pytest.approx(1 + 0.5 * values[0], abs=1e-5)
    assert load_checkpoint(tmp_path / "last.safetensors").config.train.aux_weight == 0.5

    model = models.load_model(tmp_path)  # the head's weights load with the rest
    assert model.net.aux_head is not None
    head_runs = []
    model.net.aux_head.register_forward_hook(lambda *a: head_runs.append(1))
    probs = model.generations(torch.rand(1, 3, 32, 32), [0], replace(cfg.sample, num_generations=1))
    assert probs.shape == (1, 1, 1, 32, 32) and not head_runs
