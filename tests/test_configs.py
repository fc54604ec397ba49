"""The config files under configs/: each is a full ExperimentConfig that `segdiff train --config FILE` reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segdiff.config import ExperimentConfig

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("**/*.yaml"))


def test_configs_folder_holds_config_files():
    assert CONFIGS, "no configs/**/*.yaml found"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_file_loads_and_round_trips_through_yaml(path: Path):
    data = yaml.safe_load(path.read_text())
    cfg = ExperimentConfig.from_dict(data)  # unknown keys or invalid values raise here, naming them
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert ExperimentConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_file_is_complete_and_says_what_it_is(path: Path):
    # Every field written out, so the file alone says what runs, whatever the defaults become.
    text = path.read_text()
    cfg = ExperimentConfig.from_dict(yaml.safe_load(text))
    assert yaml.safe_load(text) == yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert text.startswith("# "), f"{path}: the first line should be a comment saying what the config is"
