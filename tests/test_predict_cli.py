"""`segdiff predict` on many images: folders and list files, resuming, sharding, sliding windows."""

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdiff import ExperimentConfig, SegDiff, load_model, predict
from segdiff.checkpoint import Checkpoint, save_checkpoint
from segdiff.cli import main
from segdiff.config import DataConfig, DiffusionConfig, SampleConfig
from segdiff.data import image_to_tensor, read_image, resize_image
from segdiff.sampling import generation_seeds
from segdiff.seeding import derive_seed
from segdiff.sliding import quadrants, stitch_quadrants
from segdiff.data.synthetic import make_sample

KINDS = ("mask", "prob", "uncertainty", "overlay")
FAST = ["--generations", "2", "--sampler", "ddim", "--steps", "4"]


def _random_checkpoint(folder: Path, cfg: ExperimentConfig) -> Path:
    """A real checkpoint of `cfg` with random, non-zero weights: no training needed."""
    torch.manual_seed(0)
    net = SegDiff(cfg.model)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.03)
    path = folder / "random.safetensors"
    save_checkpoint(path, Checkpoint(config=cfg, ema=net.state_dict()))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny preset (T=25; its sampling settings are the paper's K=30, ddpm over all T)."""
    cfg = replace(ExperimentConfig.tiny(), diffusion=DiffusionConfig(num_steps=25))
    return _random_checkpoint(tmp_path_factory.mktemp("ckpt"), cfg)


# Sampling settings saved in a checkpoint, none of them SampleConfig's default.
TUNED = SampleConfig(num_generations=2, sampler="ddim", num_sampling_steps=3, eta=0.5, symmetry="flips",
                     clip_x0=True, max_batch=3)


@pytest.fixture(scope="module")
def tuned_checkpoint(tmp_path_factory):
    """The tiny preset (T=25) whose config carries the sampling settings TUNED, and 2 synthetic test images."""
    cfg = replace(ExperimentConfig.tiny(), diffusion=DiffusionConfig(num_steps=25), sample=TUNED,
                  data=DataConfig(num_test=2))
    return _random_checkpoint(tmp_path_factory.mktemp("tuned"), cfg)


def write_image(path: Path, index: int, size=(40, 33)) -> Path:
    image, _ = make_sample(3, index, 48)
    array = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(array).resize(size).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "c.png", "d.png", "e.png"]):
        write_image(folder / name, i)
    (folder / "notes.txt").write_text("not an image")
    return folder


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def pictures(folder: Path) -> dict[str, bytes]:
    """The PNGs of `outputs`, without the uncertainty tables (one per rank under torchrun)."""
    return {name: data for name, data in outputs(folder).items() if name.endswith(".png")}


def uncertainty_rows(*folders: Path) -> dict[str, dict[str, str]]:
    """The rows of every uncertainty*.csv in `folders`, by image name."""
    rows = {}
    for folder in folders:
        for table in sorted(folder.glob("uncertainty*.csv")):
            with open(table, newline="") as f:
                rows.update({row["name"]: row for row in csv.DictReader(f)})
    return rows


def test_folder_and_list_file_inputs(checkpoint, images, tmp_path):
    extra = tmp_path / "more"
    extra.mkdir()
    write_image(extra / "f.png", 9)
    listing = tmp_path / "list.txt"
    listing.write_text("# one image per line, relative to this file\n\nmore/f.png\n")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(images), str(listing), "--out", str(out), *FAST]) == 0
    assert set(outputs(out)) == {f"{n}_{k}.png" for n in "abcdef" for k in KINDS} | {"uncertainty.csv"}
    with Image.open(out / "b_mask.png") as im:
        assert im.size == (40, 33)


def test_an_interrupted_run_continues_and_skips_finished_images(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(images), "--out", str(out), *FAST]) == 0
    first = outputs(out)
    stamps = {name: (out / name).stat().st_mtime_ns for name in first}
    (out / "c_mask.png").unlink()  # as if stopped while writing c's outputs
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(images), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "4 of 5 images already have all outputs" in printed and "[1/1]" in printed
    assert outputs(out) == first  # c redone identically, its row in uncertainty.csv too
    for name, stamp in stamps.items():
        if not name.startswith("c_") and name != "uncertainty.csv":
            assert (out / name).stat().st_mtime_ns == stamp  # the others untouched
    assert main(["predict", str(checkpoint), str(images), "--out", str(out), *FAST, "--overwrite"]) == 0
    assert "[5/5]" in capsys.readouterr().out


