"""train.tensorboard: event files holding log.jsonl's values and validation pictures; a clear error without the package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from segdiff.config import ConfigError, ExperimentConfig
from segdiff.training import train

STEPS = 4


def tiny(out: Path, *sets: str) -> ExperimentConfig:
    return ExperimentConfig.tiny().override([
        "data.num_train=32", "diffusion.num_steps=25", "train.batch_size=8", "train.device=cpu",
        f"train.max_steps={STEPS}", "train.log_every=1", "train.val_every=2", "train.val_generations=1",
        f"train.out_dir={out}", *sets])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard", reason="the optional extra: pip install -e '.[tensorboard]'")
    out = tmp_path_factory.mktemp("run")
    train(tiny(out, "train.tensorboard=true"), progress=False)
    return out


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _as_float32(value: float) -> float:
    return float(np.float32(value))  # event files store scalars as float32


def test_scalars_equal_the_values_in_log_jsonl(run):
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    events = _events(run)
    read = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    print("read back from the event file:", json.dumps(read))
    train_records = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, STEPS + 1))
    for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
                     ("samples_per_s", "train/samples_per_s")):
        assert read[tag] == [(r["step"], _as_float32(r[key])) for r in train_records], tag
    val_records = [r for r in records if r["event"] == "val"]
    assert [r["step"] for r in val_records] == [2, 4]
    assert read["val/iou"] == [(r["step"], _as_float32(r["val_iou"])) for r in val_records]


def test_validation_pictures_of_the_first_four_items_at_each_validation(run):
    events = _events(run)
    tags = events.Tags()["images"]
    assert len(tags) == 4 and all(t.startswith("val_examples/") for t in tags), tags
    for tag in tags:
        pictures = events.Images(tag)
        assert [p.step for p in pictures] == [2, 4]
        # input | ground truth | probability | uncertainty, each at the 32 px scoring size
        assert (pictures[0].width, pictures[0].height) == (4 * 32, 32)


def test_the_csv_and_jsonl_logs_hold_the_same_records_with_tensorboard_on(run):
    lines = (run / "log.csv").read_text().splitlines()
    assert len(lines) - 1 == len((run / "log.jsonl").read_text().splitlines())


def test_tensorboard_true_without_the_package_names_the_extra(tmp_path, monkeypatch):
    # None in sys.modules makes `import` raise ImportError, as on an install without the extra.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"segdiff\[tensorboard\]"):
        train(tiny(tmp_path / "run", "train.tensorboard=true"), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_tensorboard_unset_without_the_package_trains_without_event_files(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    train(tiny(out, "train.max_steps=1", "train.val_every=0"), progress=False)
    assert (out / "log.jsonl").is_file() and not (out / "tensorboard").exists()


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("null", None)])
def test_tensorboard_setting_takes_true_false_and_null(text, value):
    cfg = ExperimentConfig.tiny().override([f"train.tensorboard={text}"])
    assert cfg.train.tensorboard is value
    assert ExperimentConfig.from_dict(cfg.to_dict()).train.tensorboard is value


def test_tensorboard_setting_refuses_other_values():
    with pytest.raises(ConfigError, match=r"config.train.tensorboard: expected true or false or null, found 1"):
        ExperimentConfig.tiny().override(["train.tensorboard=1"])
