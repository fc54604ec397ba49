"""Sampling speed, memory and agreement: the reference pattern beside this project's samplers.

Run side by side in one process, on the same network, images and per-generation seeds:

- (a) reference: what the authors' code does: the full network, image encoder F included, at
  every step, one generation at a time; ancestral DDPM over all T steps.
- (b) ours, DDPM T: `segdiff.predict`: F(I) once per image, the K generations batched in chunks of
  `--max-batch`; the same sampler and the same noise as (a), so the maps must agree (the
  printed max |prob(a) - prob(b)| is float rounding only).
- (c) DDIM, 25 respaced steps (eta = 0).
- (d) SDE-DPM-Solver++(2M), 10 respaced steps (diffusers' scheduler on our betas), and (d') its
  deterministic ODE version, DPM-Solver++(2M).
- optional: (b') and (d'') = (b) and (d) with channels_last inputs (``--channels-last``), (e) = (d)
  under bfloat16 autocast (``--autocast``), (b'') and (f) = (b) and (d) with torch.compile
  (``--compile``; compilation is timed separately).

For each: seconds per image, speed against (a), peak memory, achieved GFLOP/s (FLOPs of one
`encode_image` and one `denoise` counted with `torch.utils.flop_counter.FlopCounterMode`, attention as its matmuls, times
the number of calls each method makes) and its fraction of the machine's "peak" measured in the
same run (the best of a few large float32 matmuls), and, with a trained checkpoint, the mean IoU
of the 0.5-thresholded mean of K generations against the ground truth.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` (reset before each method); on the CPU
the peak resident set size above the level at the method's start, sampled every 2 ms by a
background thread (glibc's free pages are returned with `malloc_trim` before each method).

`--memory-preset NAME` runs the memory check instead: `predict` on one random image at that
preset's input size with K generations in chunks of `--max-batch`, `--memory-steps` DDIM steps
(the peak does not depend on the number of steps: each step frees the previous one's
activations; it depends on the chunk size), random weights.

Examples (the figures in docs/performance.md)::

    segdiff train --preset tiny --steps 1500 --out runs/tiny1500
    python benchmarks/sampling.py --checkpoint runs/tiny1500/last.safetensors --images 32 --generations 8 --autocast
    python benchmarks/sampling.py --preset small --images 1 --generations 4 --autocast
    python benchmarks/sampling.py --memory-preset vaihingen --generations 30 --max-batch 2 --memory-steps 1
    python benchmarks/sampling.py --classes-preset vaihingen-cpu --classes 11 --images 2 --generations 9 --threads 2

(add ``--threads N`` to fix torch's thread count; the docs' runs used ``--threads 1``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass, replace

import torch

from segdiff.config import ExperimentConfig
from segdiff.data import make_dataset
from segdiff.diffusion import DDPMScheduler, from_signed
from segdiff.metrics import iou
from segdiff.model import SegDiff
from segdiff.models import build_model, load_model
from segdiff.sampling import generation_seeds, predict, sample_ddpm
from segdiff.seeding import derive_seed
from segdiff.data.synthetic import make_sample
from segdiff.device import describe_machine

from _common import best_seconds, counting_flops, float32_mode, matmul_peak_gflops, sync


# --- measuring ------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a block, in bytes: CUDA allocator peak, or sampled RSS above the start on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.start = self._rss()
        self.peak_rss, self._stop = self.start, threading.Event()

        def watch() -> None:
            while not self._stop.is_set():
                self.peak_rss = max(self.peak_rss, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak_rss, self._rss()) - self.start


def paper_network_preset(name: str) -> ExperimentConfig:
    """A preset whose denoiser is the paper's network (F, G, the U-Net), which these measurements of F's
    caching need; another (model.body=basicunet, the `cpu` preset) is refused by name."""
    cfg = ExperimentConfig.from_preset(name)
    if cfg.model.body != "segdiff":
        raise SystemExit(f"preset {name}: its denoiser is model.body={cfg.model.body}, not the paper's network "
                         "this measurement is about; choose a preset with model.body=segdiff (e.g. vaihingen-cpu)")
    return cfg


def count_flops(model: SegDiff, size: int, device: torch.device) -> tuple[int, int]:
    """FLOPs of one encode_image and of one denoise, both for a single image / generation."""
    image = torch.rand(1, model.config.in_channels, size, size, device=device)
    with torch.no_grad():
        with counting_flops() as counter:
            cond = model.encode_image(image)
        encode = counter.get_total_flops()
        with counting_flops() as counter:
            model.denoise(torch.randn(1, 1, size, size, device=device), torch.tensor([5], device=device), cond)
        denoise = counter.get_total_flops()
    return encode, denoise


# --- the methods -------------------------------------------------------------------------------------
@torch.no_grad()
def time_share_of_f(model: SegDiff, image: torch.Tensor, device: torch.device, repeats: int = 5) -> float:
    """F's share of the time of one full forward at batch 1 (best of `repeats` each).

    The target for (b) is set by F's share of the FLOPs; what caching F can save is its share of
    the time, which is lower where F's dense convolutions run faster per FLOP than the rest."""
    image = image[:1].to(device)
    cond = model.encode_image(image)
    x, t = torch.randn(1, 1, *image.shape[-2:], device=device), torch.full((1,), 5, device=device)
    encode = best_seconds(lambda: model.encode_image(image), device, repeats)
    denoise = best_seconds(lambda: model.denoise(x, t, cond), device, repeats)
    return encode / (encode + denoise)


