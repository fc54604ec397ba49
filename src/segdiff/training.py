"""Training: one loop, top to bottom (nanoGPT's shape).

resume checks -> seed, device, processes -> data -> model, EMA, optimizer, loss scale -> resume ->
loop (draw t, add noise, predict eps (or x_0), MSE, step, EMA) -> periodic validation on a split carved
from the training data (never the test set) -> checkpoints.

The run folder:
    config.json              the resolved config (every checkpoint carries it too)
    log.jsonl, log.csv       one record per logged step, validation and skipped step
    tensorboard/             the same scalars and validation pictures as TensorBoard events
                             (`train.tensorboard`, tensorboard_log.py)
    last-<step>.safetensors  the newest `train.keep_last` full checkpoints: weights, EMA weights,
                             AdamW state, loss scale, RNG states, data position
    last.safetensors         the newest of those (a hard link): what --resume and predict read
    best.safetensors         the EMA weights with the best validation IoU

The lr schedule ends, and the run stops, at a horizon: train.max_steps, or with a time budget and
the cosine schedule the step the budget is estimated to reach from measured step times (`Horizon`).

Resuming continues bit for bit on the CPU: every random draw of the loop comes from state that
the checkpoint holds. The epoch's order is a permutation seeded by (seed, epoch) and the batches
already used are skipped; augmentation draws come from (seed, epoch, item) via
`dataset.set_epoch`; t and the noise come from a generator of their own; dropout from torch's
global generator. Writes are atomic (temporary file, fsync, rename), so a killed run leaves its
last checkpoint intact.

Under torchrun every rank runs this function (see distributed.py): `train.batch_size` is the
global batch, t and the noise are drawn for the whole global batch and each rank takes its slice,
so N ranks make the single-process run's updates. Rank 0 alone prints, logs and writes.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import math
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from . import distributed, tensorboard_log
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    load_resume_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    save_last,
    step_checkpoints,
)
from .config import ConfigError, ExperimentConfig, SampleConfig
from .data import DataError, make_dataset, with_dataset_classes
from .device import resolve_device
from .io import atomic_write
from .labels import IGNORE, valid_pixels
from .metrics import confusion_matrix, confusion_scores, iou
from .models import build_model
from .progress import progress as progress_display
from .protocol import Protocol, item_names, protocol_for
from .seeding import derive_seed

# What a resumed run must share with the run it continues: these define the network, the data and
# the order of the updates. Everything else may change on resume (max_steps, time budget, logging,
# validation, device, precision, lr, weight decay, clipping, speed options, data.root, workers, the
# Cityscapes index cache).
RESUME_MUST_MATCH = ("preset", "model.", "diffusion.", "data.", "train.batch_size", "train.seed",
                     "train.ema_decay", "train.ema_warmup")
RESUME_MAY_CHANGE = ("data.root", "data.num_workers", "data.index_cache")

LOG_COLUMNS = ("step", "event", "epoch", "loss", "grad_norm", "lr", "samples_per_s", "skipped_steps", "val_iou",
               "time", "horizon")  # horizon last: the rows of logs written before it still line up

# The loop's time source (step times, the budget, the logs' `time`): tests replace it with a fake clock.
_clock = time.monotonic


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient; names the last good checkpoint."""


def learning_rate(tc, step: int, horizon: int | None = None) -> float:
    """The lr of update `step` (0-based). The cosine decays to 0 at `horizon` (default: max_steps; a
    time-budgeted run passes `Horizon.steps`), so a short run ends on small steps instead of stopping
    mid-stride; it depends on (step, horizon) only, so runs and resumes stay reproducible."""
    if tc.lr_schedule == "constant":
        return tc.lr
    horizon = tc.max_steps if horizon is None else horizon
    return 0.5 * tc.lr * (1 + math.cos(math.pi * min(step, horizon) / max(horizon, 1)))


def _plan(tc) -> tuple:
    """What a run's schedule is planned from: a resumed run that changes it re-plans its horizon."""
    return tc.max_steps, tc.time_budget_min, tc.lr_schedule