def test_ranks_split_the_images_and_their_union_is_the_single_process_run(checkpoint, images, tmp_path,
                                                                        monkeypatch, capsys):
    single = tmp_path / "single"
    assert main(["predict", str(checkpoint), str(images), "--out", str(single), *FAST]) == 0
    sharded = tmp_path / "sharded"
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        capsys.readouterr()
        assert main(["predict", str(checkpoint), str(images), "--out", str(sharded / str(rank)), *FAST]) == 0
        per_rank.append(outputs(sharded / str(rank)))
    assert set(per_rank[0]) - set(pictures(sharded / "0")) == {"uncertainty-rank0.csv"}
    assert set(per_rank[1]) - set(pictures(sharded / "1")) == {"uncertainty-rank1.csv"}
    assert {n[0] for n in pictures(sharded / "0")} == set("ace")
    assert {n[0] for n in pictures(sharded / "1")} == set("bd")
    assert {**pictures(sharded / "0"), **pictures(sharded / "1")} == pictures(single)  # byte for byte
    assert uncertainty_rows(sharded / "0", sharded / "1") == uncertainty_rows(single)


def test_an_image_depends_on_the_seed_and_its_name_only(checkpoint, images, tmp_path):
    alone = tmp_path / "alone"
    assert main(["predict", str(checkpoint), str(images / "c.png"), "--out", str(alone), *FAST]) == 0
    together = tmp_path / "together"
    assert main(["predict", str(checkpoint), str(images), "--out", str(together), *FAST]) == 0
    assert outputs(alone)["c_prob.png"] == outputs(together)["c_prob.png"]
    other = tmp_path / "other"
    assert main(["predict", str(checkpoint), str(images / "c.png"), "--out", str(other), *FAST, "--seed", "1"]) == 0
    assert outputs(other)["c_prob.png"] != outputs(alone)["c_prob.png"]


@pytest.mark.parametrize("symmetry", ["none", "dihedral"])
def test_predict_seeds_each_generation_from_seed_and_name(checkpoint, images, tmp_path, symmetry):
    """The CLI's probability map is `predict` on the resized image with generation_seeds(derive_seed(seed, name))."""
    out = tmp_path / "out"
    flags = ["--symmetry", symmetry] if symmetry != "none" else []
    assert main(["predict", str(checkpoint), str(images / "a.png"), "--out", str(out), *FAST, "--seed", "4",
                 *flags]) == 0
    model = load_model(checkpoint)
    image = image_to_tensor(read_image(images / "a.png"))
    pred = predict(model.net, resize_image(image, 32)[None], model.scheduler, model.config.sample,
                   num_generations=2, sampler="ddim", num_sampling_steps=4,
                   seeds=generation_seeds(derive_seed(4, "a"), 2), symmetry=symmetry)
    prob = torch.nn.functional.interpolate(pred.prob, size=(33, 40), mode="bilinear", align_corners=False)[0, 0]
    written = np.asarray(Image.open(out / "a_prob.png")).astype(np.int16)
    expected = (prob.clamp(0, 1).numpy() * 255 + 0.5).astype(np.int16)
    assert np.abs(written - expected).max() <= 1


def test_tile_at_overlap_0_reproduces_the_quadrant_protocol(checkpoint, tmp_path):
    write_image(tmp_path / "scan.png", 4, size=(50, 50))
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tmp_path / "scan.png"), "--out", str(out), *FAST,
                 "--tile", "--resize", "64", "--overlap", "0", "--max-batch", "64"]) == 0
    model = load_model(checkpoint)
    image = resize_image(image_to_tensor(read_image(tmp_path / "scan.png")), 64)
    seeds = [s for q in range(4) for s in generation_seeds(derive_seed(0, "scan"), 2, q)]
    parts = predict(model.net, quadrants(image), model.scheduler, model.config.sample, num_generations=2,
                    sampler="ddim", num_sampling_steps=4, seeds=seeds, max_batch=64)
    prob = torch.nn.functional.interpolate(stitch_quadrants(parts.prob)[None], size=(50, 50), mode="bilinear",
                                           align_corners=False)[0, 0]
    written = np.asarray(Image.open(out / "scan_prob.png"))
    assert np.array_equal(written, (prob.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))


