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


def test_a_wrong_typed_config_value_is_a_checkpoint_error_naming_the_file_and_key(tmp_path):
    path = tmp_path / "typed.safetensors"
    save_file({"ema/w": torch.zeros(2)}, str(path),
              metadata={"format": "segdiff", "config": json.dumps({"model": {"image_size": "big"}})})
    with pytest.raises(CheckpointError, match=r"typed.safetensors: its config cannot be read "
                                              r"\(config.model.image_size: expected an integer, found 'big' \(str\)\)"):
        load_checkpoint(path)


def test_remove_stale_temporaries_deletes_the_leftovers_of_killed_saves_only(tmp_path, monkeypatch):
    import os

    from segdiff.checkpoint import remove_stale_temporaries, save_last

    run = tmp_path / "run"
    run.mkdir()
    ckpt = Checkpoint(config=ExperimentConfig.tiny(), ema={"w": torch.zeros(2)})
    real_replace = os.replace

    def killed(*args):
        raise KeyboardInterrupt  # stands in for the process being killed before the rename

    # 1. A save killed before its rename (the real `atomic_write` temporary; the kill skips its cleanup).
    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run / "last-100.safetensors", ckpt)
    monkeypatch.undo()
    # 2. save_last killed between its hard link and the rename onto last.safetensors.
    monkeypatch.setattr(os, "replace", lambda src, dst: killed() if os.path.basename(src).startswith(".last.")
                        else real_replace(src, dst))
    with pytest.raises(KeyboardInterrupt):
        save_last(run, 200, ckpt, keep_last=3)
    monkeypatch.undo()
    leftovers = sorted(p for p in run.iterdir() if p.name.endswith(".tmp.safetensors"))
    assert sorted(p.name.split(".")[1] for p in leftovers) == ["last", "last-100"]

    # Files that merely look alike stay: not hidden, no 8-character random part, another suffix,
    # a folder, and a temporary in a subfolder.
    keep = ["last-200.safetensors", "config.json", "x.abcd1234.tmp.safetensors", ".last.tmp.safetensors",
            ".last.abc.tmp.safetensors", ".config.abcd1234.tmp.json", ".last.abcd1234.tmp.safetensors.bak"]
    for name in keep[1:]:
        (run / name).write_text("")
    (run / ".dir.abcd1234.tmp.safetensors").mkdir()
    (run / "sub").mkdir()
    (run / "sub" / ".last.abcd1234.tmp.safetensors").write_text("")

    assert remove_stale_temporaries(run) == leftovers
    assert not any(p.exists() for p in leftovers)
    assert all((run / name).exists() for name in keep)
    assert (run / ".dir.abcd1234.tmp.safetensors").is_dir() and (run / "sub" / ".last.abcd1234.tmp.safetensors").exists()
    assert remove_stale_temporaries(run) == []


def test_atomic_write_never_changes_the_process_umask(tmp_path, monkeypatch):
    # Setting the umask, even briefly, gives files another thread creates meanwhile (predict's
    # loader) mode 0666: atomic_write must read it without calling os.umask.
    import os

    from segdiff import io

    umask = os.umask(0o022)
    os.umask(umask)

    def forbidden(mask):
        raise AssertionError("os.umask called during atomic_write")

    monkeypatch.setattr(os, "umask", forbidden)
    io.atomic_write(tmp_path / "b.txt", lambda p: p.write_text("x"))
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert io._UMASK == umask