class Horizon:
    """The step where the lr schedule ends and the run stops: `steps`, max_steps or an estimate.

    With a time budget and the cosine schedule, the cosine must end when the budget does, not at
    max_steps (a budget that stops the run at step 956 of 7000 would leave the lr near its peak).
    So each session times its steps: the first `warmup_steps` are not timed (compilation, the
    loader's first batches), the first estimate comes `first_window` steps later and a new one every
    `every` steps after that, so a machine that slows down or speeds up is followed. An estimate
    divides the budget left by the time a step costs: the mean training step since the previous
    estimate, plus the validation and checkpoint time per step of this session so far (the loop
    times them apart). The horizon becomes step + the steps that fit, at most max_steps and at
    least step + 1. Until the first estimate it is max_steps; without a budget, always.

    The times are measured on rank 0 and its horizon is every rank's (`distributed.from_main`);
    estimates fall on steps counted from the session's first, so every rank makes them together.
    `state()` goes into `last` checkpoints: a run resumed with the same plan (max_steps, budget,
    schedule) continues with the horizon in force, so its updates are those of a run that was
    not interrupted, given the same horizons. With a changed plan it re-estimates at once from
    the saved step time.
    """

    warmup_steps = 10
    first_window = 10
    every = 50

    def __init__(self, tc, first_step: int) -> None:
        self.plan = _plan(tc)
        self.max_steps = tc.max_steps
        self.budget_s = 60 * tc.time_budget_min if tc.lr_schedule == "cosine" else 0.0
        self.steps = tc.max_steps  # the horizon in force
        self.seconds_per_step: float | None = None  # the latest estimate's training step ...
        self.paused_per_step: float | None = None  # ... and validation + checkpoint time per step
        self.first_step = first_step  # this session's
        self.window: tuple[int, float] | None = None  # (step, training seconds) where the timing window began
        self.timed_from: tuple[int, float] | None = None  # (step, paused seconds) where this session's timing began
        self.estimated = False  # in this session

    def state(self) -> dict:
        return {"steps": self.steps, "seconds_per_step": self.seconds_per_step,
                "paused_per_step": self.paused_per_step}

    def restore(self, saved: dict, saved_tc, elapsed_s: float) -> None:
        """Continue the schedule of a checkpoint (its `state()`, its train config, the run's seconds so far)."""
        self.seconds_per_step, self.paused_per_step = saved["seconds_per_step"], saved["paused_per_step"]
        if _plan(saved_tc) == self.plan:
            self.steps = saved["steps"]
        elif self.budget_s and self.seconds_per_step is not None:
            self.steps = self.fit(self.first_step, self.budget_s - elapsed_s)

    def observe(self, step: int, train_s: float, paused_s: float, remaining_s: float) -> int | None:
        """The horizon proposed after `step`, or None when no estimate is due.

        `train_s`, `paused_s`: this session's seconds of training steps and of validation and
        checkpoints so far; `remaining_s`: the run's budget left.
        """
        done = step - self.first_step
        if not self.budget_s or done < self.warmup_steps:
            return None
        if done == self.warmup_steps:
            self.window, self.timed_from = (step, train_s), (step, paused_s)
            return None
        window_step, window_train_s = self.window
        if step - window_step < (self.every if self.estimated else self.first_window):
            return None
        self.seconds_per_step = (train_s - window_train_s) / (step - window_step)
        self.paused_per_step = (paused_s - self.timed_from[1]) / (step - self.timed_from[0])
        self.window, self.estimated = (step, train_s), True
        return self.fit(step, remaining_s)

    def fit(self, step: int, remaining_s: float) -> int:
        """step + the steps that `remaining_s` fits at the measured cost, within [step + 1, max_steps]."""
        cost = self.seconds_per_step + self.paused_per_step
        fits = math.floor(max(remaining_s, 0.0) / cost) if cost > 0 else self.max_steps
        return min(self.max_steps, step + max(fits, 1))

    def describe(self) -> str:
        paused = self.paused_per_step > 0.01 * self.seconds_per_step  # else too small to be worth a word
        return (f"lr reaches 0 at step {self.steps} (estimated from {self.seconds_per_step:.3g} s/step"
                + (f" + {self.paused_per_step:.2g} s/step of validation and checkpoints" if paused else "") + ")")


