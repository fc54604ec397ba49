"""End to end through the command line: train, predict, errors a user meets."""

import numpy as np
import pytest
import torch
from PIL import Image

from segdiff.cli import main
from segdiff.data.synthetic import make_sample


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    code = main(["train", "--preset", "tiny", "--out", str(run), "--steps", "30", "--batch-size", "8",
                 "--set", "data.num_train=64", "--set", "train.val_every=30", "--set", "train.val_generations=1",
                 "--set", "diffusion.num_steps=25", "--set", "data.num_test=4"])
    assert code == 0
    return run


def test_train_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "log.jsonl", "last.safetensors", "best.safetensors"} <= names
    assert not [n for n in names if n.endswith(".tmp")]


def test_predict_writes_outputs_at_the_input_size(trained_run, tmp_path):
    image, _ = make_sample(5, 0, 32)
    big = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((50, 41))
    big.save(tmp_path / "scene.jpg")
    out = tmp_path / "out"
    assert main(["predict", str(trained_run), str(tmp_path / "scene.jpg"), "--out", str(out),
                 "--generations", "2"]) == 0
    for kind in ("mask", "prob", "uncertainty", "overlay"):
        with Image.open(out / f"scene_{kind}.png") as im:
            assert im.size == (50, 41)
    mask = np.asarray(Image.open(out / "scene_mask.png"))
    assert set(np.unique(mask)) <= {0, 255}


def test_predict_missing_image_is_a_clear_error_and_writes_nothing(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(trained_run), str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert "missing.png: no such image file" in capsys.readouterr().err
    assert not out.exists()


def test_predict_unreadable_image_names_the_file(trained_run, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["predict", str(trained_run), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_predict_with_a_non_checkpoint_is_a_clear_error(tmp_path, capsys):
    fake = tmp_path / "model.safetensors"
    fake.write_text("hello")
    assert main(["predict", str(fake), str(fake), "--out", str(tmp_path / "o")]) == 2
    assert "model.safetensors: not a readable safetensors file" in capsys.readouterr().err


def test_train_with_unknown_setting_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--set", "train.learning_rate=1"]) == 2
    assert "unknown key 'learning_rate'" in capsys.readouterr().err


def test_help_of_each_subcommand(capsys):
    for command in ("demo", "train", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    assert "--generations" in capsys.readouterr().out


def test_demo_runs_end_to_end_and_writes_its_pictures(tmp_path):
    from segdiff.demo import run_demo

    summary = run_demo(tmp_path, steps=3, num_generations=2, num_test=4, num_pictures=2, progress=False)
    assert 0.0 <= summary["held_out_iou"] <= 1.0 and summary["num_test"] == 4
    assert (tmp_path / "examples.png").is_file() and (tmp_path / "summary.json").is_file()
    kinds = {p.name.rsplit("_", 1)[1] for p in (tmp_path / "pictures").iterdir()}
    assert kinds == {"image.png", "gt.png", "prob.png", "uncertainty.png", "mask.png", "overlay.png"}


@pytest.mark.slow
def test_demo_reaches_held_out_iou_of_080_within_its_budget(tmp_path):
    # The README's promise: the default demo learns the synthetic task (IoU >= 0.80) in minutes.
    from segdiff.demo import run_demo

    summary = run_demo(tmp_path, progress=False)
    assert summary["held_out_iou"] >= 0.80


def test_best_threshold_iou_tries_every_level_and_both_polarities():
    from segdiff.demo import best_threshold_iou

    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # the left half
    # Intensity equal to the mask, or its negative: one threshold separates them exactly.
    assert best_threshold_iou(mask.expand(1, 3, 4, 4), mask) == 1.0
    assert best_threshold_iou(1 - mask.expand(1, 3, 4, 4), mask) == 1.0
    # A constant image: the best rule calls everything foreground, IoU = |G| / N = 8 / 16.
    assert best_threshold_iou(torch.full((1, 3, 4, 4), 0.3), mask) == 0.5
