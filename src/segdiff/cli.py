"""The `segdiff` command: thin parsers over the library's functions.

    segdiff demo                      train the tiny preset on built-in synthetic data, show results
    segdiff train --preset NAME ...   train a model; writes a run folder with checkpoints
    segdiff predict CKPT IMAGE...     segment images: mask, probability and uncertainty PNGs
    segdiff evaluate CKPT --dataset NAME ...   score a split with its test protocol, beside the paper
    segdiff baseline --preset NAME ...         train the plain U-Net baseline on the same data and budget
    segdiff reproduce --preset NAME ...        train, then evaluate on the test split (one command per result)
    segdiff export RUN DIR            a self-contained model folder (Hugging Face layout) with a model card

Every command that takes a checkpoint takes a checkpoint file, a run folder, an exported model folder
or a Hugging Face Hub repo id "user/name" (segdiff.hub).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from . import metrics
from .checkpoint import CheckpointError, load_resume_checkpoint
from .config import CONDITIONINGS, CROP_SETTINGS, PRESETS, SAMPLER_NAMES, SYMMETRY_NAMES, ConfigError, ExperimentConfig, SampleConfig
from .data import DATASETS, IMAGE_SUFFIXES, DataError, image_to_tensor, make_dataset, read_image, resize_image
from .data.nnunet import folder_to_nnunet, nnunet_to_folder
from .demo import run_demo
from .device import resolve_device
from .evaluation import evaluate, format_report
from .export import export_model
from .hub import source_config
from .io import atomic_write, colormap, colour_labels, overlay, save_labels, save_png
from .models import DEFAULT_ENSEMBLE_WEIGHT, Combination, Ensemble, Refinement, check_ensemble_weight, load_model
from .protocol import protocol_for, resize_probabilities
from .sampling import Prediction, generation_seeds
from .seeding import derive_seed
from .sliding import BLENDS, predict_sliding
from .training import TrainingDiverged, train

DESCRIPTION = "Image segmentation with diffusion probabilistic models (SegDiff, Amit et al. 2021)."


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


# --- demo ---------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, steps=args.steps, time_budget_min=args.time_budget, num_generations=args.generations,
             num_test=args.num_test, num_pictures=args.num_pictures, seed=args.seed, device=args.device,
             num_classes=args.classes)
    return 0


# --- train --------------------------------------------------------------------------------------------
def _train_config(args: argparse.Namespace, extra: list[str] = ()) -> ExperimentConfig:
    """The ExperimentConfig that `train`, `baseline` and `reproduce` arguments describe."""
    try:
        if getattr(args, "resume", None) and not (args.config or args.preset):
            # Continue with the run's own config; --set and the flags below may change what may change.
            cfg = load_resume_checkpoint(args.resume, config_only=True)[1].config
            resumed = Path(args.resume)
            cfg = cfg.override([f"train.out_dir={resumed if resumed.is_dir() else resumed.parent}"])
        elif args.config:
            path = Path(args.config)
            if not path.is_file():
                raise UserError(f"{path}: no such config file")
            try:
                cfg = ExperimentConfig.from_dict(yaml.safe_load(path.read_text()) or {})
            except (yaml.YAMLError, ValueError) as exc:
                raise UserError(f"{path}: {exc}") from None
        else:
            cfg = ExperimentConfig.from_preset(args.preset or "tiny")
        sets = [*extra, *(args.set or [])]
        if args.dataset:
            sets.append(f"data.dataset={args.dataset}")
        if args.data:
            sets.append(f"data.root={args.data}")
        for flag, key in (("steps", "train.max_steps"), ("batch_size", "train.batch_size"), ("lr", "train.lr"),
                          ("time_budget", "train.time_budget_min"), ("device", "train.device"),
                          ("out", "train.out_dir"), ("seed", "train.seed"), ("conditioning", "model.conditioning"),
                          ("workers", "data.num_workers")):
            value = getattr(args, flag, None)
            if value is not None:
                sets.append(f"{key}={value}")
        return cfg.override(sets)
    except ConfigError as exc:  # the config's own checks: a value the user gave
        raise UserError(str(exc)) from None


def _run_training(cfg: ExperimentConfig, resume: str | None = None) -> Path:
    try:
        return train(cfg, resume=resume)  # prints the resolved config first
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None


def cmd_train(args: argparse.Namespace, extra: list[str] = ()) -> int:
    run = _run_training(_train_config(args, extra), resume=getattr(args, "resume", None))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"run folder: {run} (last.safetensors, best.safetensors, log.jsonl, log.csv, config.json)")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    """`segdiff train` with model kind "unet": the same loop, data, budget and checkpoints."""
    features = [] if args.features is None else [f"model.unet_features={list(args.features)}"]
    return cmd_train(args, ["model.kind=unet", *features])


# --- sampling settings ----------------------------------------------------------------------------------
_SAMPLE_FLAGS = {"generations": "num_generations", "sampler": "sampler", "steps": "num_sampling_steps",
                 "eta": "eta", "max_batch": "max_batch", "clip_x0": "clip_x0", "symmetry": "symmetry",
                 "autocast": "autocast", "channels_last": "channels_last", "compile": "compile"}


def sample_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The SampleConfig fields the sampling flags set (those given, not None)."""
    return {field: getattr(args, flag) for flag, field in _SAMPLE_FLAGS.items() if getattr(args, flag, None) is not None}