def validation_iou(model, dataset, protocol: Protocol, sample: SampleConfig, ranks: distributed.Ranks,
                   device: torch.device, *, seed: int, max_images: int = 64,
                   on_item: Callable[[int, Tensor, Tensor, Tensor, Tensor], None] | None = None) -> float:
    """Mean foreground IoU over the first `max_images` items of `dataset`, scored with `protocol`
    (more than two classes: the mIoU of one confusion matrix over those items, argmax labels).

    Each item's generations are seeded from its name (`protocol`). The items are sampled in fixed
    chunks of consecutive items (as many as `sample.max_batch` rows hold), and the chunks are dealt
    out to the ranks; the per-item scores are gathered by index and summed in index order. So every
    item is computed in the same batch whatever the number of processes, and the score, and with
    it which checkpoint becomes best, does not depend on it. `on_item(index, image, target, running
    means, uncertainty)` sees each item this rank predicts (e.g. `tensorboard_log.ValidationExamples`).
    """
    n = min(len(dataset), max_images)
    names = item_names(dataset)
    chunk = max(1, sample.max_batch // model.num_generations(sample))
    scores = torch.zeros(n, dtype=torch.float64, device=device if ranks.enabled else "cpu")
    num_classes = model.config.model.num_classes
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=scores.device)  # C > 2 classes
    for first in range(ranks.rank * chunk, n, ranks.world_size * chunk):
        indices = range(first, min(n, first + chunk))
        items = [dataset[i] for i in indices]
        targets = [protocol.target(dataset, i, mask) for i, (_, mask) in zip(indices, items)]  # (C, h, w)
        results = protocol.predict_items(model, [image for image, _ in items], sample,
                                         [derive_seed(seed, names[i]) for i in indices],
                                         [tuple(t.shape[-2:]) for t in targets])
        for i, (image, _), (means, uncertainty), target in zip(indices, items, results, targets):
            if num_classes > 2:  # label maps: one confusion matrix over the items (exact sums of counts)
                matrix += confusion_matrix(means[-1].argmax(dim=0), target[0].long(), num_classes,
                                           ignore_index=int(IGNORE)).to(matrix)
            else:
                labelled = valid_pixels(target[0])  # ignored pixels are background in both masks
                scores[i] = iou((means[-1, 0] > 0.5) & labelled, target[0].clamp(min=0)).item()  # channel 0
            if on_item is not None:
                on_item(i, image, target, means, uncertainty)
    if num_classes > 2:
        distributed.all_reduce_sum(matrix, ranks)
        return confusion_scores(matrix.cpu())["miou"].item()
    distributed.all_reduce_sum(scores, ranks)  # each slot has one contributor: exact
    return scores.cpu().sum().item() / n


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves a checkpoint before stopping."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_resumable(saved: ExperimentConfig, requested: ExperimentConfig, path: Path) -> None:
    """Raise ValueError naming every setting in RESUME_MUST_MATCH that differs."""
    def flat(cfg: ExperimentConfig) -> dict:
        return {f"{section}.{key}" if isinstance(values, dict) else section: value
                for section, values in cfg.to_dict().items()
                for key, value in (values.items() if isinstance(values, dict) else [(None, values)])}

    old, new = flat(saved), flat(requested)
    differ = [f"{k} (run: {old[k]!r}, requested: {new[k]!r})" for k in old
              if k.startswith(RESUME_MUST_MATCH) and k not in RESUME_MAY_CHANGE and old[k] != new[k]]
    if differ:
        raise ConfigError(f"{path}: cannot resume: the requested config differs from the run's in {'; '.join(differ)}. "
                         "These define the network, the data and the order of updates; resume without changing "
                         "them, or start a new run in another folder")


