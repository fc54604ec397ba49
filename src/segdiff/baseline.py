"""A plain U-Net baseline: the question every diffusion result must answer is "better than this?".

MONAI's `BasicUNet` (a well-kept, plain encoder-decoder U-Net) predicts the mask in one forward
pass, trained with Dice + binary cross-entropy (`monai.losses.DiceCELoss`) on exactly the data
pipeline of `segdiff train`: the same dataset, split, validation carve-out, input size,
augmentation draws and batch order (`training.make_dataset`, `distributed.GlobalBatchSampler`),
the same AdamW, time budget and validation schedule. Its checkpoints are segdiff checkpoints
(safetensors, JSON config) whose state names the baseline, so `segdiff evaluate` scores both
with the same protocol and metrics. A deterministic network has one "generation": K = 1.

    segdiff baseline --preset vaihingen-cpu --data DATA --out runs/unet --time-budget 60
    segdiff evaluate runs/unet --dataset vaihingen --data DATA --split test
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .checkpoint import Checkpoint, save_checkpoint
from .config import ExperimentConfig
from .distributed import GlobalBatchSampler
from .io import atomic_write
from .metrics import iou
from .sampling import apply_symmetry, invert_symmetry, symmetry_order

BASELINE = "monai.BasicUNet"
DEFAULT_FEATURES = (32, 32, 64, 128, 256, 32)  # MONAI's default widths; about 2 M parameters


class UNetBaseline(nn.Module):
    """image (B, C, S, S) as the datasets give it -> mask logits (B, 1, S, S)."""

    def __init__(self, in_channels: int = 3, features: tuple[int, ...] = DEFAULT_FEATURES):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.features = tuple(features)
        self.net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=1, features=self.features)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)

    @torch.no_grad()
    def probability(self, image: Tensor, symmetry: str = "none") -> Tensor:
        """Sigmoid of the logits; with `symmetry`, averaged over the flipped/rotated copies of the
        image, each mapped back (the test-time augmentation `sampling.predict` gives SegDiff)."""
        order = symmetry_order(symmetry, *image.shape[-2:])
        return torch.stack([invert_symmetry(torch.sigmoid(self(apply_symmetry(image, g))), g)
                            for g in range(order)]).mean(0)


def is_baseline(state: dict) -> bool:
    return state.get("baseline") == BASELINE


def baseline_from_checkpoint(ckpt: Checkpoint) -> UNetBaseline:
    model = UNetBaseline(ckpt.config.model.in_channels, tuple(ckpt.state["features"]))
    model.load_state_dict(ckpt.ema)
    return model.eval()


@torch.no_grad()
def _val_iou(model: UNetBaseline, dataset, device: torch.device, symmetry: str = "none") -> float:
    model.eval()
    scores = []
    for start in range(0, len(dataset), 16):
        images, masks = zip(*(dataset[i] for i in range(start, min(len(dataset), start + 16))))
        prob = model.probability(torch.stack(images).to(device), symmetry).cpu()
        scores.append(iou(prob[:, 0] > 0.5, torch.stack(masks)[:, 0] > 0.5))
    model.train()
    return float(torch.cat(scores).mean())


def train_baseline(cfg: ExperimentConfig, *, features: tuple[int, ...] = DEFAULT_FEATURES,
                   progress: bool = True) -> Path:
    """Train the U-Net on `cfg`'s data with `cfg.train`'s optimiser settings; return the run folder.

    Uses train.{batch_size, lr, lr_schedule, weight_decay, seed, max_steps, time_budget_min, val_every,
    log_every, out_dir, device}; writes config.json, log.jsonl, last.safetensors and
    best.safetensors (best validation IoU), each atomically. A run starts afresh (no resume).
    """
    from monai.losses import DiceCELoss

    from .training import describe_machine, learning_rate, make_dataset, resolve_device

    tc = cfg.train
    out_dir = Path(tc.out_dir)
    torch.manual_seed(tc.seed)
    torch.set_flush_denormal(True)
    train_set = make_dataset(cfg, "train", augment=cfg.data.augment)
    val_set = make_dataset(cfg, "val") if tc.val_every else None
    sampler = GlobalBatchSampler(len(train_set), tc.batch_size, seed=tc.seed, rank=0, world_size=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "config.json", lambda p: p.write_text(json.dumps(
        {"baseline": BASELINE, "features": list(features), "machine": describe_machine(), **cfg.to_dict()},
        indent=2)))

    device = resolve_device(tc.device)
    model = UNetBaseline(cfg.model.in_channels, features).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    loss_fn = DiceCELoss(sigmoid=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"segdiff baseline: {BASELINE} {features}, {n_params / 1e6:.2f} M parameters, "
          f"{len(train_set)} training images, input {cfg.model.image_size}, run folder {out_dir}", flush=True)

    log_file = (out_dir / "log.jsonl").open("w")
    start = time.monotonic()
    best, step, epoch = -1.0, 0, 0

    def log(record: dict) -> None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    def save(name: str, val: float | None) -> None:
        state = {"baseline": BASELINE, "features": list(features), "step": step, "val_iou": val,
                 "elapsed_s": round(time.monotonic() - start, 1)}
        # No EMA here: the weights go where segdiff checkpoints keep the evaluated ones (ema/).
        save_checkpoint(out_dir / f"{name}.safetensors", Checkpoint(config=cfg, ema=model.state_dict(), state=state))

    bar = tqdm(total=tc.max_steps, disable=not progress, dynamic_ncols=True, desc="baseline")
    done = False
    while not done:
        sampler.set_position(epoch, 0)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        for indices in sampler:
            images, masks = zip(*(train_set[i] for i in indices))
            logits = model(torch.stack(images).to(device))
            loss = loss_fn(logits, torch.stack(masks).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(tc, step)
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            step += 1
            bar.update()
            elapsed = time.monotonic() - start
            if step % tc.log_every == 0:
                value = float(loss.detach())
                log({"step": step, "event": "train", "loss": value, "lr": optimizer.param_groups[0]["lr"],
                     "time": round(elapsed, 2)})
                bar.set_postfix(loss=f"{value:.4f}")
            out_of_time = tc.time_budget_min > 0 and elapsed > 60 * tc.time_budget_min
            if val_set is not None and (step % tc.val_every == 0 or out_of_time or step == tc.max_steps):
                val = _val_iou(model, val_set, device, cfg.sample.symmetry)
                log({"step": step, "event": "val", "val_iou": val, "time": round(time.monotonic() - start, 2)})
                tqdm.write(f"step {step}: validation IoU {val:.4f}")
                if val > best:
                    best = val
                    save("best", val)
            if out_of_time or step >= tc.max_steps:
                done = True
                break
        epoch += 1
    bar.close()
    save("last", None)
    log_file.close()
    validated = f"best validation IoU {best:.4f} (best.safetensors)" if best >= 0 else "no validation run"
    print(f"baseline: stopped at step {step} after {time.monotonic() - start:.0f} s; {validated}")
    return out_dir