@torch.no_grad()
def reference_pattern(model: SegDiff, images: torch.Tensor, scheduler: DDPMScheduler, seeds: list[list[int]],
                      clip_x0: bool = False):
    """(a): the full network (F included) at every step, one generation at a time, DDPM over all T.

    Generation k of image i draws its noise from a generator seeded with seeds[i][k], as `predict`
    does for its row, so (a) and (b) sample the same chains (with the checkpoint's parameterisation
    and x_0 clipping, `DDPMScheduler.to_epsilon`, in both).
    """
    device = next(model.parameters()).device
    probs = []
    for image, image_seeds in zip(images, seeds):
        image = image[None].to(device)
        total = torch.zeros(1, 1, *image.shape[-2:], device=device)
        for seed in image_seeds:
            g = torch.Generator(device=device).manual_seed(seed)
            x0 = sample_ddpm(lambda x, t: scheduler.to_epsilon(model(x, t, image), t, x, clip_x0=clip_x0),
                             scheduler, (1, 1, *image.shape[-2:]),
                             generator=[g], device=device)
            total += from_signed(x0.float())
        probs.append(total / len(image_seeds))
    return torch.cat(probs)


@dataclass
class Result:
    name: str
    seconds_per_image: float
    peak_bytes: int
    flops_per_image: float
    prob: torch.Tensor
    round_seconds: list[float] | None = None  # per image, each round (`--rounds`)


def run_method(name: str, fn, n_images: int, flops_per_image: float, device: torch.device) -> Result:
    with PeakMemory(device) as memory:
        sync(device)
        start = time.perf_counter()
        prob = fn()
        sync(device)
        elapsed = time.perf_counter() - start
    print(f"  {name}: {elapsed:.1f} s", flush=True)
    return Result(name, elapsed / n_images, memory.peak, flops_per_image, prob.cpu())


def median_result(rounds: tuple[Result, ...]) -> Result:
    """One method over several rounds: the median time, the highest peak memory; the maps of all
    rounds are the same (same seeds), the first is kept."""
    seconds = [r.seconds_per_image for r in rounds]
    first = rounds[0]
    return Result(first.name, statistics.median(seconds), max(r.peak_bytes for r in rounds),
                  first.flops_per_image, first.prob, seconds)