def resolved_sample(saved: SampleConfig, overrides: dict[str, Any]) -> SampleConfig:
    """The checkpoint's own sampling settings with the user's `overrides` applied."""
    given = dict(overrides)
    if given.get("sampler", saved.sampler) != "ddim" and "eta" not in given:
        given["eta"] = 0.0  # the saved DDIM eta does not carry over to another sampler
    try:
        return replace(saved, **given)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


# --- ensemble -----------------------------------------------------------------------------------------
def _source_name(source: str | Path) -> str:
    """A model source as summaries record it: an existing path made absolute, a Hub repo id as given."""
    return str(Path(source).resolve()) if Path(source).exists() else str(source)


def resolve_ensemble_weight(partner: str | None, weight: float | None, refine_step: int | None = None) -> float | None:
    """The resolved --ensemble-weight: the default with --ensemble, None without (where a weight given is
    refused) or with --refine-step (the partner's mask is refined, not blended); checked before any
    model is loaded."""
    if partner is None:
        for flag, value in (("--ensemble-weight", weight), ("--refine-step", refine_step)):
            if value is not None:
                raise UserError(f"{flag} applies with --ensemble RUN (the partner model)")
        return None
    if refine_step is not None:
        if weight is not None:
            raise UserError("--ensemble-weight blends the partner in, --refine-step refines its mask: give one")
        return None
    return check_ensemble_weight(DEFAULT_ENSEMBLE_WEIGHT if weight is None else weight)


def load_segmenter(checkpoint: str | Path, partner: str | None, weight: float | None, device,
                   refine_step: int | None = None) -> Any:
    """The model a command runs: `checkpoint`'s, or with a partner their `models.Ensemble`, or with
    `refine_step` the `models.Refinement` of the partner's mask."""
    if partner is None:
        return load_model(checkpoint, device=device)
    if refine_step is not None:
        return Refinement(load_model(checkpoint, device), load_model(partner, device), refine_step,
                          sources=(str(checkpoint), str(partner)))
    return Ensemble.load(checkpoint, partner, weight, device=device)


def describe_segmenter(model, checkpoint: str | Path) -> str:
    """One line naming what is run: the model kind and its source, or the two models of a combination."""
    if isinstance(model, Combination):
        return model.describe()
    return f"{model.config.model.kind} model from {checkpoint}"


# --- uncertainty.csv ----------------------------------------------------------------------------------
UNCERTAINTY_COLUMNS = ("name", "num_generations", "mean_entropy", "boundary_disagreement")


def uncertainty_row(name: str, pred: Prediction, num_generations: int) -> dict[str, Any]:
    """One image's row of uncertainty.csv, from its prediction at the resolution it was sampled
    (`metrics.mean_entropy`, `metrics.boundary_disagreement` of the generations' variance, the
    squared `Prediction.uncertainty`; left empty for multi-class models)."""
    disagreement = (float(metrics.boundary_disagreement(pred.prob, pred.uncertainty.square())[0])
                    if pred.prob.shape[1] == 1 else "")
    return {"name": name, "num_generations": num_generations,
            "mean_entropy": float(metrics.mean_entropy(pred.prob)[0]), "boundary_disagreement": disagreement}


def uncertainty_path(out: Path, rank: int, world: int) -> Path:
    """uncertainty.csv; under torchrun with N > 1 ranks each rank writes its own, uncertainty-rankR.csv."""
    return out / ("uncertainty.csv" if world == 1 else f"uncertainty-rank{rank}.csv")


def read_uncertainty(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of an uncertainty.csv by image name ({} when there is none)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != UNCERTAINTY_COLUMNS:
            raise UserError(f"{path}: not a segdiff uncertainty table (expected the columns "
                            f"{', '.join(UNCERTAINTY_COLUMNS)}); move it away or choose another --out")
        return {row["name"]: row for row in reader}


def write_uncertainty(path: Path, rows: dict[str, dict[str, Any]], order: list[str]) -> None:
    """Write `rows` atomically: the names of `order` first, in that order, then any others the file
    held before (images of an earlier call into the same folder), in their order."""
    first = [n for n in order if n in rows]
    listed = set(first)
    names = first + [n for n in rows if n not in listed]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=UNCERTAINTY_COLUMNS)
            writer.writeheader()
            writer.writerows(rows[n] for n in names)

    atomic_write(path, write)


