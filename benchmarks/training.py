"""Training throughput: samples/s of the plain fp32 eager step beside each speed option, in one run.

Each setting runs `segdiff.train` itself (the real loop: synthetic data generated in the main
process, forward, backward, AdamW, EMA) and its speed is read from the run's own log, which
times every step: samples per second of the median step after the warm-up steps (so model
building, torch.compile's compilation and the final checkpoint are not counted). Settings
alternate in rounds, so that other load on the machine falls on all of them alike; the table
gives the best round (other load only slows a round down) and the median round, each with its
ratio to the plain step.

With --compare-kinds it measures instead the preset's SegDiff beside the plain U-Net baseline (the
same preset with model.kind=unet), and, for a preset whose denoiser is not the paper's network
(`cpu`), SegDiff with the paper's network too, all trained the same way, and adds for each the FLOPs of one
training sample (FlopCounterMode over one forward + backward of one batch), the GFLOP/s that makes
and its share of the machine's float32 matmul peak measured in the same run; then where SegDiff's
forward + backward goes: the share of its FLOPs and of its time in the image encoder F, in the
attention blocks and in the rest. F and the attention blocks are counted and timed in isolation
(forward + backward of F on the batch, and of each attention block on the input it gets in the
step, captured by forward hooks; best of 5 each); the rest is one whole forward + backward (best
of 5) less those. AdamW and the EMA update are not part of the split.

    python benchmarks/training.py --preset tiny --threads 2
    python benchmarks/training.py --preset small --batch-size 8 --steps 6 --rounds 2
    python benchmarks/training.py --compare-kinds --preset vaihingen-cpu --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from segdiff.config import PAPER_NETWORK, ExperimentConfig
from segdiff.device import describe_machine
from segdiff.model import AttentionBlock, SegDiff
from segdiff.models import Segmenter, build_model
from segdiff.training import train

from _common import best_seconds, counting_flops, matmul_peak_gflops

# Settings measured beside the plain fp32 eager step: (name, --set overrides).
SETTINGS = [
    ("fp32 eager (plain)", []),
    ("channels_last", ["train.channels_last=true"]),
    ("fused AdamW", ["train.fused_adamw=true"]),
    ("torch.compile", ["train.compile=true"]),
    ("bf16 autocast", ["train.precision=bf16"]),
    ("channels_last + fused AdamW + compile", ["train.channels_last=true", "train.fused_adamw=true",
                                               "train.compile=true"]),
]


def kinds(preset: str) -> list[tuple[str, list[str]]]:
    """The models --compare-kinds measures, (name, --set overrides): the preset's SegDiff; where the
    preset's denoiser is not the paper's (model.body), SegDiff with the paper's network on the same
    preset (x_0 by MSE: `cpu` before its BasicUNet body); the U-Net baseline."""
    paper = ([] if ExperimentConfig.from_preset(preset).model.body == "segdiff"
             else [("segdiff, paper's network", list(PAPER_NETWORK))])
    return [("segdiff", []), *paper, ("unet", ["model.kind=unet"])]


def benchmark_config(preset: str, sets: list[str], args, out: Path | str = "unused") -> ExperimentConfig:
    """The preset on synthetic data at its own input size, with the benchmark's batch and steps."""
    return ExperimentConfig.from_preset(preset).override([
        "data.dataset=synthetic", f"data.num_train={max(64, 4 * args.batch_size)}", "data.num_workers=0",
        f"train.batch_size={args.batch_size}", f"train.max_steps={args.warmup + args.steps}", "train.log_every=1",
        "train.val_every=0", "train.save_every=1000000", "train.keep_last=1", f"train.device={args.device}",
        f"train.out_dir={out}", *sets])