def _dataset_fingerprint(dataset) -> str:
    """A short hash of the training set's sample ids, to notice a changed dataset on resume."""
    names = getattr(dataset, "names", None) or [f"{len(dataset)} items"]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _rewind_logs(source: Path, out_dir: Path, step: int) -> None:
    """Copy the logs of `source` up to `step` into `out_dir`: a resumed run re-logs later steps."""
    for name in ("log.jsonl", "log.csv"):
        if not (source / name).is_file():
            continue
        lines = (source / name).read_text().splitlines(keepends=True)
        # The CSV header: this version's (a column added since appends to the old rows' end).
        kept = [",".join(LOG_COLUMNS) + "\r\n"] if name == "log.csv" else []
        for line in lines[len(kept):]:
            try:  # a run killed while writing may leave a partial last line
                line_step = json.loads(line)["step"] if name == "log.jsonl" else int(line.split(",")[0])
            except (ValueError, KeyError, TypeError):
                continue
            if line_step <= step and line.endswith("\n"):
                kept.append(line)
        atomic_write(out_dir / name, lambda p: p.write_text("".join(kept)))


def train(cfg: ExperimentConfig, *, progress: bool = True, resume: str | Path | None = None) -> Path:
    """Train `cfg` and return the run folder (config.json, logs, last and best checkpoints).

    `resume`: a run folder (its last.safetensors) or a checkpoint file to continue from; its
    config must agree with `cfg` on RESUME_MUST_MATCH. Raises TrainingDiverged after
    `train.max_nonfinite` consecutive non-finite steps (keeping the last good checkpoint), and
    KeyboardInterrupt after saving a checkpoint when asked to stop (SIGINT, SIGTERM).
    """
    tc = cfg.train
    out_dir = Path(tc.out_dir)
    # The data's classes (CamVid's 11, a folder's class file) become the model's when the config names none.
    train_set = make_dataset(cfg, "train", augment=cfg.data.augment)
    cfg = with_dataset_classes(cfg, train_set)

    # --- resume: everything is checked before anything is written ---------------------------------
    ckpt = None
    if resume is not None:
        resume_path, ckpt = load_resume_checkpoint(resume)
        if not ckpt.optim or "data" not in ckpt.state:
            raise CheckpointError(f"{resume_path}: holds no optimizer state or data position (an inference "
                                  "checkpoint such as best.safetensors); resume from the run's last.safetensors")
        _check_resumable(ckpt.config, cfg, resume_path)
        newer = [p.name for s, p in step_checkpoints(out_dir) if s > ckpt.state["step"]]
        if newer:
            raise ConfigError(f"{out_dir}: holds checkpoints newer than step {ckpt.state['step']} of {resume_path} "
                             f"({', '.join(newer)}); resuming there would mix two runs: pass --out NEW_FOLDER "
                             f"to branch from step {ckpt.state['step']}")

    # --- seed, device, processes ------------------------------------------------------------------------
    device = resolve_device(tc.device)
    if tc.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision=fp16 needs a CUDA device (its dynamic loss scale is CUDA only); "
                         f"on {device.type} use train.precision=bf16 or fp32")
    if tc.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision=bf16: this GPU has no bfloat16; use fp16 or fp32")
    writer_class = tensorboard_log.summary_writer_class(tc.tensorboard)  # None: off
    ranks, device = distributed.setup(device)
    master = ranks.is_main
    torch.manual_seed(tc.seed)  # the initial weights: the same on every rank
    if device.type == "cpu":
        # Denormal floats (tiny activations and Adam moments) make CPU kernels 10-100x slower
        # mid-run; flushing them to zero changes results by less than float32 resolution.
        torch.set_flush_denormal(True)
    if master:
        print("segdiff train: resolved config\n" + json.dumps(cfg.to_dict(), indent=2), flush=True)

    # --- data -----------------------------------------------------------------------------------------------
    val_set = make_dataset(cfg, "val") if tc.val_every else None
    for dataset in (train_set, val_set):  # a user's folder is decoded whole before the first step
        if hasattr(dataset, "verify"):
            dataset.verify()
    sampler = distributed.GlobalBatchSampler(len(train_set), tc.batch_size, seed=tc.seed, rank=ranks.rank,
                                             world_size=ranks.world_size)
    # The loader gets a generator of its own for its workers' seeds: the global one drives dropout
    # and is saved, so it must not be consumed by each new pass over the loader.
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        persistent_workers=cfg.data.num_workers > 0, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(tc.seed), worker_init_fn=_ignore_sigint)
    fingerprint = _dataset_fingerprint(train_set)
    if ckpt is not None and ckpt.state["data"]["fingerprint"] != fingerprint:
        raise DataError(f"{resume_path}: cannot resume: the training set changed (the run had "
                         f"{ckpt.state['data']['num_items']} items, the data now gives {len(train_set)}, and the "
                         "sample ids differ); resume with the run's data")
    if master:  # the first write: every check that can refuse the run has passed
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)  # a run killed mid-save left them (2.5 GB each at the paper's size)
        atomic_write(out_dir / "config.json", lambda p: p.write_text(json.dumps(cfg.to_dict(), indent=2)))

    # --- model, EMA, optimizer, loss scale ----------------------------------------------------------------
    segmenter = build_model(cfg)  # the model kind the config names (models.MODEL_CLASSES)
    model = segmenter.net.to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The weights evaluated and kept in best.safetensors: an EMA for kinds that use one (SegDiff, as in
    # the paper), else a copy of the raw weights after each update.
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    evaluated = build_model(cfg, ema)
    protocol = protocol_for(cfg.data.dataset, cfg.model.image_size, setting=cfg.data.setting,
                            resize=cfg.data.resize)
    val_sample = replace(cfg.sample, num_generations=tc.val_generations)
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                      fused=True if tc.fused_adamw else None)
    except RuntimeError as exc:  # no fused kernel for this device in this torch
        if master:
            print(f"train.fused_adamw: not available here ({exc}); using the default AdamW", flush=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.precision)
    # t and the noise (or any kind's random draws) are made for the whole global batch, the same on every rank.
    noise_generator = torch.Generator(device=device).manual_seed(tc.seed)
    step, best_iou, skipped, elapsed_before = 0, -1.0, 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        ema.load_state_dict(ckpt.ema)
        # The moments and step counts are restored; the param_groups (lr, weight decay, fused or not)
        # are this run's, which may differ from the saved ones (see RESUME_MUST_MATCH).
        saved = optimizer_from_checkpoint(ckpt.optim, ckpt.state["optimizer"])
        optimizer.load_state_dict({"state": saved["state"], "param_groups": optimizer.state_dict()["param_groups"]})
        if scaler.is_enabled() and ckpt.state.get("grad_scaler"):
            scaler.load_state_dict(ckpt.state["grad_scaler"])
        if ckpt.state.get("noise_device") == device.type:
            noise_generator.set_state(ckpt.rng["noise"])
        else:  # a generator's state is device-specific: on another device the draws go on from a new seed
            noise_generator.manual_seed(derive_seed("resume-noise", tc.seed, ckpt.state["step"]))
            if master:
                print(f"resuming on {device.type}, saved on {ckpt.state.get('noise_device')}: t and the noise are "
                      "drawn from a new seed, so the run will not repeat the original bit for bit")
        if f"torch_cpu/{ranks.rank}" in ckpt.rng:
            torch.set_rng_state(ckpt.rng[f"torch_cpu/{ranks.rank}"])
        else:  # more ranks than the saved run: this rank's dropout draws start from a derived seed
            torch.manual_seed(derive_seed("resume-dropout", tc.seed, ranks.rank, ckpt.state["step"]))
        if device.type == "cuda" and f"cuda/{ranks.rank}" in ckpt.rng:
            torch.cuda.set_rng_state(ckpt.rng[f"cuda/{ranks.rank}"], device)
        step, best_iou, skipped = ckpt.state["step"], ckpt.state["best_val_iou"], ckpt.state["skipped_steps"]
        elapsed_before = ckpt.state.get("elapsed_s", 0.0)
        if master:
            _rewind_logs(resume_path.parent, out_dir, step)
            print(f"resuming from {resume_path} at step {step} (epoch {ckpt.state['data']['epoch']}, batch "
                  f"{ckpt.state['data']['batch_in_epoch']} of {sampler.batches_per_epoch})", flush=True)
    elif ranks.rank > 0:  # dropout draws of their own on the other ranks
        torch.manual_seed(derive_seed("dropout", tc.seed, ranks.rank))
    # Where the lr schedule ends and the run stops: max_steps, or estimated to fit the time budget.
    horizon = Horizon(tc, step)
    if ckpt is not None and "horizon" in ckpt.state:
        horizon.restore(ckpt.state["horizon"], ckpt.config.train, elapsed_before)
    net = model
    if ranks.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)
    n_params = sum(p.numel() for p in model.parameters())
    if master:
        print(f"segdiff train: model kind {cfg.model.kind}, preset {cfg.preset}, {n_params / 1e6:.2f} M parameters, {len(train_set)} training images, "
              f"device {device}" + (f" x {ranks.world_size} processes" if ranks.enabled else "")
              + f", {tc.precision}, run folder {out_dir}", flush=True)

    def batches(first_step: int):
        """Global batches (this rank's slice) from the data position of `first_step` on, endlessly."""
        epoch, start = divmod(first_step, sampler.batches_per_epoch)
        while True:
            sampler.set_position(epoch, start)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)  # augmentation draws of this epoch
            yield from loader
            epoch, start = epoch + 1, 0

    last_saved: list[Path] = []

    def save(kind: str, val_iou: float | None = None) -> None:
        """`last`: everything to resume from; `best`: the weights. Every rank calls it; rank 0 writes."""
        distributed.check_in_sync(model, ranks, device)
        rng_states = distributed.gather_objects(
            (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None),
            ranks) if kind == "last" else []
        if not master:
            return
        epoch, batch_in_epoch = divmod(step, sampler.batches_per_epoch)
        state = {"step": step, "best_val_iou": best_iou, "skipped_steps": skipped, "world_size": ranks.world_size,
                 "elapsed_s": elapsed(), "noise_device": device.type}
        if kind == "best":
            save_checkpoint(out_dir / "best.safetensors", Checkpoint(  # the evaluated weights alone
                config=cfg, ema=ema.state_dict(), state={**state, "val_iou": val_iou}))
            return
        optim_tensors, optim_meta = optimizer_to_checkpoint(optimizer.state_dict())
        rng = {"noise": noise_generator.get_state()}
        for rank, (cpu_state, cuda_state) in enumerate(rng_states):
            rng[f"torch_cpu/{rank}"] = cpu_state
            if cuda_state is not None:
                rng[f"cuda/{rank}"] = cuda_state
        state.update(optimizer=optim_meta, grad_scaler=scaler.state_dict() if scaler.is_enabled() else None,
                     horizon=horizon.state(),
                     data={"epoch": epoch, "batch_in_epoch": batch_in_epoch, "permutation_seed": tc.seed,
                           "batches_per_epoch": sampler.batches_per_epoch, "num_items": len(train_set),
                           "fingerprint": fingerprint})
        last_saved.append(save_last(out_dir, step, Checkpoint(
            config=cfg, ema=ema.state_dict(), model=model.state_dict(), optim=optim_tensors, state=state, rng=rng),
            tc.keep_last))

    # Logs (rank 0): JSON lines, the same records as CSV and, with train.tensorboard, as TensorBoard
    # scalars; opened inside the loop's try so that its finally closes them however the run ends.
    log_files = contextlib.ExitStack()
    log_jsonl = log_csv = csv_writer = tb_writer = None

    def open_logs() -> None:
        nonlocal log_jsonl, log_csv, csv_writer, tb_writer
        new_csv = not (out_dir / "log.csv").exists()
        log_jsonl = log_files.enter_context(open(out_dir / "log.jsonl", "a"))
        log_csv = log_files.enter_context(open(out_dir / "log.csv", "a", newline=""))
        csv_writer = csv.DictWriter(log_csv, LOG_COLUMNS)
        if new_csv:
            csv_writer.writeheader()
        if writer_class is not None:
            tb_writer = log_files.enter_context(tensorboard_log.open_writer(writer_class, out_dir, step))

    def log(record: dict) -> None:
        if master:
            record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
            log_jsonl.write(json.dumps(record) + "\n")
            log_jsonl.flush()
            csv_writer.writerow(record)
            log_csv.flush()
            if tb_writer is not None:
                tensorboard_log.write_scalars(tb_writer, record)

    # Ctrl-C (SIGINT) and SIGTERM (schedulers, torchrun) finish the step, save and stop; a second one aborts.
    stop_signals: list[int] = []

    def request_stop(signum, frame):
        stop_signals.append(signum)
        signal.signal(signum, previous_handlers[signum])
        if master:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
                  "(send it again to abort without saving)", flush=True)

    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():
        previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    # --- loop ---------------------------------------------------------------------------------------------------
    per_rank = tc.batch_size // ranks.world_size
    share = slice(ranks.rank * per_rank, (ranks.rank + 1) * per_rank)
    data = batches(step)
    consecutive_nonfinite, start_time, paused_s = 0, _clock(), 0.0
    logged_step, logged_time = step, start_time

    def elapsed() -> float:
        """Seconds of training over all sessions of the run (the logs' `time`, what the budget counts)."""
        return elapsed_before + _clock() - start_time

    # A bar on a terminal; in a file or CI log, a plain line at each logged step.
    bar = progress_display(horizon.steps, "train", enabled=progress and master, initial=step, every=tc.log_every,
                           every_s=None)

    def say(message: str) -> None:
        if master:
            bar.write(message)

    try:
        if master:
            open_logs()
        while step < horizon.steps:
            image, mask = next(data)
            image, mask = image.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            if tc.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                loss = segmenter.loss(net, image, mask, noise_generator, tc, share)  # the part each kind defines
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or math.inf)

            # One synchronisation per step: the mean loss, the gradient norm and any rank's wish to
            # stop (time budget, signal), so that every rank takes the same decisions.
            out_of_time = tc.time_budget_min > 0 and elapsed() > 60 * tc.time_budget_min
            stats = torch.stack([loss.detach().float(), grad_norm.float().to(loss.device),
                                 torch.tensor(float(out_of_time), device=loss.device),
                                 torch.tensor(float(bool(stop_signals)), device=loss.device)])
            loss_value, norm_value, out_of_time, interrupted = distributed.all_reduce_sum(stats, ranks).tolist()
            loss_value, norm_value = loss_value / ranks.world_size, norm_value / ranks.world_size
            out_of_time, interrupted = out_of_time > 0, interrupted > 0

            if math.isfinite(loss_value) and math.isfinite(norm_value):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(tc, step, horizon.steps)
                scaler.step(optimizer)
                # EMA; with warm-up the decay of update n grows as (1+n)/(10+n), so short runs are not
                # dominated by the initial weights.
                n = step + 1
                decay = min(tc.ema_decay, (1 + n) / (10 + n)) if tc.ema_warmup else tc.ema_decay
                decay = decay if segmenter.uses_ema else 0.0  # 0: the evaluated weights are the raw ones
                with torch.no_grad():
                    # ema <- lerp(ema, model, 1 - decay), by torch's public EMA (one fused foreach kernel)
                    ema_update = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
                    ema_update(list(ema.parameters()), list(model.parameters()), None)
                consecutive_nonfinite = 0
            else:
                # A non-finite loss or gradient (fp16 overflow, a bad batch, divergence) skips the
                # update instead of writing NaN into the weights; many in a row stop the run.
                skipped += 1
                consecutive_nonfinite += 1
                log({"step": step + 1, "event": "skipped", "loss": loss_value, "grad_norm": norm_value,
                     "skipped_steps": skipped, "time": elapsed()})
                say(f"step {step + 1}: non-finite loss or gradient (loss {loss_value}, grad norm {norm_value}); "
                    f"update skipped ({consecutive_nonfinite} in a row, {skipped} in all)")
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if consecutive_nonfinite >= tc.max_nonfinite:
                distributed.barrier(ranks)
                # Skipped steps never touch the weights, so every checkpoint written holds good ones.
                kept = (f"the last good checkpoint is {last_saved[-1]}" if last_saved else
                        f"no checkpoint was written in this session ({out_dir / 'last.safetensors'}, if any, is older)")
                raise TrainingDiverged(
                    f"stopped at step {step}: {consecutive_nonfinite} consecutive steps with a non-finite loss or "
                    f"gradient (train.max_nonfinite={tc.max_nonfinite}); {kept}. Resume from it with a lower "
                    "train.lr, train.grad_clip=1.0 or train.precision=bf16/fp32")

            last = step >= horizon.steps or out_of_time or interrupted
            if step % tc.log_every == 0 or last:
                now = _clock()
                bar.set_postfix(loss=f"{loss_value:.4f}")
                log({"step": step, "event": "train", "epoch": round(step / sampler.batches_per_epoch, 3),
                     "loss": loss_value, "grad_norm": norm_value, "lr": optimizer.param_groups[0]["lr"],
                     "samples_per_s": (step - logged_step) * tc.batch_size / max(now - logged_time, 1e-9),
                     "skipped_steps": skipped, "time": elapsed(), "horizon": horizon.steps})
                logged_step, logged_time = step, now
            bar.update(1)  # after set_postfix, so that a plain progress line shows this step's loss

            # After the step's log (whose lr was made with the horizon in force) and before its
            # checkpoint (which keeps the horizon of the next steps).
            proposal = None if last else horizon.observe(step, _clock() - start_time - paused_s, paused_s,
                                                         60 * tc.time_budget_min - elapsed())
            if proposal is not None:  # on every rank at the same step
                previous, horizon.steps = horizon.steps, distributed.from_main(proposal, ranks, device)
                bar.total = horizon.steps
                bar.refresh()
                if abs(horizon.steps - previous) > 0.01 * previous:
                    say(f"step {step}: {horizon.describe()}")

            paused = _clock()  # validation and checkpoints do not count in samples_per_s
            if val_set is not None and not interrupted and (step % tc.val_every == 0 or last):
                # Rank 0 pictures the first validation items from the predictions it scores.
                palette = cfg.model.palette if cfg.model.num_classes > 2 else None  # multi-class: colour-coded
                examples = (tensorboard_log.ValidationExamples(val_set, palette=palette)
                            if tb_writer is not None else None)
                val_iou = validation_iou(evaluated, val_set, protocol, val_sample, ranks, device, seed=tc.seed,
                                         on_item=examples)
                log({"step": step, "event": "val", "val_iou": val_iou, "time": elapsed()})
                say(f"step {step}: validation IoU {val_iou:.4f}")
                if examples is not None:
                    tensorboard_log.write_examples(tb_writer, step, examples.pictures)
                if val_iou > best_iou:
                    best_iou = val_iou
                    save("best", val_iou)
            if step % tc.save_every == 0 or last:
                save("last")
            pause = _clock() - paused
            paused_s, logged_time = paused_s + pause, logged_time + pause
            if out_of_time:
                say(f"time budget of {tc.time_budget_min} min reached at step {step}")
                break
            if interrupted:
                distributed.barrier(ranks)  # rank 0 has written before any rank exits
                say(f"stopped at step {step}: saved {out_dir / 'last.safetensors'}; continue with "
                    f"`segdiff train --resume {out_dir}`")
                raise KeyboardInterrupt
    finally:
        bar.close()
        log_files.close()
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
        distributed.teardown(ranks)
    return out_dir
