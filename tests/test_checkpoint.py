"""Checkpoints: round trip, code-free loading, clear errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from segdiff import DDPMScheduler, SegDiff, predict
from segdiff.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from segdiff.config import ExperimentConfig
from segdiff.models import DiffusionSegmenter, UNetSegmenter, load_model


def trained_like(cfg):
    torch.manual_seed(0)
    net = SegDiff(cfg.model).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


def test_save_load_gives_identical_predictions(tmp_path):
    cfg = ExperimentConfig.tiny()
    net = trained_like(cfg)
    path = save_checkpoint(tmp_path / "ck.safetensors",
                           Checkpoint(config=cfg, ema=net.state_dict(), state={"step": 12}))
    loaded = load_model(path)
    assert isinstance(loaded, DiffusionSegmenter) and loaded.config == cfg
    images, s = torch.rand(2, 3, 32, 32), DDPMScheduler(25)
    a = predict(net, images, s, num_generations=2, generator=torch.Generator().manual_seed(0))
    b = predict(loaded.net, images, s, num_generations=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.prob, b.prob)
    assert load_checkpoint(path).state == {"step": 12}


def test_checkpoint_leaves_no_temporary_files(tmp_path):
    cfg = ExperimentConfig.tiny()
    save_checkpoint(tmp_path / "ck.safetensors", Checkpoint(config=cfg, ema=SegDiff(cfg.model).state_dict()))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]


def test_weights_from_another_preset_are_a_clear_error(tmp_path):
    tiny = ExperimentConfig.tiny()
    small = ExperimentConfig.small()
    path = save_checkpoint(tmp_path / "mixed.safetensors",
                           Checkpoint(config=small, ema=SegDiff(tiny.model).state_dict()))
    with pytest.raises(CheckpointError,
                       match=r"mixed.safetensors: weights do not match its config \(kind 'segdiff', preset 'small'\)"):
        load_model(path)


def test_the_checkpoints_model_kind_picks_the_class_through_the_registry(tmp_path):
    cfg = ExperimentConfig.tiny()
    unet_cfg = cfg.override(["model.kind=unet", "model.unet_features=[4, 4, 8, 8, 16, 4]"])
    unet = UNetSegmenter(unet_cfg)
    path = save_checkpoint(tmp_path / "unet.safetensors", Checkpoint(config=unet_cfg, ema=unet.net.state_dict()))
    loaded = load_model(path)
    assert isinstance(loaded, UNetSegmenter) and loaded.config.model.kind == "unet"
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded.net(image), unet.net.eval()(image))
    # A U-Net's weights under a config naming SegDiff do not load, and the error says which kind.
    wrong = save_checkpoint(tmp_path / "wrong.safetensors", Checkpoint(config=cfg, ema=unet.net.state_dict()))
    with pytest.raises(CheckpointError, match=r"wrong.safetensors: weights do not match its config \(kind 'segdiff'"):
        load_model(wrong)


def test_non_segdiff_files_are_clear_errors(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="nope.safetensors: no such checkpoint file"):
        load_model(missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="garbage.safetensors: not a readable safetensors file"):
        load_model(garbage)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="other.safetensors: not a segdiff checkpoint"):
        load_model(other)
    bad_cfg = tmp_path / "badcfg.safetensors"
    save_file({"ema/w": torch.zeros(2)}, str(bad_cfg),
              metadata={"format": "segdiff", "config": json.dumps({"model": {"width": 3}})})
    with pytest.raises(CheckpointError, match="badcfg.safetensors: its config cannot be read.*width"):
        load_model(bad_cfg)
    with pytest.raises(CheckpointError, match="without best.safetensors or last.safetensors"):
        load_model(tmp_path)


def test_atomic_writes_get_the_usual_file_permissions(tmp_path):
    # mkstemp creates 0600 files; outputs on shared storage must be readable like any other file.
    import os

    from segdiff.io import atomic_write

    atomic_write(tmp_path / "a.txt", lambda p: p.write_text("x"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
