"""Training throughput: samples/s of the plain fp32 eager step beside each speed option, in one run.

Each setting runs `segdiff.train` itself (the real loop: synthetic data generated in the main
process, forward, backward, AdamW, EMA) and its speed is read from the run's own log, which
times every step: samples per second of the median step after the warm-up steps (so model
building, torch.compile's compilation and the final checkpoint are not counted). Settings
alternate in rounds, so that other load on the machine falls on all of them alike; the table
gives the best round (other load only slows a round down) and the median round, each with its
ratio to the plain step.

    python benchmarks/training.py --preset tiny --threads 2
    python benchmarks/training.py --preset small --batch-size 8 --steps 6 --rounds 2
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

from segdiff.config import ExperimentConfig
from segdiff.device import describe_machine
from segdiff.training import train

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


def samples_per_s(preset: str, sets: list[str], args, out: Path) -> float:
    """Train `args.warmup + args.steps` steps; samples/s of the median of the last `args.steps` steps."""
    cfg = ExperimentConfig.from_preset(preset).override([
        "data.dataset=synthetic", f"data.num_train={max(64, 4 * args.batch_size)}", "data.num_workers=0",
        f"train.batch_size={args.batch_size}", f"train.max_steps={args.warmup + args.steps}", "train.log_every=1",
        "train.val_every=0", "train.save_every=1000000", "train.keep_last=1", f"train.device={args.device}",
        f"train.out_dir={out}", *sets])
    with contextlib.redirect_stdout(io.StringIO()):  # the resolved config, printed by every run
        train(cfg, progress=False)
    times = {r["step"]: r["time"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    # The median step: a burst of other load on the machine moves it less than it moves the mean.
    steps = range(args.warmup + 1, args.warmup + args.steps + 1)
    return args.batch_size / statistics.median(times[s] - times[s - 1] for s in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="tiny (32 px) or small (128 px) on a CPU; any preset on a GPU")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting and round")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="names of settings to run (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
    # Other load only ever slows a round down, so the best round is the least disturbed estimate.
    best, median = max(results[SETTINGS[0][0]]), statistics.median(results[SETTINGS[0][0]])
    print(f"\n| setting | samples/s, best of {args.rounds} | ratio | samples/s, median | ratio |\n|---|---|---|---|---|")
    for name, rates in results.items():
        print(f"| {name} | {max(rates):.3g} | {max(rates) / best:.2f}x | {statistics.median(rates):.3g} | "
              f"{statistics.median(rates) / median:.2f}x |")
    print(f"\ntotal time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
