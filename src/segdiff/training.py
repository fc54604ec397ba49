"""Training: one loop, top to bottom (nanoGPT's shape).

seed and device -> data -> model, EMA, optimizer -> loop (draw t, add noise, predict eps, MSE,
step, EMA) -> periodic validation on a split carved from the training data (never the test set)
-> checkpoints `last.safetensors` and `best.safetensors` (by validation IoU) in the run folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import Checkpoint, save_checkpoint
from .config import ExperimentConfig
from .data import build_dataset
from .diffusion import DDPMScheduler, to_signed
from .io import atomic_write
from .metrics import iou
from .model import SegDiff
from .sampling import predict


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def make_dataset(cfg: ExperimentConfig, split: str, *, augment: bool = False):
    """The configured dataset's `split` at the model's input size."""
    d = cfg.data
    options = {"num_train": d.num_train, "num_test": d.num_test} if d.dataset == "synthetic" else {}
    root = d.root or os.environ.get("SEGDIFF_DATA", "")
    if not root and d.dataset != "synthetic":
        raise ValueError(f"dataset {d.dataset!r} needs a data folder: pass --data DIR or set SEGDIFF_DATA")
    return build_dataset(d.dataset, root, split, cfg.model.image_size, augment=augment,
                         val_fraction=d.val_fraction, seed=cfg.train.seed, **options)


@torch.no_grad()
def evaluate_iou(model: SegDiff, dataset, scheduler: DDPMScheduler, cfg: ExperimentConfig, *,
                 num_generations: int, max_images: int = 64, seed: int = 0) -> float:
    """Mean foreground IoU over (up to `max_images` of) `dataset`, K generations each."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    n = min(len(dataset), max_images)
    scores = []
    for start in range(0, n, 16):
        images, masks = zip(*(dataset[i] for i in range(start, min(n, start + 16))))
        pred = predict(model, torch.stack(images), scheduler, num_generations=num_generations,
                       sampler=cfg.sample.sampler, num_steps=cfg.sample.num_sampling_steps or None,
                       max_batch=cfg.sample.max_batch, generator=generator)
        scores.append(iou(pred.mask[:, 0].cpu(), torch.stack(masks)[:, 0]))
    return torch.cat(scores).mean().item()


def _infinite(loader: DataLoader):
    while True:
        yield from loader


def train(cfg: ExperimentConfig, *, progress: bool = True) -> Path:
    """Train `cfg` and return the run folder (config.json, log.jsonl, last/best checkpoints)."""
    tc = cfg.train
    out_dir = Path(tc.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "config.json", lambda p: p.write_text(json.dumps(cfg.to_dict(), indent=2)))
    torch.manual_seed(tc.seed)
    device = resolve_device(tc.device)
    if device.type == "cpu":
        # Denormal floats (tiny activations and Adam moments) make CPU kernels 10-100x slower
        # mid-run; flushing them to zero changes results by less than float32 resolution.
        torch.set_flush_denormal(True)

    # --- data ---------------------------------------------------------------------------------------
    train_set = make_dataset(cfg, "train", augment=cfg.data.augment)
    val_set = make_dataset(cfg, "val") if tc.val_every else None
    loader = DataLoader(train_set, batch_size=tc.batch_size, shuffle=True, drop_last=len(train_set) >= tc.batch_size,
                        num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(tc.seed),
                        persistent_workers=cfg.data.num_workers > 0)
    batches = _infinite(loader)

    # --- model, EMA, optimizer ------------------------------------------------------------------------
    model = SegDiff(cfg.model).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # the EMA weights are evaluated, as in the paper
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = DDPMScheduler.from_config(cfg.diffusion)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"segdiff: preset {cfg.preset}, {n_params / 1e6:.2f} M parameters, {len(train_set)} training images, "
          f"device {device}, run folder {out_dir}")

    def checkpoint(name: str, step: int, extra: dict) -> None:
        save_checkpoint(out_dir / f"{name}.safetensors", Checkpoint(
            config=cfg, ema=ema.state_dict(), model=model.state_dict(), state={"step": step, **extra}))

    # --- loop -------------------------------------------------------------------------------------------
    best_iou, start_time = -1.0, time.monotonic()
    log = open(out_dir / "log.jsonl", "a")
    bar = tqdm(total=tc.max_steps, disable=not progress, dynamic_ncols=True, desc="train")
    step = 0
    try:
        while step < tc.max_steps:
            image, mask = next(batches)
            image, x0 = image.to(device, non_blocking=True), to_signed(mask.to(device, non_blocking=True))
            t = torch.randint(0, scheduler.num_steps, (x0.shape[0],), device=device)
            noise = torch.randn_like(x0)
            eps_pred = model(scheduler.add_noise(x0, noise, t), t, image)
            # Mean squared error over pixels and batch; the reference sums over pixels, which only
            # rescales the gradient (AdamW is invariant to that up to its epsilon).
            loss = F.mse_loss(eps_pred, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1

            # EMA; with warm-up the decay grows as (1+n)/(10+n), so short runs are not dominated by init.
            decay = min(tc.ema_decay, (1 + step) / (10 + step)) if tc.ema_warmup else tc.ema_decay
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1 - decay)

            bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                log.write(json.dumps({"step": step, "loss": loss.item(), "time": time.monotonic() - start_time}) + "\n")
                log.flush()

            out_of_time = tc.time_budget_min > 0 and time.monotonic() - start_time > 60 * tc.time_budget_min
            last = step == tc.max_steps or out_of_time
            if val_set is not None and (step % tc.val_every == 0 or last):
                val_iou = evaluate_iou(ema, val_set, scheduler, cfg, num_generations=tc.val_generations)
                log.write(json.dumps({"step": step, "val_iou": val_iou, "time": time.monotonic() - start_time}) + "\n")
                log.flush()
                bar.write(f"step {step}: validation IoU {val_iou:.4f}")
                if val_iou > best_iou:
                    best_iou = val_iou
                    checkpoint("best", step, {"val_iou": val_iou})
            if step % tc.save_every == 0 or last:
                checkpoint("last", step, {"best_val_iou": best_iou})
            if out_of_time:
                bar.write(f"time budget of {tc.time_budget_min} min reached at step {step}")
                break
    finally:
        bar.close()
        log.close()
    return out_dir
