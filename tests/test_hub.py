"""Model folders (segdiff export), and loading them from a folder, a Hub repo id and the offline cache."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from segdiff import export as export_module
from segdiff.checkpoint import CheckpointError, load_checkpoint
from segdiff.cli import main, run_evaluation
from segdiff.config import ExperimentConfig
from segdiff.export import export_model
from segdiff.hub import CONFIG_NAME, FOLDER_FILES, WEIGHTS_NAME, source_config
from segdiff.model import SegDiff
from segdiff.models import DiffusionSegmenter, load_model
from segdiff.training import train

# Few generations and steps: the comparisons need identical outputs, not good ones.
FAST = dict(num_generations=2, sampler="ddim", num_sampling_steps=4)


def _run(out: Path, *sets: str) -> Path:
    """A real 3-step training run of the tiny preset (EMA and raw weights differ after it)."""
    cfg = ExperimentConfig.tiny().override([
        "data.num_train=32", "data.num_test=2", "diffusion.num_steps=25", "train.val_every=0", "train.batch_size=4",
        "train.max_steps=3", "train.device=cpu", f"train.out_dir={out}", *sets])
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"segdiff": _run(root / "segdiff"), "unet": _run(root / "unet", "model.kind=unet")}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    return {kind: export_model(run, root / kind) for kind, run in runs.items()}


def _generations(model) -> torch.Tensor:
    torch.manual_seed(123)
    images = torch.rand(2, 3, 32, 32)
    sample = replace(model.config.sample, **FAST)
    k = model.num_generations(sample)
    return model.generations(images, list(range(2 * k)), sample)


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


# --- 1. export, then load: the same predictions ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["segdiff", "unet"])
def test_export_then_load_model_gives_identical_generations(runs, exported, kind):
    from_run = _generations(load_model(runs[kind]))
    from_folder = load_model(exported[kind])
    assert from_folder.config.model.kind == kind
    assert from_folder.config == load_checkpoint(runs[kind], config_only=True).config
    assert torch.equal(_generations(from_folder), from_run)


def test_from_pretrained_gives_the_network_with_identical_generations(runs, exported):
    net = SegDiff.from_pretrained(exported["segdiff"])
    assert isinstance(net, torch.nn.Module) and not net.training
    config = source_config(exported["segdiff"])
    assert torch.equal(_generations(DiffusionSegmenter(config, net)), _generations(load_model(runs["segdiff"])))


def test_from_pretrained_refuses_a_unet_folder_by_name(exported):
    with pytest.raises(CheckpointError, match=r"'unet' model, not SegDiff.*load_model"):
        SegDiff.from_pretrained(exported["unet"])


# --- 2. what the folder holds ----------------------------------------------------------------------------
def test_the_folder_holds_exactly_config_weights_and_card(exported):
    for folder in exported.values():
        assert sorted(p.name for p in folder.iterdir()) == sorted(FOLDER_FILES)
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_the_weights_are_the_runs_ema_weights_under_plain_names(runs, exported):
    # val_every=0: no best.safetensors, so the run folder loads (and exports) last.safetensors
    with safe_open(str(runs["segdiff"] / "last.safetensors"), framework="pt") as f:
        ema = {k.removeprefix("ema/"): f.get_tensor(k) for k in f.keys() if k.startswith("ema/")}
        raw = {k.removeprefix("model/"): f.get_tensor(k) for k in f.keys() if k.startswith("model/")}
    weights = load_file(str(exported["segdiff"] / WEIGHTS_NAME))
    assert weights.keys() == ema.keys()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    assert any(not torch.equal(weights[k], raw[k]) for k in raw)  # after 3 steps the EMA differs from the raw
    with safe_open(str(exported["segdiff"] / WEIGHTS_NAME), framework="pt") as f:
        assert f.metadata()["segdiff_format"] == "segdiff-model" and f.metadata()["format"] == "pt"


def test_config_json_holds_the_config_classes_size_sampling_and_training_state(runs, exported):
    data = json.loads((exported["segdiff"] / CONFIG_NAME).read_text())
    state = load_checkpoint(runs["segdiff"], config_only=True).state
    assert data["format"] == "segdiff-model" and data["model_kind"] == "segdiff"
    assert data["classes"] == ["background", "foreground"] and data["input_size"] == 32
    assert data["sample"] == ExperimentConfig.tiny().sample.__dict__ | {"num_generations": 30}
    assert data["training"] == {"steps": 3, "elapsed_s": state["elapsed_s"], "best_val_iou": None}
    assert ExperimentConfig.from_dict({k: data[k] for k in ("model", "diffusion", "data", "train", "sample",
                                                            "preset")}) == source_config(runs["segdiff"])


def test_the_card_names_the_model_data_terms_steps_and_how_to_load(exported):
    card = (exported["segdiff"] / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: segdiff\n")
    assert "3 steps" in card and "32 x 32" in card and "background, foreground" in card
    assert "generated by segdiff itself" in card  # the synthetic data's terms
    assert 'load_model("MODEL")' in card and "segdiff predict MODEL" in card
    assert "Not evaluated" in card
    assert "SegDiff.from_pretrained" not in (exported["unet"] / "README.md").read_text()


def test_the_card_says_what_the_network_reads_of_the_noisy_mask():
    from segdiff.hub import ModelSource

    tiny = ExperimentConfig.tiny()
    card = export_module.model_card(ModelSource("run", Path("run"), tiny), None)
    assert "reading x_t" in card and "scaled by" not in card  # the paper's input
    changed = tiny.override(["diffusion.mask_input=posterior_mean", "diffusion.input_scale=0.1"])
    card = export_module.model_card(ModelSource("run", Path("run"), changed), None)
    assert "reading the posterior mean of the mask given x_t" in card and "masks scaled by 0.1" in card


def test_the_card_reports_an_evaluation_with_its_command(exported, tmp_path):
    evaluation = tmp_path / "eval"
    run_evaluation(exported["segdiff"], "synthetic", "", "test", evaluation, overrides=FAST, device="cpu")
    folder = export_model(exported["segdiff"], tmp_path / "with-scores", evaluation=evaluation)
    card = (folder / "README.md").read_text()
    assert "| metric | this run | published |" in card
    assert "segdiff evaluate MODEL --dataset synthetic --split test --generations 2 --sampler ddim --steps 4" in card


# --- 3. Hub repo ids, through the huggingface_hub cache --------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _offline_cache(tmp_path: Path, monkeypatch, folder: Path | None) -> Path:
    """A huggingface_hub cache holding repo "user/name" at `folder`'s files (none if None), offline.

    The layout huggingface_hub's file_download documents: <cache>/models--user--name/refs/main holds
    the commit hash; snapshots/<hash>/ the files (real files here; the Hub's downloads link to blobs/).
    HF_HUB_CACHE and HF_HUB_OFFLINE are read into huggingface_hub.constants at import, so both are set there.
    """
    cache = tmp_path / "hf-cache"
    repo = cache / "models--user--name"
    (repo / "refs").mkdir(parents=True)
    if folder is not None:
        (repo / "refs" / "main").write_text(COMMIT)
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", refuse)


def test_a_repo_id_loads_from_the_offline_cache(runs, exported, tmp_path, monkeypatch):
    cache = _offline_cache(tmp_path, monkeypatch, exported["segdiff"])
    _no_network(monkeypatch)
    # huggingface_hub's own cache reader sees the layout as a download would leave it.
    found = huggingface_hub.try_to_load_from_cache("user/name", CONFIG_NAME, cache_dir=cache)
    assert found == str(cache / "models--user--name" / "snapshots" / COMMIT / CONFIG_NAME)
    model = load_model("user/name")
    assert torch.equal(_generations(model), _generations(load_model(runs["segdiff"])))
    assert source_config("user/name") == model.config
    assert isinstance(SegDiff.from_pretrained("user/name"), SegDiff)


def test_a_repo_id_missing_from_the_offline_cache_is_a_clear_error(tmp_path, monkeypatch):
    _offline_cache(tmp_path, monkeypatch, None)
    _no_network(monkeypatch)
    with pytest.raises(CheckpointError, match=r"user/name: not in the local Hugging Face cache.*offline"):
        load_model("user/name")


def test_a_missing_path_that_is_no_repo_id_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file, run folder or model folder"):
        load_model(tmp_path / "nothing" / "here.safetensors")


# --- 4. folders that do not hold what they say ---------------------------------------------------------------
def test_weights_of_another_shape_than_the_config_are_refused_naming_the_folder(exported, tmp_path):
    folder = _copy(exported["segdiff"], tmp_path / "reshaped")
    data = json.loads((folder / CONFIG_NAME).read_text())
    data["model"]["channel_mult"] = [1, 2, 4]
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=rf"{folder}: weights do not match its config.*size mismatch"):
        load_model(folder)
    with pytest.raises(CheckpointError, match=rf"{folder}: weights do not match"):
        SegDiff.from_pretrained(folder)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_a_missing_or_unexpected_weight_is_refused_naming_the_folder(exported, tmp_path, change):
    folder = _copy(exported["segdiff"], tmp_path / change)
    weights = load_file(str(folder / WEIGHTS_NAME))
    if change == "missing":
        weights.pop(sorted(weights)[0])
    else:
        weights["extra.weight"] = torch.zeros(1)
    save_file(weights, str(folder / WEIGHTS_NAME))
    word = "Missing key" if change == "missing" else "Unexpected key"
    with pytest.raises(CheckpointError, match=rf"{folder}: weights do not match its config.*{word}"):
        load_model(folder)


def test_a_corrupt_config_json_is_refused_naming_the_file(exported, tmp_path):
    folder = _copy(exported["segdiff"], tmp_path / "corrupt")
    (folder / CONFIG_NAME).write_text('{"format": "segdiff-model", ')
    with pytest.raises(CheckpointError, match=rf"{folder / CONFIG_NAME}: not a readable JSON"):
        load_model(folder)
    assert main(["predict", str(folder), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("where", ["top", "model"])
def test_an_unknown_config_key_is_refused_naming_the_file_and_key(exported, tmp_path, where):
    folder = _copy(exported["segdiff"], tmp_path / where)
    data = json.loads((folder / CONFIG_NAME).read_text())
    (data if where == "top" else data["model"])["surprise"] = 1
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=rf"{folder / CONFIG_NAME}: .*unknown key\(s\) surprise"):
        source_config(folder)


def test_a_summary_key_that_contradicts_the_config_is_refused(exported, tmp_path):
    folder = _copy(exported["segdiff"], tmp_path / "contradicts")
    data = json.loads((folder / CONFIG_NAME).read_text())
    data["model_kind"] = "unet"
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"model_kind='unet' disagrees with its config"):
        load_model(folder)


# --- 5. the command ---------------------------------------------------------------------------------------
def test_export_refuses_a_non_empty_destination_unless_overwrite(runs, tmp_path, capsys):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert main(["export", str(runs["unet"]), str(dest)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert (dest / "keep.txt").read_text() == "mine"
    assert main(["export", str(runs["unet"]), str(dest), "--overwrite"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(FOLDER_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]  # the old folder and the temporary are gone


def test_export_never_replaces_the_folder_it_reads(runs, tmp_path, capsys):
    assert main(["export", str(runs["unet"]), str(runs["unet"]), "--overwrite"]) == 2
    assert "holds the source" in capsys.readouterr().err
    assert (runs["unet"] / "best.safetensors").exists() or (runs["unet"] / "last.safetensors").exists()


def test_a_failed_export_leaves_no_partial_folder(runs, tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(export_module, "model_card", interrupted)  # after the weights and config are written
    assert main(["export", str(runs["segdiff"]), str(tmp_path / "dest")]) == 130
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "not-a-checkpoint.safetensors").write_bytes(b"junk")
    assert main(["export", str(tmp_path / "not-a-checkpoint.safetensors"), str(tmp_path / "dest")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["not-a-checkpoint.safetensors"]


def test_predict_takes_a_model_folder(exported, tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray((torch.rand(40, 33, 3) * 255).byte().numpy()).save(image)
    out = tmp_path / "out"
    assert main(["predict", str(exported["segdiff"]), str(image), "--out", str(out), "--generations", "2",
                 "--sampler", "ddim", "--steps", "4", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"image_{k}.png" for k in ("mask", "overlay", "prob",
                                                                                "uncertainty")] + ["uncertainty.csv"]
