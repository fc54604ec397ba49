"""Is data loading ever the bottleneck? Loader samples/s beside the model's training-step samples/s.

For each preset (default: ``small`` = Vaihingen at 128 px, ``vaihingen`` = the paper's 256 px
network), on the real Vaihingen training split with the preset's augmentation:

- loader: the DataLoader as ``segdiff.training.train`` builds it on one CPU process (preset batch
  size, its ``GlobalBatchSampler``, persistent workers) with 0, 1 and 2 workers. "cold" is the
  first epoch (worker start-up and TIFF decoding included: each worker decodes a file the first
  time it sees it, then keeps it); "warm" is the steady state after every worker has seen every
  file, which is what a long run sees.
- model: forward + backward + AdamW step of the same preset (``torch.nn.functional.mse_loss``
  on the predicted noise, as the training loop computes it) on a real batch, samples/s. The
  paper-size network is slow on a CPU, so its batch and step count are options.
- fed (optional, ``--fed-steps``): training steps that draw their batch from the warm loader,
  per worker count, interleaved with steps on a batch already in memory: the combined rate,
  where workers and the model share the CPU, beside the model alone under the same conditions.

The ratio loader/model says how many times faster the pipeline delivers samples than the model
consumes them; above 1 loading is not the bottleneck. Example (the figures in
docs/performance.md)::

    python benchmarks/data.py --data DATA
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segdiff.config import ExperimentConfig
from segdiff.data import make_dataset
from segdiff.diffusion import DDPMScheduler, to_signed
from segdiff.distributed import GlobalBatchSampler
from segdiff.model import SegDiff
from segdiff.device import describe_machine


def _loader(dataset, batch_size: int, workers: int, seed: int) -> DataLoader:
    # As segdiff.training.train builds it on one CPU process (no pinned memory without CUDA).
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def _next_epoch(loader: DataLoader):
    """The batches of the loader's current epoch; the sampler moves on to the next epoch after
    the last one, as the training loop moves it on."""
    yield from loader
    loader.batch_sampler.set_position(loader.batch_sampler.epoch + 1)


def _rate(loader: DataLoader, epochs: int) -> float:
    """Samples per second over `epochs` passes of `loader`."""
    samples, start = 0, time.perf_counter()
    for _ in range(epochs):
        for image, _ in _next_epoch(loader):
            samples += image.shape[0]
    return samples / (time.perf_counter() - start)


def loader_rates(cfg: ExperimentConfig, workers: int, warm_epochs: int) -> tuple[float, float, DataLoader]:
    """(cold, warm) samples/s of the training loader with `workers` workers, and the warm loader."""
    dataset = make_dataset(cfg, "train", augment=cfg.data.augment)
    loader = _loader(dataset, cfg.train.batch_size, workers, cfg.train.seed)
    cold = _rate(loader, 1)
    _rate(loader, max(0, workers - 1))  # until every worker has decoded every file
    return cold, _rate(loader, warm_epochs), loader


def _train_step(model, optimizer, scheduler, image, mask) -> None:
    x0 = to_signed(mask)
    t = torch.randint(0, scheduler.num_steps, (x0.shape[0],))
    noise = torch.randn_like(x0)
    loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t, image), noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def model_rate(cfg: ExperimentConfig, batch: tuple[torch.Tensor, torch.Tensor], steps: int,
               warmup: int) -> tuple[SegDiff, torch.optim.Optimizer, DDPMScheduler, float]:
    """Training-step samples/s of `cfg`'s network on `batch`, after `warmup` untimed steps."""
    model = SegDiff(cfg.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = DDPMScheduler.from_config(cfg.diffusion)
    for _ in range(warmup):
        _train_step(model, optimizer, scheduler, *batch)
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(model, optimizer, scheduler, *batch)
    return model, optimizer, scheduler, steps * batch[0].shape[0] / (time.perf_counter() - start)


def fed_rates(model, optimizer, scheduler, loader: DataLoader, batch, steps: int) -> tuple[float, float]:
    """(fed, alone) training samples/s: `steps` steps that take their batch from the (warm) loader,
    interleaved with `steps` steps on a batch already in memory, so that whatever else runs on the
    machine slows both alike and their ratio isolates the cost of loading."""
    batches = _next_epoch(loader)
    fed_time = alone_time = 0.0
    fed_samples = alone_samples = 0
    for _ in range(steps):
        start = time.perf_counter()
        try:
            image, mask = next(batches)
        except StopIteration:
            batches = _next_epoch(loader)
            image, mask = next(batches)
        _train_step(model, optimizer, scheduler, image, mask)
        middle = time.perf_counter()
        _train_step(model, optimizer, scheduler, *batch)
        fed_time, alone_time = fed_time + middle - start, alone_time + time.perf_counter() - middle
        fed_samples, alone_samples = fed_samples + image.shape[0], alone_samples + batch[0].shape[0]
    return fed_samples / fed_time, alone_samples / alone_time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("SEGDIFF_DATA"), required="SEGDIFF_DATA" not in os.environ,
                        help="data root holding vaihingen/buildings (default: $SEGDIFF_DATA)")
    parser.add_argument("--presets", nargs="+", default=["small", "vaihingen"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--warm-epochs", type=int, default=2, help="timed epochs for the warm loader rate")
    parser.add_argument("--model-steps", nargs="+", default=["small=5", "vaihingen=2"], metavar="PRESET=N",
                        help="timed model steps per preset (default: %(default)s)")
    parser.add_argument("--model-batch", nargs="+", default=["vaihingen=1"], metavar="PRESET=B",
                        help="model batch where it differs from the preset's (default: %(default)s)")
    parser.add_argument("--fed-steps", nargs="+", default=[], metavar="PRESET=N",
                        help="loader-fed training steps per worker count, e.g. small=4 (default: none; on "
                        "a CPU the loader's share is far below the run-to-run noise of a few steps)")
    args = parser.parse_args(argv)
    as_map = lambda items: {k: int(v) for k, v in (item.split("=") for item in items)}  # noqa: E731
    model_steps, model_batch, fed_steps = as_map(args.model_steps), as_map(args.model_batch), as_map(args.fed_steps)

    torch.set_flush_denormal(True)  # as training does on the CPU
    print(f"machine: {describe_machine()}")
    print(f"command: python {' '.join(sys.argv)}")
    for preset in args.presets:
        cfg = ExperimentConfig.from_preset(preset)
        cfg = replace(cfg, data=replace(cfg.data, dataset="vaihingen", root=str(Path(args.data))))
        batch_size = cfg.train.batch_size
        print(f"\npreset {preset}: Vaihingen train split at {cfg.model.image_size} px, batch {batch_size}, "
              f"augmentation on ({cfg.data.augment})")
        loaders, warm_rates = {}, {}
        for workers in args.workers:
            cold, warm_rates[workers], loaders[workers] = loader_rates(cfg, workers, args.warm_epochs)
            warm = warm_rates[workers]
            print(f"  loader, {workers} worker(s): cold {cold:7.1f} samples/s, warm {warm:7.1f} samples/s",
                  flush=True)
        mb = model_batch.get(preset, batch_size)
        image, mask = next(iter(_loader(make_dataset(cfg, "train", augment=True), mb, 0, 0)))
        steps = model_steps.get(preset, 3)
        model, optimizer, scheduler, rate = model_rate(cfg, (image, mask), steps, warmup=1)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"  model ({n_params:.1f} M parameters), forward+backward+AdamW at batch {mb}: {rate:.3f} samples/s "
              f"({mb / rate:.2f} s/step, {steps} timed steps after 1 warm-up)", flush=True)
        for workers, warm in warm_rates.items():
            print(f"  ratio loader(warm, {workers} worker(s)) / model: {warm / rate:8.1f}x")
        if preset in fed_steps:
            for workers, loader in loaders.items():
                fed, alone = fed_rates(model, optimizer, scheduler, loader, (image, mask), fed_steps[preset])
                print(f"  training fed by the loader, {workers} worker(s): {fed:.3f} samples/s, interleaved "
                      f"with the model alone: {alone:.3f} samples/s (fed/alone {fed / alone:.0%}; "
                      f"{fed_steps[preset]} steps each)", flush=True)
        del loaders  # stops the persistent workers
    return 0


if __name__ == "__main__":
    sys.exit(main())
