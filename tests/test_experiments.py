"""The experiment scripts that move data: what they write must score as the original does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

from segdiff.data import Vaihingen

ROOT = Path(__file__).resolve().parent.parent


def write_vaihingen(folder: Path, numbers: list[int], size: int = 512) -> None:
    """Tiles in the release's format: RGB TIFFs and 1-bit MinIsWhite masks (stored bits inverted)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for n in numbers:
        tifffile.imwrite(folder / f"building_{n:03d}.tif", rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                         photometric="rgb")
        mask = np.zeros((size, size), dtype=bool)
        mask[size // 4 + n % 7: size // 2 + 3 * n % 11, size // 3: 3 * size // 4] = True
        tifffile.imwrite(folder / f"building_mask_{n:03d}.tif", ~mask, photometric="miniswhite")


def test_vaihingen_256_copy_gives_the_loaders_masks_exactly_and_images_within_rounding(tmp_path):
    source = tmp_path / "data" / "vaihingen" / "buildings"
    write_vaihingen(source, [1, 2, 3, 101, 102])
    out = tmp_path / "copy"
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "vaihingen_256.py"), str(tmp_path / "data"),
                             str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "5 tiles written" in result.stdout
    for split in ("train", "test"):
        original, copy = Vaihingen(tmp_path / "data", split), Vaihingen(out, split)
        assert copy.names == original.names and len(copy) > 0
        for i in range(len(copy)):
            (image_a, mask_a), (image_b, mask_b) = original[i], copy[i]
            assert torch.equal(mask_a, mask_b)  # the ground truth every score uses
            assert (image_a - image_b).abs().max().item() <= 0.5 / 255 + 1e-6
    assert sum(p.stat().st_size for p in (out / "vaihingen" / "buildings").iterdir()) < sum(
        p.stat().st_size for p in source.iterdir()) / 3


def test_every_training_stage_of_the_vaihingen_page_builds_its_config(tmp_path, monkeypatch):
    # A mistyped flag would otherwise surface only when `run` reaches its stage, hours in.
    import importlib.util
    import shlex

    from segdiff.cli import _train_config, build_parser

    spec = importlib.util.spec_from_file_location("vaihingen_cpu", ROOT / "experiments" / "vaihingen_cpu.py")
    page = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, page)  # its dataclasses look their module up there
    spec.loader.exec_module(page)
    names = [s.name for s in page.STAGES]
    assert len(names) == len(set(names))
    assert all(dep in names for s in page.STAGES for dep in s.after)
    parser = build_parser()
    built = {}
    for stage in page.STAGES:
        words = shlex.split(stage.command.format(data=tmp_path, runs=tmp_path))
        assert words[0].startswith("OMP_NUM_THREADS=") and words[1] == "segdiff"
        args = parser.parse_args(words[2:])
        if words[2] == "train":
            built[stage.name] = _train_config(args)
    for name, *_ in page.VARIANTS:
        assert f"test-{name}" in names and built[f"train-{name}"].train.out_dir == str(tmp_path / name)
    # The page's main run is the preset as it stands; the flags of the older runs rebuild the
    # preset's second version (what `--preset vaihingen-cpu` gave when they ran) field for field.
    from segdiff.config import ExperimentConfig, ModelConfig

    preset = ExperimentConfig.from_preset("vaihingen-cpu")
    assert built["train-segdiff"].model == preset.model and built["train-segdiff"].train.timestep_power == 2
    second = built["train-segdiff-v2"]
    assert second.model == ModelConfig(image_size=64, base_channels=32, channel_mult=(1, 2, 2, 4), num_res_blocks=1,
                                       attention_resolutions=(16, 8), norm_groups=8, dropout=0.0, rrdb_blocks=1,
                                       rrdb_channels=16, rrdb_growth=8, conditioning="sum")
    assert (second.train.timestep_power, second.train.max_steps, second.train.lr_schedule) == (1, 5400, "cosine")
    assert built["train-segdiff-tpow2"].train.timestep_power == 2
    assert built["train-segdiff-tpow2-concat"].model.conditioning == "concat"
    dice = built["train-segdiff-dice"]
    assert dice.train.dice_weight == 1 and dice.model == preset.model and dice.diffusion == preset.diffusion
    assert built["train-segdiff-5level"].model.channel_mult == (1, 2, 4, 8, 8)
    assert built["train-segdiff-constant-lr"].train.lr_schedule == "constant"
    assert built["train-segdiff-constant-lr"].model == second.model
    assert [built[f"train-ablation-{c}"].model.conditioning for c in page.CONDITIONINGS] == list(page.CONDITIONINGS)
