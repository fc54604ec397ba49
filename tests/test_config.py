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