def samples_per_s(preset: str, sets: list[str], args, out: Path) -> float:
    """Train `args.warmup + args.steps` steps; samples/s of the median of the last `args.steps` steps."""
    cfg = benchmark_config(preset, sets, args, out)
    with contextlib.redirect_stdout(io.StringIO()):  # the resolved config, printed by every run
        train(cfg, progress=False)
    times = {r["step"]: r["time"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    # The median step: a burst of other load on the machine moves it less than it moves the mean.
    steps = range(args.warmup + 1, args.warmup + args.steps + 1)
    return args.batch_size / statistics.median(times[s] - times[s - 1] for s in steps)


def training_batch(cfg: ExperimentConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of the preset's shape: images (B, C_in, S, S) in [0, 1], masks (B, C, S, S) in {0, 1}."""
    m, gen = cfg.model, torch.Generator().manual_seed(0)
    shape = (cfg.train.batch_size, -1, m.image_size, m.image_size)
    image = torch.rand(cfg.train.batch_size * m.in_channels * m.image_size**2, generator=gen).reshape(shape)
    mask = torch.rand(cfg.train.batch_size * m.mask_channels * m.image_size**2, generator=gen).reshape(shape) < 0.3
    return image.to(device), mask.float().to(device)


def forward_backward(model: Segmenter, image: torch.Tensor, mask: torch.Tensor) -> None:
    """One training step's forward and backward (no optimizer step), the loss as `train` computes it."""
    generator = torch.Generator(image.device).manual_seed(0)
    model.loss(model.net, image, mask, generator, model.config.train, slice(None)).backward()
    model.net.zero_grad(set_to_none=True)


def step_flops(model: Segmenter, image: torch.Tensor, mask: torch.Tensor) -> int:
    """FLOPs of one forward + backward of the batch."""
    return flops_of(lambda: forward_backward(model, image, mask))


def flops_of(fn) -> int:
    with counting_flops() as counter:
        fn()
    return counter.get_total_flops()


def segdiff_split(model: Segmenter, image: torch.Tensor, mask: torch.Tensor, device: torch.device) -> list[tuple]:
    """(part, FLOPs, seconds) of SegDiff's forward + backward: F, the attention blocks, the rest.

    F and the attention blocks are counted and timed in isolation: FlopCounterMode's per-module
    attribution of the backward pass is not reliable (it put 20x the isolated FLOPs on the tiny
    preset's attention blocks), so the rest is the whole step less the two parts."""
    net = model.net
    attention = {name: block for name, block in net.named_modules() if isinstance(block, AttentionBlock)}
    # The input each attention block gets in the step, captured by forward hooks on one forward.
    inputs: dict[str, tuple] = {}

    def capture(name: str):
        def hook(module, args, output) -> None:  # returns None: the output is left as it is
            inputs[name] = args
        return hook

    hooks = [block.register_forward_hook(capture(name)) for name, block in attention.items()]
    with torch.no_grad():
        model.loss(net, image, mask, torch.Generator(device).manual_seed(0), model.config.train, slice(None))
    for hook in hooks:
        hook.remove()

    def encoder_step() -> None:
        net.image_encoder(image * 2 - 1).sum().backward()  # F reads the image in [-1, 1], as encode_image does
        net.zero_grad(set_to_none=True)

    def attention_step() -> None:
        for name, block in attention.items():
            x, *rest = inputs[name]
            block(x.detach().requires_grad_(), *rest).sum().backward()
        net.zero_grad(set_to_none=True)

    total, step_s = step_flops(model, image, mask), best_seconds(lambda: forward_backward(model, image, mask), device)
    encoder_flops, encoder_s = (flops_of(encoder_step), best_seconds(encoder_step, device)) \
        if net.image_encoder is not None else (0, 0.0)
    attention_flops, attention_s = (flops_of(attention_step), best_seconds(attention_step, device)) \
        if attention else (0, 0.0)
    return [("image encoder F (full resolution)", encoder_flops, encoder_s),
            (f"attention blocks ({len(attention)})", attention_flops, attention_s),
            ("rest of the U-Net, G and the loss", total - encoder_flops - attention_flops,
             step_s - encoder_s - attention_s),
            ("whole forward + backward", total, step_s)]


def compare_kinds(args, results: dict[str, list[float]]) -> None:
    """The table of SegDiff against the U-Net, and SegDiff's split; `results` holds each kind's rounds."""
    device = torch.device(args.device)
    peak = matmul_peak_gflops(device)
    print(f"\nfloat32 matmul peak (2048^3, best of 5): {peak:.1f} GFLOP/s")
    rows = {}
    for name, sets in kinds(args.preset):
        cfg = benchmark_config(args.preset, sets, args)
        model = build_model(cfg)
        model.net.to(device).train()
        image, mask = training_batch(cfg, device)
        rows[name] = (model, image, mask, sum(p.numel() for p in model.net.parameters()),
                      step_flops(model, image, mask) / args.batch_size)
    best = {name: max(rates) for name, rates in results.items()}
    median = {name: statistics.median(rates) for name, rates in results.items()}
    print(f"\n| kind | parameters | samples/s, best of {args.rounds} | samples/s, median | GFLOP / sample "
          "(fwd + bwd) | GFLOP/s (best) | % of matmul peak |\n|---|---|---|---|---|---|---|")
    for name, (_, _, _, params, flops) in rows.items():
        rate = flops * best[name] / 1e9
        print(f"| {name} | {params / 1e6:.2f} M | {best[name]:.3g} | {median[name]:.3g} | {flops / 1e9:.3f} "
              f"| {rate:.1f} | {100 * rate / peak:.1f} % |")
    for name in filter(lambda name: name != "unet", rows):
        print(f"\nsamples/s, U-Net / {name}: {best['unet'] / best[name]:.2f}x (best rounds), "
              f"{median['unet'] / median[name]:.2f}x (median rounds)")
    # where the paper's network spends its step (a BasicUNet body is the U-Net's network: no F, no attention)
    name = next(name for name, (model, *_) in rows.items() if isinstance(model.net, SegDiff))
    model, image, mask, _, _ = rows[name]
    split = segdiff_split(model, image, mask, device)
    total_flops, total_s = split[-1][1], split[-1][2]
    print(f"\n{name}: forward + backward of one batch of {args.batch_size}:\n\n"
          "| part | GFLOP | share of FLOPs | ms | share of time | GFLOP/s |\n|---|---|---|---|---|---|")
    for part, flops, seconds in split:
        print(f"| {part} | {flops / 1e9:.2f} | {100 * flops / total_flops:.1f} % | {1e3 * seconds:.1f} "
              f"| {100 * seconds / total_s:.1f} % | {flops / seconds / 1e9:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="tiny (32 px) or small (128 px) on a CPU; any preset on a GPU "
                        "(default: tiny; vaihingen-cpu with --compare-kinds)")
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting and round")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="names of settings to run (default: all)")
    parser.add_argument("--compare-kinds", action="store_true",
                        help="the preset's SegDiff against the U-Net baseline instead of the speed options")
    args = parser.parse_args()
    args.preset = args.preset or ("vaihingen-cpu" if args.compare_kinds else "tiny")
    args.batch_size = args.batch_size or ExperimentConfig.from_preset(args.preset).train.batch_size
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_kinds:
        settings = kinds(args.preset)
    else:
        settings = [s for s in SETTINGS if not args.only or s[0] in args.only or s[0] == SETTINGS[0][0]]
    print(f"segdiff training benchmark: preset {args.preset}, batch {args.batch_size}, {args.steps} timed steps "
          f"after {args.warmup} warm-up, {args.rounds} rounds; device {args.device}, {describe_machine()} "
          f"({torch.backends.cpu.get_cpu_capability()})", flush=True)
    results: dict[str, list[float]] = {name: [] for name, _ in settings}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, (name, sets) in enumerate(settings):
                rate = samples_per_s(args.preset, sets, args, Path(tmp) / f"r{round_}_{i}")
                results[name].append(rate)
                print(f"  round {round_ + 1}: {name}: {rate:.3g} samples/s", flush=True)
    if args.compare_kinds:
        compare_kinds(args, results)
        print(f"\ntotal time {time.monotonic() - started:.0f} s")
        return
    # Other load only ever slows a round down, so the best round is the least disturbed estimate.
    best, median = max(results[SETTINGS[0][0]]), statistics.median(results[SETTINGS[0][0]])
    print(f"\n| setting | samples/s, best of {args.rounds} | ratio | samples/s, median | ratio |\n|---|---|---|---|---|")
    for name, rates in results.items():
        print(f"| {name} | {max(rates):.3g} | {max(rates) / best:.2f}x | {statistics.median(rates):.3g} | "
              f"{statistics.median(rates) / median:.2f}x |")
    print(f"\ntotal time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