def other_python_processes() -> list[str]:
    """Other python processes on the machine (they share the CPU with this benchmark)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "python" in cmd.split(" ")[0]:
            found.append(f"{pid}: {cmd[:100]}")
    return found


# --- main ----------------------------------------------------------------------------------------------
def speed(args: argparse.Namespace, device: torch.device) -> None:
    if args.checkpoint:
        loaded = load_model(args.checkpoint, device=device)
        model, cfg = loaded.net, loaded.config
        if args.data:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=args.data))
        test = make_dataset(cfg, "test")
        n = min(args.images, len(test))
        images, masks = (torch.stack(x) for x in zip(*(test[i] for i in range(n))))
        source = f"checkpoint {args.checkpoint} ({cfg.preset}), {n} images of its {cfg.data.dataset} test split"
    else:
        cfg = paper_network_preset(args.preset)
        torch.manual_seed(args.seed)
        model = SegDiff(cfg.model).to(device).eval()
        # Random weights, speed only. Every layer gets non-zero weights: with the zero-initialised
        # output layers of a fresh network every generation would be the same constant map.
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
        n = args.images
        samples = [make_sample(args.seed, i, cfg.model.image_size) for i in range(n)]
        images, masks = (torch.stack(x) for x in zip(*samples))
        source = f"preset {args.preset}, random weights (speed only), {n} synthetic images"
    scheduler = DDPMScheduler.from_config(cfg.diffusion)
    size, k, steps_total = cfg.model.image_size, args.generations, scheduler.num_steps
    seeds = [generation_seeds(derive_seed(args.seed, f"image{i}"), k) for i in range(n)]
    flat_seeds = [s for row in seeds for s in row]
    encode_flops, denoise_flops = count_flops(model, size, device)
    share_f = encode_flops / (encode_flops + denoise_flops)
    peak = matmul_peak_gflops(device)

    print(f"segdiff sampling benchmark on {describe_machine(device)}")
    print(f"{source}; {size}x{size} px, K={k} generations, T={steps_total}, max_batch={args.max_batch}")
    print(f"FLOPs per image/generation: encode_image (F) {encode_flops / 1e9:.3f} GFLOP, denoise "
          f"{denoise_flops / 1e9:.3f} GFLOP; share of F in one full forward {100 * share_f:.1f} %")
    print(f"precision: {float32_mode(device)}; matmul peak in that precision (2048^3, best of 5): "
          f"{peak:.1f} GFLOP/s")
    others = other_python_processes()
    print(f"other python processes running: {len(others)}" + "".join(f"\n    {o}" for o in others))

    clip = cfg.sample.clip_x0  # the checkpoint's sampling setting, in every row alike

    def ours(sampler: str, steps: int | None, **options):
        return lambda: predict(model, images, scheduler, sampler=sampler, num_sampling_steps=steps or 0, num_generations=k,
                               max_batch=args.max_batch, seeds=flat_seeds, clip_x0=clip, **options).prob

    def cost(steps: int) -> float:  # FLOPs per image with F cached
        return encode_flops + k * steps * denoise_flops

    fast = args.solver_steps
    plan = [
        ("(a) reference: full net every step, 1 gen at a time, DDPM T",
         lambda: reference_pattern(model, images, scheduler, seeds, clip), k * steps_total * (encode_flops + denoise_flops)),
        ("(b) ours: F cached, K batched, DDPM T", ours("ddpm", None), cost(steps_total)),
        *([("(b') = (b) with channels_last inputs", ours("ddpm", None, channels_last=True), cost(steps_total))]
          if args.channels_last else []),
        (f"(c) DDIM (eta 0) {args.ddim_steps} steps", ours("ddim", args.ddim_steps), cost(args.ddim_steps)),
        (f"(d) SDE-DPM-Solver++(2M) {fast} steps", ours("sde-dpm-solver++", fast), cost(fast)),
        (f"(d') DPM-Solver++(2M) (ODE) {fast} steps", ours("dpm-solver++", fast), cost(fast)),
        *([("(d'') = (d) with channels_last inputs", ours("sde-dpm-solver++", fast, channels_last=True), cost(fast))]
          if args.channels_last else []),
    ]
    if args.autocast:
        plan.append(("(e) = (d) under bfloat16 autocast", ours("sde-dpm-solver++", fast, autocast=True), cost(fast)))
    if args.compile:
        start = time.perf_counter()
        # Compiles for these shapes (not timed in the rows below); the solver and DDPM rows share it.
        predict(model, images, scheduler, sampler="ddpm", num_sampling_steps=2, num_generations=k, max_batch=args.max_batch,
                seeds=flat_seeds, compile=True, channels_last=args.channels_last, clip_x0=clip)
        print(f"torch.compile warm-up (compilation + two steps): {time.perf_counter() - start:.1f} s")
        plan.insert(2, ("(b'') = (b) with torch.compile" + (" and channels_last" if args.channels_last else ""),
                        ours("ddpm", None, compile=True, channels_last=args.channels_last), cost(steps_total)))
        plan.append(("(f) = (d) with torch.compile" + (" and channels_last" if args.channels_last else ""),
                     ours("sde-dpm-solver++", fast, compile=True, channels_last=args.channels_last), cost(fast)))
    # Warm-up, not timed: first-call costs (kernel selection, diffusers' import) hit no method.
    for sampler, low in (("ddpm", False), ("sde-dpm-solver++", False), ("sde-dpm-solver++", args.autocast)):
        predict(model, images[:1], scheduler, sampler=sampler, num_sampling_steps=2, num_generations=1, seeds=[0], autocast=low)
    # Round-robin over the methods, `--rounds` times: each row reports its median round, so a
    # passing load on the machine moves one round, not the ratios.
    rounds = [[run_method(name, fn, n, flops, device) for name, fn, flops in plan] for _ in range(args.rounds)]
    results = [median_result(per_method) for per_method in zip(*rounds)]
    share_time = time_share_of_f(model, images, device)

    if args.autocast:
        autocast_check(model, size, min(k, args.max_batch), device)

    base = results[0].seconds_per_image
    trained = bool(args.checkpoint)
    # Mean IoU of each method's thresholded map, once: the table and the (d) target line read it.
    ious = {r.name: 100 * iou((r.prob > 0.5)[:, 0], masks[:, 0]).mean().item() for r in results} if trained else {}
    print()
    print("| method | s / image | speed vs (a) | peak memory (MiB) | GFLOP / image | GFLOP/s | % of matmul peak |"
          + (" mean IoU |" if trained else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if trained else ""))
    for r in results:
        gflops = r.flops_per_image / 1e9
        rate = gflops / r.seconds_per_image
        row = (f"| {r.name} | {r.seconds_per_image:.2f} | {base / r.seconds_per_image:.1f}x "
               f"| {r.peak_bytes / 2**20:.0f} "
               f"| {gflops:.1f} | {rate:.1f} | {100 * rate / peak:.0f} % |")
        if trained:
            row += f" {ious[r.name]:.2f} |"
        print(row)
    print()
    difference = (results[0].prob - results[1].prob).abs().max().item()
    print(f"agreement, same noise: max |prob(a) - prob(b)| = {difference:.2e}")
    if args.rounds > 1:
        print(f"speed vs (a) in each of the {args.rounds} rounds (the table: the median round):")
        for r in results[1:]:
            ratios = ", ".join(f"{a / b:.2f}x" for a, b in zip(results[0].round_seconds, r.round_seconds))
            print(f"  {r.name.split(' ')[0]} {ratios}")
    for (label, *_), r in zip(plan, results):
        if label.startswith("(b"):
            print(f"target (b) >= 1 / (1 - share of F) = {1 / (1 - share_f):.2f}x (a): {label.split(' ')[0]} "
                  f"measured {base / r.seconds_per_image:.2f}x")
    print(f"F's share of the time of one full forward (batch 1, measured here): {100 * share_time:.1f} %, so "
          f"caching F alone can give at most {1 / (1 - share_time):.2f}x (batching the rows can add or lose)")
    for (label, *_), d in zip(plan, results):
        if label.startswith(("(d)", "(d'')")):
            tag = label.split(" ")[0]
            print(f"target (d) >= 20x (a): {tag} measured {base / d.seconds_per_image:.1f}x")
            if trained:
                a_iou, d_iou = ious[results[0].name], ious[d.name]
                print(f"target (d) IoU within 1 point of (a): {tag} {d_iou:.2f} against {a_iou:.2f} "
                      f"({d_iou - a_iou:+.2f} points over {n} images x K={k})")


@torch.no_grad()
def autocast_check(model: SegDiff, size: int, batch: int, device: torch.device) -> None:
    """One denoise call at `batch` rows in float32 and under bfloat16 autocast (`predict(autocast=True)`)."""
    cond = model.encode_image(torch.rand(1, model.config.in_channels, size, size, device=device))
    x, t = torch.randn(batch, 1, size, size, device=device), torch.full((batch,), 5, device=device)
    times = {}
    contexts = (("float32", contextlib.nullcontext()),
                ("bfloat16 autocast", torch.autocast(device.type, dtype=torch.bfloat16)))
    for name, context in contexts:
        with context:
            sync(device)
            start = time.perf_counter()
            out = model.denoise(x, t, cond)  # first call: kernel selection / JIT included
            sync(device)
            first = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(3):
                model.denoise(x, t, cond)
            sync(device)
        times[name] = (time.perf_counter() - start) / 3
        print(f"  one denoise, batch {batch}, {name} ({out.dtype}): {times[name]:.2f} s "
              f"(first call {first:.2f} s)", flush=True)
    print(f"  bfloat16 autocast / float32 time: {times['bfloat16 autocast'] / times['float32']:.1f}x")


def memory(args: argparse.Namespace, device: torch.device) -> None:
    cfg = paper_network_preset(args.memory_preset)
    model = SegDiff(cfg.model).to(device).eval()
    scheduler = DDPMScheduler.from_config(cfg.diffusion)
    size = cfg.model.image_size
    image = torch.rand(1, cfg.model.in_channels, size, size)
    params = sum(p.numel() for p in model.parameters())
    print(f"segdiff sampling memory on {describe_machine(device)}")
    print(f"preset {args.memory_preset} ({params / 1e6:.1f} M parameters, random weights), one {size}x{size} image, "
          f"K={args.generations} generations in chunks of max_batch={args.max_batch}, DDIM {args.memory_steps} step(s)")
    others = other_python_processes()
    print(f"other python processes running: {len(others)}")
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        predict(model, image, scheduler, num_generations=args.generations, max_batch=args.max_batch, sampler="ddim",
                num_sampling_steps=args.memory_steps, seeds=generation_seeds(args.seed, args.generations))
        elapsed = time.perf_counter() - start
    print(f"peak memory above the loaded model: {mem.peak / 2**20:.0f} MiB "
          f"(model weights: {params * 4 / 2**20:.0f} MiB); {elapsed:.1f} s")


def classes_cost(args: argparse.Namespace, device: torch.device) -> None:
    """Sampling cost of a C-class network against the binary one of the same preset, side by side.

    Only G (its input channels) and the output layer grow with C, so the ratio should stay near 1.
    The two networks (random weights) sample the same images with the same sampler, steps and K;
    rounds alternate between them and the median of each is reported.
    """
    base = ExperimentConfig.from_preset(args.classes_preset)
    size = base.model.image_size
    images = torch.rand(args.images, base.model.in_channels, size, size)
    sample = replace(base.sample, num_generations=args.generations, sampler="sde-dpm-solver++",
                     num_sampling_steps=args.solver_steps, max_batch=args.max_batch)
    models = {}
    for label, classes, encoding in (("binary", 2, "onehot"), (f"{args.classes} classes, one-hot", args.classes, "onehot"),
                                     (f"{args.classes} classes, analog bits", args.classes, "bits")):
        cfg = replace(base, model=replace(base.model, num_classes=classes, mask_encoding=encoding))
        torch.manual_seed(0)
        models[label] = build_model(cfg)
        models[label].net.to(device).eval()
    seeds = list(range(args.images * args.generations))
    times: dict[str, list[float]] = {label: [] for label in models}
    for label, model in models.items():  # warm-up
        model.generations(images, seeds, sample)
    for _ in range(max(3, args.rounds)):
        for label, model in models.items():
            start = time.perf_counter()
            with torch.no_grad():
                model.generations(images, seeds, sample)
            sync(device)
            times[label].append(time.perf_counter() - start)
    print(f"segdiff sampling cost by number of classes on {describe_machine(device)}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"preset {args.classes_preset} ({size}x{size}), {args.images} image(s) x K={args.generations}, "
          f"SDE-DPM-Solver++ {args.solver_steps} steps, median of {max(3, args.rounds)} alternating rounds")
    binary = statistics.median(times["binary"])
    for label, model in models.items():
        params = sum(p.numel() for p in model.net.parameters())
        median = statistics.median(times[label])
        print(f"  {label:28s} {params / 1e6:6.3f} M parameters  {median / args.images:7.3f} s/image  "
              f"{median / binary:5.3f}x binary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a trained checkpoint: speed and IoU on its test split")
    parser.add_argument("--preset", default="small", help="without --checkpoint: random weights, speed only "
                        "(default: %(default)s)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4, help="K per image")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--solver-steps", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true", help="add (b') and (d''): (b) and (d) with NHWC "
                        "inputs (predict(channels_last=True))")
    parser.add_argument("--compile", action="store_true", help="add (b'') and (f): (b) and (d) with torch.compile")
    parser.add_argument("--autocast", action="store_true", help="add (e): (d) under bfloat16 autocast, and time "
                        "one denoise in float32 and under autocast")
    parser.add_argument("--memory-preset", help="measure the peak memory of K generations at this preset instead")
    parser.add_argument("--memory-steps", type=int, default=1)
    parser.add_argument("--classes-preset", help="compare the sampling cost of a --classes network with the binary "
                        "one of this preset instead")
    parser.add_argument("--classes", type=int, default=11, help="with --classes-preset (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="time every method this many times, round-robin; "
                        "the table gives each method's median")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--data", help="with --checkpoint: the data folder, instead of the one in its config")
    parser.add_argument("--no-tf32", action="store_true", help="CUDA: plain float32 convolutions and matmuls "
                        "(PyTorch lets cuDNN use TF32 by default, which rounds (a) and (b) apart by ~1e-3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if args.classes_preset:
        classes_cost(args, device)
    elif args.memory_preset:
        memory(args, device)
    else:
        speed(args, device)


if __name__ == "__main__":
    main()