def test_tile_segments_at_native_resolution(checkpoint, tmp_path):
    write_image(tmp_path / "wide.png", 2, size=(90, 41))
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tmp_path / "wide.png"), "--out", str(out), *FAST, "--tile",
                 "--sampler", "dpm-solver++"]) == 0
    for kind in KINDS:
        with Image.open(out / f"wide_{kind}.png") as im:
            assert im.size == (90, 41)


def test_predict_without_sampling_flags_samples_with_the_checkpoints_settings(tuned_checkpoint, images, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(tuned_checkpoint), str(images / "a.png"), "--out", str(out), "--seed", "4"]) == 0
    model = load_model(tuned_checkpoint)
    assert model.config.sample == TUNED
    image = image_to_tensor(read_image(images / "a.png"))
    pred = predict(model.net, resize_image(image, 32)[None], model.scheduler, TUNED,
                   seeds=generation_seeds(derive_seed(4, "a"), TUNED.num_generations))
    prob = torch.nn.functional.interpolate(pred.prob, size=(33, 40), mode="bilinear", align_corners=False)[0, 0]
    written = np.asarray(Image.open(out / "a_prob.png")).astype(np.int16)
    expected = (prob.clamp(0, 1).numpy() * 255 + 0.5).astype(np.int16)
    assert np.abs(written - expected).max() <= 1


def test_evaluate_samples_with_the_checkpoints_settings_unless_a_flag_overrides_them(tuned_checkpoint, tmp_path):
    common = ["evaluate", str(tuned_checkpoint), "--dataset", "synthetic", "--max-images", "1"]
    assert main([*common, "--out", str(tmp_path / "saved")]) == 0
    summary = json.loads((tmp_path / "saved" / "summary.json").read_text())
    assert summary["sample"] == asdict(TUNED)
    assert summary["num_generations"] == 2 and summary["curve"]["num_generations"] == [1, 2]
    assert (summary["sampler"], summary["num_steps"], summary["symmetry"]) == ("ddim", 3, "flips")
    assert summary["clip_x0"] is True and summary["max_batch"] == 3

    flags = ["--generations", "1", "--sampler", "sde-dpm-solver++", "--no-clip-x0"]
    assert main([*common, *flags, "--out", str(tmp_path / "flags")]) == 0
    summary = json.loads((tmp_path / "flags" / "summary.json").read_text())
    # The flags replace their fields; the saved DDIM eta does not carry over to another sampler.
    assert summary["sample"] == asdict(replace(TUNED, num_generations=1, sampler="sde-dpm-solver++", eta=0.0,
                                               clip_x0=False))
    assert summary["num_generations"] == 1 and summary["curve"]["num_generations"] == [1]
    assert summary["sampler"] == "sde-dpm-solver++" and summary["clip_x0"] is False


def test_input_errors_are_clear(checkpoint, images, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    write_image(other / "a.png", 7)
    assert main(["predict", str(checkpoint), str(images), str(other / "a.png"), "--out", str(tmp_path / "o")]) == 2
    assert "two inputs named 'a'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(checkpoint), str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "a folder without images" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "o"), "--resize", "64"]) == 2
    assert "--resize applies with --tile" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_image_over_the_decompression_bomb_limit_is_an_error_not_a_traceback(checkpoint, bomb_png, tmp_path,
                                                                               capsys):
    assert main(["predict", str(checkpoint), str(bomb_png), "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segdiff predict: error: {bomb_png}: the image declares 400,000,000 pixels")
    assert "exceeds Pillow's decompression-bomb limit of" in err and "Traceback" not in err


def test_torchrun_two_processes_write_what_one_process_writes(checkpoint, images, tmp_path):
    """Two real ranks under torchrun (no process group: RANK/WORLD_SIZE only), about 13 s."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    single, multi = tmp_path / "single", tmp_path / "multi"
    base = [str(checkpoint), str(images), *FAST, "--device", "cpu"]
    subprocess.run([sys.executable, "-m", "segdiff.cli", "predict", *base, "--out", str(single)], check=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "segdiff.cli", "predict", *base, "--out", str(multi)], check=True, env=env)
    assert pictures(multi) == pictures(single)
    assert {p.name for p in multi.glob("*.csv")} == {"uncertainty-rank0.csv", "uncertainty-rank1.csv"}
    assert uncertainty_rows(multi) == uncertainty_rows(single)