# --- predict ------------------------------------------------------------------------------------------
def _input_paths(items: list[str]) -> list[Path]:
    """Image files, folders (their images) and text files listing one image per line (relative paths
    are relative to the list file; blank lines and # comments are skipped), all checked up front."""
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise UserError(f"{item}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = (line.strip() for line in item.read_text().splitlines())
            paths += [item.parent / line for line in lines if line and not line.startswith("#")]
        else:
            paths.append(item)
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such image file")
    by_stem: dict[str, Path] = {}
    for path in paths:
        if by_stem.setdefault(path.stem, path) != path:
            raise UserError(f"{path} and {by_stem[path.stem]}: two inputs named {path.stem!r} would write the same "
                            "outputs; rename one or run them into different --out folders")
    return paths


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment many images: listed, in folders or in list files; streamed, resumable, sharded.

    Rank r of a `torchrun --nproc_per_node=N` launch (RANK / WORLD_SIZE) takes images r::N of the
    sorted list; no process group is needed. Generation k of an image (of its window w with
    --tile) is seeded from (seed, image name, w, k) alone, so a sharded run writes byte for byte
    what one process writes. Outputs that already exist are skipped (each PNG is written
    atomically), so an interrupted run continues where it stopped.

    uncertainty.csv (uncertainty-rankR.csv per rank under torchrun) gets one row per image, in
    input order: its K, `metrics.mean_entropy` and `metrics.boundary_disagreement`, computed on the
    prediction at the resolution it was sampled; it is rewritten (atomically) after each image, and
    an image without a row is not done. With --ensemble RUN each generation is blended with RUN's
    prediction (`models.Ensemble`, the partner's weight --ensemble-weight).
    """
    paths = _input_paths(args.images)
    if args.resize is not None and not args.tile:
        raise UserError("--resize applies with --tile (without it every image is resized to the model's input)")
    weight = resolve_ensemble_weight(args.ensemble, args.ensemble_weight, args.refine_step)

    # This process's share, and what is left to do.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(args.out)
    multiclass = source_config(args.checkpoint).model.num_classes > 2
    kinds = ("labels", "overlay", "entropy") if multiclass else ("mask", "prob", "uncertainty", "overlay")
    mine = sorted(paths, key=lambda p: p.stem)[rank::world]
    table = uncertainty_path(out, rank, world)
    rows = read_uncertainty(table)
    share = set(mine)
    order = [p.stem for p in paths if p in share]  # this process's images in input order
    todo = [p for p in mine if args.overwrite or p.stem not in rows
            or not all((out / f"{p.stem}_{k}.png").exists() for k in kinds)]
    who = f"rank {rank}/{world}: " if world > 1 else ""
    if len(todo) < len(mine):
        print(f"{who}{len(mine) - len(todo)} of {len(mine)} images already have all outputs in {out}; skipping them")
    if not todo:
        return 0

    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    sample = resolved_sample(source_config(args.checkpoint).sample, sample_overrides(args))
    model = load_segmenter(args.checkpoint, args.ensemble, weight, device, args.refine_step)
    size = model.config.model.image_size
    overlap = size // 4 if args.overlap is None else args.overlap
    k = model.num_generations(sample)
    print(f"{who}{describe_segmenter(model, args.checkpoint)}; sampling: {sample.describe()}")

    def load(path: Path) -> torch.Tensor:
        return image_to_tensor(read_image(path, allow_gray=True))  # (3, H, W) in [0, 1]

    # Stream: the next image is decoded in a background thread while the current one is sampled.
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(load, todo[0])
        for n, path in enumerate(todo, 1):
            image = upcoming.result()
            upcoming = pool.submit(load, todo[n]) if n < len(todo) else None
            h, w = image.shape[-2:]
            image_seed = derive_seed(args.seed, path.stem)
            if args.tile:
                native = resize_image(image, args.resize) if args.resize else image
                pred = predict_sliding(model, native, sample, tile=size, overlap=overlap, blend=args.blend,
                                       image_seed=image_seed)
            else:
                pred = Prediction.from_generations(model.generations(
                    resize_image(image, size)[None], generation_seeds(image_seed, k), sample))
            row = uncertainty_row(path.stem, pred, k)
            if multiclass:
                _save_label_outputs(out, path.stem, image, pred, model.config.model, args.class_probs)
                rows[path.stem] = row
                write_uncertainty(table, rows, order)  # after the pictures: a row means the image is done
                print(f"{who}[{n}/{len(todo)}] {path} -> {out}/{path.stem}_{{labels,overlay,entropy}}.png "
                      f"(mean entropy {row['mean_entropy']:.3f})")
                continue
            # Probabilities and uncertainty back at the input's size (bilinear) before the 0.5 threshold.
            prob = resize_probabilities(pred.prob[0, 0].cpu(), (h, w))
            unc = resize_probabilities(pred.uncertainty[0, 0].cpu(), (h, w))
            save_png(out / f"{path.stem}_prob.png", prob)
            save_png(out / f"{path.stem}_uncertainty.png", colormap(unc * 2))
            save_png(out / f"{path.stem}_overlay.png", overlay(image, prob > 0.5))
            save_png(out / f"{path.stem}_mask.png", (prob > 0.5).float())
            rows[path.stem] = row
            write_uncertainty(table, rows, order)  # after the pictures: a row means the image is done
            print(f"{who}[{n}/{len(todo)}] {path} -> {out}/{path.stem}_{{mask,prob,uncertainty,overlay}}.png "
                  f"(foreground {100 * (prob > 0.5).float().mean():.1f} %, mean entropy {row['mean_entropy']:.3f}, "
                  f"boundary disagreement {row['boundary_disagreement']:.4f})")
    print(f"{who}uncertainty per image: {table} (mean_entropy, boundary_disagreement; sort to review the least "
          "certain first)")
    return 0


def _save_label_outputs(out: Path, stem: str, image: torch.Tensor, pred: Prediction, model_config,
                        class_probs: bool) -> None:
    """A multi-class prediction at the input's size: the class probabilities resized bilinearly, then
    the argmax. STEM_labels.png (indexed PNG: pixel value = class, palette = the classes' colours),
    STEM_overlay.png (the image half-tinted by class), STEM_entropy.png (entropy / log C on the colour
    ramp) and, with --class-probs, STEM_prob_CLASS.png per class (grey, 0..1)."""
    h, w = image.shape[-2:]
    prob = resize_probabilities(pred.prob[0].cpu(), (h, w))  # (C, h, w)
    labels = prob.argmax(dim=0)
    entropy = resize_probabilities(pred.uncertainty[0, 0].cpu(), (h, w)) / math.log(prob.shape[0])
    palette = model_config.palette
    save_labels(out / f"{stem}_labels.png", labels, palette)
    save_png(out / f"{stem}_overlay.png", 0.5 * image + 0.5 * colour_labels(labels, palette))
    save_png(out / f"{stem}_entropy.png", colormap(entropy))
    if class_probs:
        for name, channel in zip(model_config.classes, prob):
            save_png(out / f"{stem}_prob_{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png", channel)


# --- evaluate -----------------------------------------------------------------------------------------
def run_evaluation(checkpoint: str | Path, dataset: str, root: str, split: str, out: str | Path, *,
                   overrides: dict[str, Any], score_size: int | None = None, setting: str | None = None,
                   seed: int = 0, device: str = "auto", max_images: int | None = None,
                   ensemble: str | None = None, ensemble_weight: float | None = None,
                   refine_step: int | None = None) -> dict[str, Any]:
    """Score `checkpoint` on `dataset`'s `split` with its protocol; the checkpoint's own sampling
    settings with `overrides` (SampleConfig fields) applied. With `ensemble` (a partner model source)
    the scored model is their `models.Ensemble`, the partner weighted `ensemble_weight` (default
    0.5), recorded in summary.json as "ensemble"; with `refine_step` too, SegDiff refines the
    partner's mask from that step instead (`models.Refinement`), recorded as "refinement"."""
    # Arguments are checked before the checkpoint's weights are read or anything is sampled.
    if split not in ("val", "test"):
        raise UserError(f"--split {split!r}: evaluate runs on 'val' or 'test' (train is what the model was "
                        "fitted on)")
    if dataset not in DATASETS:
        raise UserError(f"--dataset {dataset!r}: unknown dataset; valid names: {', '.join(DATASETS)}")
    root = "" if dataset == "synthetic" else root or os.environ.get("SEGDIFF_DATA", "")  # synthetic reads no files
    if not root and dataset != "synthetic":
        raise UserError(f"--dataset {dataset}: needs a data folder; pass --data DIR or set SEGDIFF_DATA")
    weight = resolve_ensemble_weight(ensemble, ensemble_weight, refine_step)
    saved = source_config(checkpoint)
    sample = resolved_sample(saved.sample, overrides)
    try:
        protocol = protocol_for(dataset, saved.model.image_size, score_size=score_size,
                                setting=setting or saved.data.setting,
                                resize=saved.data.resize if dataset == saved.data.dataset else 0)
        # The checkpoint's seed and val_fraction carve the same validation split its training used.
        data_cfg = replace(saved.data, dataset=dataset, root=str(root), **({"setting": setting} if setting else {}))
    except ValueError as exc:
        raise UserError(f"{exc}") from None
    model = load_segmenter(checkpoint, ensemble, weight, resolve_device(device), refine_step)
    data = make_dataset(replace(saved, data=data_cfg), split, image_size=protocol.dataset_size)
    print(f"evaluating {describe_segmenter(model, checkpoint)} on {dataset} {split} ({len(data)} images"
          f"{f', the first {max_images}' if max_images else ''}), seed {seed}\nsampling: {sample.describe()}")
    metadata = {"checkpoint": _source_name(checkpoint), "dataset": dataset, "split": split,
                "data_root": str(Path(root).resolve()) if root else None}
    if ensemble is not None and refine_step is not None:
        metadata["refinement"] = {"partner": _source_name(ensemble), "partner_kind": model.partner.kind,
                                  "start_step": refine_step}
    elif ensemble is not None:
        metadata["ensemble"] = {"partner": _source_name(ensemble), "partner_kind": model.partner.kind,
                                "weight": weight}
    summary = evaluate(model, data, protocol, sample, seed=seed, out_dir=out, max_images=max_images,
                       metadata=metadata)
    print(format_report(summary))
    print(f"wrote {out}/: per_image.csv, curve.csv, generations_metrics.png, generations_calibration.png, "
          "reliability.png, examples.png, report.md, summary.json")
    return summary


def cmd_evaluate(args: argparse.Namespace) -> int:
    run_evaluation(args.checkpoint, args.dataset, args.data, args.split, args.out, overrides=sample_overrides(args),
                   score_size=args.score_size, setting=args.setting, seed=args.seed, device=args.device,
                   max_images=args.max_images, ensemble=args.ensemble, ensemble_weight=args.ensemble_weight,
                   refine_step=args.refine_step)
    return 0


# --- reproduce ----------------------------------------------------------------------------------------
def cmd_reproduce(args: argparse.Namespace) -> int:
    """Train a preset (its schedule, time budget and sampler), then score its best checkpoint on test."""
    cfg = _train_config(args)
    if cfg.data.dataset == "synthetic":
        raise UserError("reproduce runs a benchmark: pass a preset of one (vaihingen, vaihingen-cpu, monuseg, "
                        "cityscapes) or --dataset")
    run = _run_training(cfg)
    # Vaihingen is scored at the paper's 256 px whatever the model's input (evaluate --score-size).
    score_size = 256 if cfg.data.dataset == "vaihingen" and cfg.model.image_size != 256 else None
    out = run / "test"
    print(f"training done; evaluating {run} on the test split -> {out}")
    overrides = {} if args.generations is None else {"num_generations": args.generations}
    run_evaluation(run, cfg.data.dataset, cfg.data.root, "test", out, overrides=overrides, score_size=score_size,
                   setting=args.setting, device=cfg.train.device)
    return 0


# --- export -------------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    try:
        folder = export_model(args.source, args.dest, evaluation=args.evaluation, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {folder}/: config.json, model.safetensors, README.md; load it with "
          f"`segdiff predict {folder} IMAGES --out DIR` or segdiff.load_model({str(folder)!r})")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    if args.direction == "to-nnunet":
        print(folder_to_nnunet(args.source, args.destination, args.name))
    else:
        print(nnunet_to_folder(args.source, args.destination))
    return 0


# --- parser -------------------------------------------------------------------------------------------
def add_config_args(p: argparse.ArgumentParser) -> None:
    """The flags that describe a training run's config (train, baseline)."""
    p.add_argument("--preset", choices=sorted(PRESETS), help="starting configuration (default: tiny; with "
                   "--resume: the run's own)")
    p.add_argument("--config", help="YAML file with an ExperimentConfig (replaces --preset)")
    p.add_argument("--dataset", choices=DATASETS, help="the data (default: the preset's)")
    p.add_argument("--data", help="dataset folder (default: $SEGDIFF_DATA)")
    p.add_argument("--out", help="run folder")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="AdamW learning rate")
    p.add_argument("--time-budget", type=float, help="stop cleanly after this many minutes")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config field; repeatable")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """The sampling flags of predict, evaluate and reproduce: each defaults to the checkpoint's
    `sample` config (the preset's recommended settings); a flag given overrides it."""
    p.add_argument("--generations", type=int, help="K samples averaged per image (the paper: 30)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, help="ddpm: the paper's ancestral sampler; sde-dpm-solver++: "
                   "SDE-DPM-Solver++(2M), the fast one (10-20 steps); ddim and dpm-solver++ (ODE) are deterministic "
                   "given the start noise and less accurate on weak models")
    p.add_argument("--steps", type=int, help="sampling steps, respaced over the trained T (0: all T)")
    p.add_argument("--eta", type=float, help="DDIM's eta: 0 deterministic, 1 DDPM-like")
    p.add_argument("--max-batch", type=int, help="generations run at once; bounds memory")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clamp each sampling step's x_0 estimate to [-1, 1] (the paper's sampler does not)")
    p.add_argument("--symmetry", choices=SYMMETRY_NAMES,
                   help="spread the K generations over flipped (flips) or also 90-degree rotated (dihedral, square "
                   "inputs) copies of each image, mapped back before averaging: test-time augmentation at the same "
                   "cost (the paper: none)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC inputs to the network: faster convolutions on CPUs; results change by float rounding")
    p.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                   help="run the network in bfloat16 (float16 on GPUs without it): faster where the hardware has "
                   "bfloat16 units, slower elsewhere; changes results slightly (docs/performance.md)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the per-step network call: compiling takes minutes; meant for GPUs")


def add_ensemble_flags(p: argparse.ArgumentParser) -> None:
    """--ensemble and --ensemble-weight of predict and evaluate (`models.Ensemble`)."""
    p.add_argument("--ensemble", metavar="RUN_OR_FOLDER", help="blend in a second model (usually the U-Net "
                   "baseline's run, checkpoint or model folder): each generation becomes (1 - w) * its own "
                   "probability + w * the partner's, so the mean is (1 - w) * SegDiff's + w * the U-Net's")
    p.add_argument("--ensemble-weight", type=float, metavar="W", help="with --ensemble: the partner's weight w "
                   f"in [0, 1] (default: {DEFAULT_ENSEMBLE_WEIGHT})")
    p.add_argument("--refine-step", type=int, metavar="T0", help="with --ensemble: instead of blending, SegDiff "
                   "refines the partner's mask (SDEdit): its 2p - 1 noised to step T0, then sampled from T0 down "
                   "in --steps steps (models.Refinement)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segdiff", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train a tiny model on synthetic data and show its predictions",
                       description="Train the 'tiny' preset on the built-in synthetic dataset (textured shapes on "
                                   "textured, noisy backgrounds) on the CPU, then segment held-out images and "
                                   "write PNGs: image, ground truth, probability, uncertainty, mask, overlay. "
                                   "Prints the held-out IoU. Takes 2-4 minutes on 2 CPU cores.")
    p.add_argument("--out", default="segdiff-demo", help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--time-budget", type=float, default=2.75, help="stop training after this many minutes "
                   "(default: %(default)s)")
    p.add_argument("--generations", type=int, default=8, help="K samples averaged per image (default: %(default)s)")
    p.add_argument("--num-test", type=int, default=32, help="held-out images to score (default: %(default)s)")
    p.add_argument("--num-pictures", type=int, default=8, help="examples written as PNG (default: %(default)s)")
    p.add_argument("--classes", type=int, default=2, help="2: binary shapes (default); N > 2: shapes of N - 1 "
                   "classes told apart by texture, scored with per-class IoU and mIoU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: %(default)s)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a SegDiff model",
                       description="Train SegDiff. Start from a preset (the paper's: vaihingen, monuseg, cityscapes; "
                                   "CPU-sized: small, tiny) or a YAML config, override any field with "
                                   "--set SECTION.KEY=VALUE. Writes RUN/config.json, RUN/log.jsonl, RUN/log.csv, "
                                   "RUN/last-<step>.safetensors (the newest train.keep_last), RUN/last.safetensors "
                                   "(the newest) and RUN/best.safetensors (best validation IoU). --resume RUN "
                                   "continues a run where it stopped; Ctrl-C saves a checkpoint first. "
                                   "Several processes: torchrun --nproc_per_node=N -m segdiff.cli train ... "
                                   "(docs/training.md).",
                       epilog="example: segdiff train --preset vaihingen --data DATA --out runs/vai "
                              "--set train.val_every=2000")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN (its last.safetensors) or from a "
                   "checkpoint file; writes into RUN unless --out is given")
    p.add_argument("--conditioning", choices=CONDITIONINGS, help="the paper's conditioning variants (default sum)")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("baseline", help="train the plain U-Net baseline on a preset's data and budget",
                       description="Train MONAI's BasicUNet (Dice + cross-entropy, one forward pass per image) on "
                                   "the same data pipeline, input size, batch, AdamW settings, validation and time "
                                   "budget as `segdiff train` with the same preset, so `segdiff evaluate` can score "
                                   "both alike. Writes RUN/config.json, RUN/log.jsonl, RUN/last.safetensors and "
                                   "RUN/best.safetensors.",
                       epilog="example: segdiff baseline --preset vaihingen-cpu --data DATA --out runs/unet")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN or from a checkpoint file "
                   "(segdiff train --resume does the same)")
    p.add_argument("--features", type=int, nargs=6, help="BasicUNet widths: 5 encoder levels and the last decoder "
                   "(default: model.unet_features, MONAI's 32 32 64 128 256 32)")
    add_config_args(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("reproduce", help="train a preset on its benchmark, then evaluate it on the test split",
                       description="One command per result: train (the preset's schedule, time budget, validation) "
                                   "as `segdiff train` does, then score the best checkpoint on the test split with "
                                   "the dataset's protocol and the preset's sampler, as `segdiff evaluate` does, "
                                   "into RUN/test/ (metrics, curve over K, reliability, examples). Vaihingen is "
                                   "scored at the paper's 256 px whatever the model's input.",
                       epilog="examples: segdiff reproduce --preset vaihingen-cpu --data DATA --out "
                              "runs/vcpu (60 min on a CPU, docs/results.md); segdiff reproduce --preset vaihingen "
                              "--data DATA --out runs/vai (the paper's preset and schedule; a GPU)")
    p.add_argument("--generations", type=int, help="K for the test evaluation (default: the preset's sample."
                   "num_generations, 30 as in the paper)")
    p.add_argument("--setting", default=None, choices=CROP_SETTINGS,
                   help="Cityscapes crop setting for the test evaluation (default: %(default)s)")
    p.add_argument("--conditioning", choices=CONDITIONINGS, help="the paper's conditioning variants (default sum)")
    add_config_args(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("predict", help="segment images with a trained checkpoint",
                       description="Segment images of any size and common format (PNG, JPEG, TIFF). By default each "
                                   "image is resized (bilinear, antialiased) to the model's input, sampled K times, and "
                                   "the probability and uncertainty are resized back (bilinear) to the image's size "
                                   "before the 0.5 threshold. With --tile the image is segmented at its native "
                                   "resolution by overlapping windows of the model's input size, blended (see "
                                   "segdiff.sliding). Writes NAME_mask.png, NAME_prob.png, NAME_uncertainty.png and "
                                   "NAME_overlay.png into --out, skipping images whose four outputs exist (a multi-class model: "
                                   "NAME_labels.png, an indexed PNG of class indices with the classes' colours, "
                                   "NAME_overlay.png and NAME_entropy.png; the class probabilities are resized "
                                   "before the argmax), and uncertainty.csv: one row per image (name, K, "
                                   "mean_entropy, boundary_disagreement) to sort and review the least certain "
                                   "first. With --ensemble RUN each generation is blended with RUN's prediction. Under "
                                   "torchrun --nproc_per_node=N each process takes every N-th image.",
                       epilog="examples: segdiff predict runs/vai photos/ --out pred --sampler sde-dpm-solver++ --steps 10; "
                              "MoNuSeg's test protocol (512 from four 256 quadrants): segdiff predict runs/mon "
                              "test/images/ --out pred --tile --resize 512 --overlap 0")
    p.add_argument("checkpoint", help="a .safetensors checkpoint, a run folder (uses best, else last), a model "
                   "folder (segdiff export) or a Hugging Face Hub repo id user/name")
    p.add_argument("images", nargs="+", help="image files, folders of images, or .txt files listing one image "
                   "per line (relative to the list file)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tile", action="store_true", help="sliding-window inference at native resolution instead of "
                   "resizing to the model's input")
    p.add_argument("--overlap", type=int, default=None, help="with --tile: minimum overlap of neighbouring windows in "
                   "pixels (default: a quarter of the window)")
    p.add_argument("--class-probs", action="store_true", help="multi-class models: also write "
                   "NAME_prob_CLASS.png, each class's probability (grey, 0..1)")
    p.add_argument("--blend", default="linear", choices=BLENDS, help="with --tile: how overlapping "
                   "windows are blended (default: %(default)s; linear is exact stitching at --overlap 0)")
    p.add_argument("--resize", type=int, default=None, metavar="SIZE", help="with --tile: first resize the image to "
                   "SIZE x SIZE; results are resized back to the image's size")
    add_sampling_flags(p)
    add_ensemble_flags(p)
    p.add_argument("--overwrite", action="store_true", help="recompute images whose outputs already exist")
    p.add_argument("--seed", type=int, default=0, help="with the image's name, fixes every generation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (under torchrun: cuda:LOCAL_RANK)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="score a checkpoint on a dataset's val or test split, beside the paper",
                       description="Run a dataset's test protocol (Vaihingen, folder, nnunet, synthetic: at the model "
                                   "input; MoNuSeg: 512 from four 256 quadrants; Cityscapes: probability resized to "
                                   "each crop's original size before the 0.5 threshold), score F1, IoU, BoundF, both "
                                   "WCovs, calibration and ECE per image, and print them beside the paper's numbers. "
                                   "K generations are sampled once; the scores for every k <= K come from the mean "
                                   "of the first k. Writes per_image.csv, curve.csv, figures (metrics and "
                                   "calibration vs K, reliability diagram, best/worst examples), report.md, report.html "
                                   "(one self-contained page: the table, the figures and a sortable per-image table "
                                   "with each image's pictures) and, last, summary.json into --out.",
                       epilog="example: segdiff evaluate runs/vai --dataset vaihingen --data DATA "
                              "--split test --generations 30 --out eval/vai")
    p.add_argument("checkpoint", help="a .safetensors checkpoint, a run folder (uses best, else last), a model "
                   "folder (segdiff export) or a Hugging Face Hub repo id user/name")
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data", help="dataset folder (default: $SEGDIFF_DATA; not needed for synthetic)")
    p.add_argument("--split", default="test", metavar="{val,test}", help="default: %(default)s")
    p.add_argument("--out", default="segdiff-eval", help="output folder (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, help="score only the first N images")
    add_sampling_flags(p)
    add_ensemble_flags(p)
    p.add_argument("--score-size", type=int, default=None, help="Vaihingen/folder: score at this side (e.g. the "
                   "paper's 256 for a 64 px model): images are sampled at the model's input and the probabilities "
                   "resized up before the threshold (default: the model's input)")
    p.add_argument("--setting", default=None, choices=CROP_SETTINGS,
                   help="Cityscapes crops (default: the checkpoint's data.setting)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a run or checkpoint as a model folder (Hugging Face layout)",
                       description="Write a self-contained model folder, the layout of segmentation_models_pytorch "
                                   "and diffusers: config.json (the full config, the model kind, classes, input size, "
                                   "recommended sampler settings and training state), model.safetensors (the "
                                   "evaluated weights only: SegDiff's EMA) and README.md (a model card: the model, "
                                   "its training data and their terms, steps and time trained, the test scores when "
                                   "the run was evaluated, how to load it). The folder can be pushed to the Hugging "
                                   "Face Hub as is; predict, evaluate and segdiff.load_model read the folder or its "
                                   "repo id. Written to a temporary sibling and renamed, so an interrupted export "
                                   "leaves no partial folder.",
                       epilog="example: segdiff export runs/vai exported/vai && segdiff predict exported/vai "
                              "photos/ --out pred")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best, else last checkpoint) or "
                   "a .safetensors checkpoint")
    p.add_argument("dest", metavar="DIR", help="the model folder to write")
    p.add_argument("--evaluation", metavar="EVAL_DIR", help="a `segdiff evaluate --out` folder whose summary.json "
                   "the card reports (default: RUN/test/, as `segdiff reproduce` writes, when it scored this "
                   "checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR when it exists and is not empty")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="convert a folder dataset to an nnU-Net raw dataset, or back",
                       description="to-nnunet: a segdiff folder dataset (images/ + masks/, or train/ and test/ "
                                   "holding them, with its class file if any) -> DESTINATION/NAME in nnU-Net v2's "
                                   "raw layout (dataset.json, imagesTr/, labelsTr/, imagesTs/, labelsTs/). "
                                   "to-folder: an nnU-Net raw dataset -> a segdiff folder dataset. Written to a "
                                   "temporary sibling and renamed; never into the source; the destination must be "
                                   "new or empty.",
                       epilog="examples: segdiff convert to-nnunet my_data/ nnUNet_raw/ --name Dataset501_Mine; "
                              "segdiff convert to-folder nnUNet_raw/Dataset501_Mine/ my_copy/")
    p.add_argument("direction", choices=("to-nnunet", "to-folder"))
    p.add_argument("source", help="the dataset to convert")
    p.add_argument("destination", help="to-nnunet: where the folder NAME goes (e.g. $nnUNet_raw); "
                   "to-folder: a new or empty folder")
    p.add_argument("--name", default="Dataset001_Mine", help="to-nnunet: the dataset folder, DatasetNNN_Name")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ConfigError, CheckpointError, DataError) as exc:  # a user can fix these; others are bugs
        print(f"segdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segdiff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
