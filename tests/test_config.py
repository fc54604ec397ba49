import json

import pytest
import yaml

from segdiff.config import PRESETS, ExperimentConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trips_through_json_and_yaml(name):
    cfg = ExperimentConfig.from_preset(name)
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ExperimentConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_paper_defaults():
    cfg = ExperimentConfig.vaihingen()
    assert cfg.diffusion.num_steps == 100 and cfg.sample.num_generations == 30
    assert cfg.train.lr == 1e-4 and cfg.train.ema_decay == 0.9999 and cfg.train.batch_size == 8
    assert ExperimentConfig.cityscapes().train.batch_size == 30


def test_unknown_keys_are_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"config.train: unknown key\(s\) learning_rate; valid keys: .*lr"):
        ExperimentConfig.from_dict({"train": {"learning_rate": 1}})


def test_override_parses_values_and_rejects_bad_keys():
    cfg = ExperimentConfig.tiny().override(["train.lr=2e-4", "model.conditioning=concat", "data.augment=false"])
    assert cfg.train.lr == 2e-4 and cfg.model.conditioning == "concat" and cfg.data.augment is False
    with pytest.raises(ValueError, match="unknown key 'foo'"):
        ExperimentConfig.tiny().override(["train.foo=1"])
    with pytest.raises(ValueError, match="image_size=30 must be divisible"):
        ExperimentConfig.tiny().override(["model.image_size=30"])


def test_config_sampler_choices_are_the_samplers_that_exist():
    from segdiff.config import SAMPLER_NAMES
    from segdiff.sampling import SAMPLERS

    assert set(SAMPLER_NAMES) == set(SAMPLERS)


@pytest.mark.parametrize("assignment,message", [
    # (assignment, the error it must raise: key, value found, its type, type expected)
    ("train.max_steps=10000.5", "config.train.max_steps: expected an integer, found 10000.5 (float)"),
    ("train.batch_size=true", "config.train.batch_size: expected an integer, found True (bool)"),
    ("model.channel_mult=4", "config.model.channel_mult: expected a list of integers, found 4 (int)"),
    ("model.channel_mult=[1, 2.5]", "config.model.channel_mult: expected a list of integers, found [1, 2.5] (list)"),
    ("train.lr=fast", "config.train.lr: expected a number, found 'fast' (str)"),
    ("data.augment=1", "config.data.augment: expected true or false, found 1 (int)"),
    ("model.conditioning=product", "config.model.conditioning='product' is not valid; choose one of sum, concat"),
])
def test_override_rejects_values_of_the_wrong_type_by_key_value_and_type(assignment, message):
    with pytest.raises(ValueError) as info:
        ExperimentConfig.tiny().override([assignment])
    assert str(info.value).startswith(message)


def test_override_reads_integral_numbers_for_integer_keys_and_text_for_string_keys():
    # YAML 1.1 reads "1e4" as text; an integer key takes it as 10000 (integral), as it takes 1.0e4.
    cfg = ExperimentConfig.tiny().override(["train.max_steps=1e4", "train.save_every=2.0e2", "train.lr=1",
                                            "train.out_dir=2024"])
    assert cfg.train.max_steps == 10000 and type(cfg.train.max_steps) is int
    assert cfg.train.save_every == 200 and type(cfg.train.save_every) is int
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float  # an integer is a valid float
    assert cfg.train.out_dir == "2024"  # a string key keeps the text, not YAML's int 2024


def test_from_dict_names_the_key_of_a_wrong_typed_value():
    with pytest.raises(ValueError, match=r"^config.model.image_size: expected an integer, found 'big' \(str\)$"):
        ExperimentConfig.from_dict({"model": {"image_size": "big"}})
    with pytest.raises(ValueError, match=r"^config.train.lr: expected a number, found '1e-4' \(str\) \(YAML 1.1"):
        ExperimentConfig.from_dict({"train": {"lr": "1e-4"}})
    with pytest.raises(ValueError, match=r"^config.sample.clip_x0: expected true or false, found 'yes' \(str\)$"):
        ExperimentConfig.from_dict({"sample": {"clip_x0": "yes"}})
    with pytest.raises(ValueError, match=r"^config.data.num_workers: expected an integer, found 2.5 \(float\)$"):
        ExperimentConfig.from_dict({"data": {"num_workers": 2.5}})
    # JSON lists become tuples, integral floats integers.
    cfg = ExperimentConfig.from_dict({"model": {"channel_mult": [1, 2, 2], "image_size": 32.0}})
    assert cfg.model.channel_mult == (1, 2, 2) and type(cfg.model.image_size) is int


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "batch_size", 0, "batch_size=0 must be >= 1"),
    ("train", "max_steps", -1, "max_steps=-1 must be >= 0"),
    ("train", "lr", 0.0, "lr=0.0 must be > 0"),
    ("train", "keep_last", 0, "keep_last=0 must be >= 1"),
    ("train", "max_nonfinite", 0, "max_nonfinite=0 must be >= 1"),
    ("train", "save_every", 0, "save_every=0 must be >= 1"),
    ("train", "log_every", -2, "log_every=-2 must be >= 1"),
    ("train", "grad_clip", -0.5, "grad_clip=-0.5 must be >= 0"),
    ("train", "val_every", -1, "val_every=-1 must be >= 0"),
    ("model", "rrdb_blocks", -1, "rrdb_blocks=-1 must be >= 0"),
    ("model", "num_res_blocks", 0, "num_res_blocks=0 must be >= 1"),
    ("sample", "num_generations", 0, "num_generations=0 must be >= 1"),
    ("sample", "max_batch", 0, "max_batch=0 must be >= 1"),
])
def test_range_errors_name_the_field_and_the_value_found(section, key, value, message):
    with pytest.raises(ValueError) as info:
        ExperimentConfig.from_dict({section: {key: value}})
    assert str(info.value) == message
