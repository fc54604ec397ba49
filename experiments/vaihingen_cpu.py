"""Vaihingen under a CPU budget: every run behind docs/results.md, and the page itself.

    python experiments/vaihingen_cpu.py run --data ../shared/data           # all stages, one at a time
    python experiments/vaihingen_cpu.py run --data ../shared/data --only train-segdiff test-segdiff
    python experiments/vaihingen_cpu.py report                              # docs/results.md from the runs

`run` executes the `segdiff` commands in STAGES (each stage after the stages it needs), logging
each to RUNS/logs/STAGE.log and marking success with RUNS/logs/STAGE.done; a marked stage is
skipped, so an interrupted run continues. Each command names its thread count (OMP_NUM_THREADS): the
main runs had the 2-core machine to themselves, the 1-thread runs ran two side by side (--jobs 2).
`report` reads only what the runs wrote (summary.json, log.jsonl, the figures) and writes
docs/results.md with the commands quoted from STAGES: no number on the page is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESET = "vaihingen-cpu"
UNET_STEPS = 20_000  # what 60 min on 2 cores fit for the U-Net here (5.9 steps/s), so its cosine lr ends too
ABLATION_STEPS = 1500  # equal steps for the three arms: about 27 min for `sum` here (1 thread)
ABLATION_GENERATIONS = 10
STEPS_GENERATIONS = 3
STEPS_IMAGES = 34  # the first half of the test split: 100-step DDPM is the costliest run on the page
CONDITIONINGS = ("sum", "concat", "image-concat")
K_SHOWN = (1, 3, 9, 30)  # the generations the issue asks the scores for
# The preset's second version, which most runs on the page were made with: `sum` conditioning and
# uniform training steps (the paper's), widths 32, 64, 64, 128; its lr decayed to 0 at 5400 steps.
# These settings on top of the preset rebuild it exactly.
SECOND = {"model.conditioning": "sum", "train.timestep_power": "1", "model.base_channels": "32",
          "model.channel_mult": "[1,2,2,4]", "train.max_steps": "5400"}
# The first version: the second with a constant lr, every run on 1 core with two side by side.
# Its runs stay on the page (the ablation and the epsilon comparison were made with it).
FIRST = {**SECOND, "train.lr_schedule": "constant"}


def _sets(settings: dict[str, str]) -> str:
    """`--set` flags for `settings`, quoted where the shell would read brackets."""
    return " ".join(f"--set '{k}={v}'" if "[" in v else f"--set {k}={v}" for k, v in settings.items())


# Variants, each trained alone on the 2 cores for its hour and tested like the main run: run folder,
# the page's label, the flags added to the preset's `segdiff train`, and what they train.
VARIANTS = (
    ("segdiff-80px", "SegDiff `vaihingen-cpu` at 80 px",
     _sets({"model.image_size": "80", "model.attention_resolutions": "[20,10]", "train.max_steps": "4800"}),
     "the preset at 80 px (attention at 20 and 10 px, where 16 and 8 px are at 64 px), its lr decaying to 0 at "
     "4800 steps, about what an hour fits (1.56x the FLOPs per step; the hour ran out a little before); 64 px "
     "limits even a perfect prediction: the test masks resized to 64 px and back score below 100 "
     "(`experiments/vaihingen_cpu.py oracle`)"),
    ("segdiff-dropout", "SegDiff `vaihingen-cpu`, dropout 0.1", _sets({"model.dropout": "0.1"}),
     "the preset with the paper's dropout of 0.1 in its residual blocks (the preset has none), against the "
     "plateau of validation IoU while the training loss keeps falling"),
    ("segdiff-selfcond", "SegDiff `vaihingen-cpu`, self-conditioning",
     _sets({"model.self_condition": "true", "train.max_steps": "6000"}),
     "the preset with self-conditioning (`model.self_condition=true`, Chen et al. 2022): G also reads the "
     "previous sampling step's x_0 estimate, trained on half of each batch with the network's own estimate "
     "from a pass without gradients; its lr decays to 0 at 6000 steps, as the extra pass makes each step "
     "slower"),
    ("segdiff-dice", "SegDiff `vaihingen-cpu`, + Dice loss", _sets({"train.dice_weight": "1"}),
     "the preset with a soft Dice loss between its x_0 estimate, read as a probability, and the mask added to "
     "the MSE (`train.dice_weight=1`), the overlap loss the U-Net baseline trains with"),
    ("segdiff-5level", "SegDiff `vaihingen-cpu`, a fifth level at 4 px", _sets({"model.channel_mult": "[1,2,4,8,8]"}),
     "the preset with a fifth level of width 128 at 4 px (widths 16, 32, 64, 128, 128 at 64, 32, 16, 8, 4 px): its "
     "deepest level at 4 px, as in the paper's 7-level network at 256 px and in the U-Net baseline, where the "
     "preset's stops at 8 px; the preset's 7000-step schedule, which its slower steps did not finish in the "
     "hour"),
    ("segdiff-v2", "SegDiff, the preset's second version", _sets(SECOND),
     "the preset's second version: training steps t drawn uniformly and `sum` conditioning (both the paper's), "
     "widths 32, 64, 64, 128 at 64, 32, 16, 8 px, its lr decaying to 0 at 5400 steps"),
    ("segdiff-96px", "second version at 96 px",
     _sets({**SECOND, "model.image_size": "96", "model.attention_resolutions": "[24,12]", "train.max_steps": "2200"}),
     "the second version's network at 96 px (attention at 24 and 12 px, where 16 and 8 px were at 64 px), its lr "
     "decaying to 0 at 2200 steps, which an hour fits (2.25x the FLOPs per step)"),
    ("segdiff-tpow2", "second version, training steps t biased to high noise",
     _sets({**SECOND, "train.timestep_power": "2"}),
     "the second version with its training steps t drawn with density proportional to t "
     "(`train.timestep_power=2`) instead of uniformly: the high-noise half of the steps, where the image alone "
     "must give the mask, gets three quarters of each batch"),
    ("segdiff-tpow2-concat", "second version, t biased, `concat` conditioning",
     _sets({**SECOND, "train.timestep_power": "2", "model.conditioning": "concat"}),
     "the same biased steps, with F(I) and G(x_t) concatenated instead of summed (the paper's `concat` "
     "ablation arm, the best of the three in the ablation below); the preset is this run with thinner "
     "high-resolution levels"),
)


@dataclass(frozen=True)
class Stage:
    name: str
    command: str  # {data} and {runs} are filled in; each names its thread count (OMP_NUM_THREADS)
    after: tuple[str, ...] = ()


def _evaluate(checkpoint: str, out: str, generations: int, sampler: str | None = "sde-dpm-solver++",
              steps: int | None = 10, max_images: int | None = None, threads: int = 2,
              symmetry: str | None = None) -> str:
    """The test evaluation of {runs}/checkpoint into {runs}/out, scored at the paper's 256 px
    (`symmetry`: the test-time transforms, where not the checkpoint's own setting)."""
    sampling = (f" --generations {generations} --sampler {sampler}" + (f" --steps {steps}" if steps else "")
                if sampler else "") + (f" --max-images {max_images}" if max_images else "")
    sampling += f" --symmetry {symmetry}" if symmetry else ""
    return (f"OMP_NUM_THREADS={threads} segdiff evaluate {{runs}}/{checkpoint} --dataset vaihingen --data {{data}} "
            f"--split test{sampling} --score-size 256 --out {{runs}}/{out}")


STAGES: tuple[Stage, ...] = (
    # The page's main comparison: each run alone on the 2-core machine for its 60 minutes.
    Stage("train-segdiff", f"OMP_NUM_THREADS=2 segdiff train --preset {PRESET} --data {{data}} --out {{runs}}/segdiff"),
    Stage("train-unet", f"OMP_NUM_THREADS=2 segdiff baseline --preset {PRESET} --data {{data}} --steps {UNET_STEPS} "
          "--out {runs}/unet", ("train-segdiff",)),
    Stage("test-segdiff", _evaluate("segdiff", "segdiff/test", 30), ("train-segdiff",)),
    *(stage for name, _, flags, _ in VARIANTS for stage in (
        Stage(f"train-{name}", f"OMP_NUM_THREADS=2 segdiff train --preset {PRESET} --data {{data}} {flags} "
              f"--out {{runs}}/{name}", ("train-unet",)),
        Stage(f"test-{name}", _evaluate(name, f"{name}/test", 30), (f"train-{name}",)))),
    Stage("test-unet", _evaluate("unet", "unet/test", 1, sampler=None), ("train-unet",)),
    # Test-time symmetry: the same checkpoints, each generation (the U-Net: each pass) on one of the
    # eight flips/rotations of the image, mapped back before averaging.
    Stage("test-segdiff-dihedral", _evaluate("segdiff", "segdiff/test-dihedral", 30, symmetry="dihedral"),
          ("train-segdiff",)),
    Stage("test-unet-dihedral", _evaluate("unet", "unet/test-dihedral", 1, sampler=None, symmetry="dihedral"),
          ("train-unet",)),
    *(Stage(f"steps-{name}", _evaluate("segdiff", f"segdiff/steps-{name}", STEPS_GENERATIONS, sampler, steps,
                                       STEPS_IMAGES), ("train-segdiff",))
      for name, sampler, steps in (("ddpm-100", "ddpm", None), ("ddpm-25", "ddpm", 25),
                                   ("sde-dpm-solver-10", "sde-dpm-solver++", 10))),
    # The first version of the preset (constant lr), 1 core per run, two runs side by side.
    Stage("train-segdiff-constant-lr", f"OMP_NUM_THREADS=1 segdiff train --preset {PRESET} --data {{data}} "
          f"{_sets(FIRST)} --steps 200000 --out {{runs}}/segdiff-constant-lr"),
    Stage("train-unet-constant-lr", f"OMP_NUM_THREADS=1 segdiff baseline --preset {PRESET} --data {{data}} "
          "--steps 200000 --set train.lr_schedule=constant --out {runs}/unet-constant-lr"),
    Stage("test-segdiff-constant-lr", _evaluate("segdiff-constant-lr", "segdiff-constant-lr/test", 30, threads=1),
          ("train-segdiff-constant-lr",)),
    Stage("test-unet-constant-lr", _evaluate("unet-constant-lr", "unet-constant-lr/test", 1, sampler=None,
                                             threads=1), ("train-unet-constant-lr",)),
    # The paper's parameterisation on the same preset (the run behind the page was stopped by hand
    # at step 1384; this stage stops there).
    Stage("train-segdiff-epsilon", f"OMP_NUM_THREADS=1 segdiff train --preset {PRESET} --data {{data}} "
          f"{_sets(FIRST)} --steps 1384 --set diffusion.prediction=epsilon --set sample.clip_x0=false "
          "--out {runs}/segdiff-epsilon"),
    *(Stage(f"train-ablation-{c}", f"OMP_NUM_THREADS=1 segdiff train --preset {PRESET} --data {{data}} "
            f"{_sets({**FIRST, 'model.conditioning': c})} --steps {ABLATION_STEPS} --out {{runs}}/ablation-{c}")
      for c in CONDITIONINGS),
    *(Stage(f"test-ablation-{c}", _evaluate(f"ablation-{c}/last.safetensors", f"ablation-{c}/test",
                                            ABLATION_GENERATIONS, threads=1), (f"train-ablation-{c}",))
      for c in CONDITIONINGS),
)


# --- run -------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    runs = Path(args.runs)
    (runs / "logs").mkdir(parents=True, exist_ok=True)
    todo = [s for s in STAGES if not args.only or s.name in args.only]
    done = {s.name for s in STAGES if (runs / "logs" / f"{s.name}.done").exists()}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    failed: list[str] = []
    waiting_since = None
    while todo or running:
        # Stages marked done meanwhile (e.g. by another `run` on the same folder) count at once.
        done |= {s.name for s in STAGES if (runs / "logs" / f"{s.name}.done").exists()}
        for name, (proc, started) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                minutes = (time.monotonic() - started) / 60
                if proc.returncode == 0:
                    done.add(name)
                    (runs / "logs" / f"{name}.done").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
                    print(f"[{time.strftime('%H:%M:%S')}] done {name} ({minutes:.1f} min)", flush=True)
                else:
                    failed.append(name)
                    print(f"[{time.strftime('%H:%M:%S')}] FAILED {name} (exit {proc.returncode}); see "
                          f"{runs}/logs/{name}.log", flush=True)
        for stage in list(todo):
            if stage.name in done:
                todo.remove(stage)
                print(f"skip {stage.name}: {runs}/logs/{stage.name}.done exists")
                continue
            if len(running) >= args.jobs:
                break
            if any(dep in failed for dep in stage.after):
                todo.remove(stage)
                failed.append(stage.name)
                continue
            if all(dep in done for dep in stage.after):
                todo.remove(stage)
                command = stage.command.format(data=args.data, runs=runs)
                print(f"[{time.strftime('%H:%M:%S')}] start {stage.name}: {command}", flush=True)
                log = (runs / "logs" / f"{stage.name}.log").open("w")
                running[stage.name] = (subprocess.Popen(command, shell=True, stdout=log,
                                                        stderr=subprocess.STDOUT), time.monotonic())
        if not running and todo:
            if waiting_since is None or time.monotonic() - waiting_since > 600:
                waiting_since = time.monotonic()
                print(f"[{time.strftime('%H:%M:%S')}] waiting for stages outside --only to be marked done: "
                      f"{sorted({d for s in todo for d in s.after} - done)}", flush=True)
        else:
            waiting_since = None
        time.sleep(1)
    return 1 if failed else 0


# --- oracle ----------------------------------------------------------------------------------------------
ORACLE_SIZES = (64, 80, 96, 128)


def oracle(args: argparse.Namespace) -> int:
    """What training at S px costs a perfect model: the test masks as training sees them at S px
    (resized, thresholded), resized back to 256 and thresholded as `evaluate --score-size 256` does."""
    import torch.nn.functional as F

    from segdiff.data import build_dataset
    from segdiff.io import atomic_write
    from segdiff.metrics import boundary_f_mean, iou

    full = build_dataset("vaihingen", args.data, "test", 256)
    targets = [full[i][1] for i in range(len(full))]  # (1, 256, 256) each
    rows = {}
    for size in ORACLE_SIZES:
        small = build_dataset("vaihingen", args.data, "test", size)
        ious, boundfs = [], []
        for i, target in enumerate(targets):
            back = F.interpolate(small[i][1][None], size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = back[0] >= 0.5
            ious.append(float(iou(pred, target > 0.5)))
            boundfs.append(float(boundary_f_mean(pred, target > 0.5)))
        rows[size] = {"iou": sum(ious) / len(ious), "boundf": sum(boundfs) / len(boundfs), "images": len(ious)}
        print(f"{size} px: mIoU {100 * rows[size]['iou']:.2f}, BoundF {100 * rows[size]['boundf']:.2f} "
              f"over {len(ious)} test images", flush=True)
    out = Path(args.runs) / "resolution-oracle.json"
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))
    print(f"wrote {out}")
    return 0


# --- report ----------------------------------------------------------------------------------------------
def _summary(runs: Path, rel: str) -> dict | None:
    path = runs / rel
    return json.loads(path.read_text()) if path.exists() else None


def _val_curve(run_dir: Path) -> tuple[list[float], list[float], dict]:
    """(minutes, val IoU) of a run's validations, and its last training record."""
    minutes, values, last = [], [], {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "val":
            minutes.append(record["time"] / 60)
            values.append(record["val_iou"])
        if record.get("event") in ("train", "val") and record.get("step", 0) >= last.get("step", 0):
            last = {**last, **record}  # the latest step and time, whichever kind of record has them
    return minutes, values, last


def _parameters(config: dict) -> int:
    """Parameter count of the network a run folder's config.json describes."""
    from segdiff.baseline import UNetBaseline
    from segdiff.config import ExperimentConfig
    from segdiff.model import SegDiff

    cfg = ExperimentConfig.from_dict({k: v for k, v in config.items() if k not in ("baseline", "features", "machine")})
    model = UNetBaseline(cfg.model.in_channels, tuple(config["features"])) if "baseline" in config else SegDiff(cfg.model)
    return sum(p.numel() for p in model.parameters())


def _paired_iou(runs: Path, rel_a: str, rel_b: str) -> tuple[float, float, int]:
    """Mean and standard error of the per-image IoU difference b - a (percent) over the images both
    evaluations scored: the same images, so the image-to-image spread cancels."""
    import csv

    def read(rel: str) -> dict[str, float]:
        with open(runs / rel / "per_image.csv") as f:
            return {row["name"]: float(row["iou"]) for row in csv.DictReader(f)}

    a, b = read(rel_a), read(rel_b)
    diffs = [100 * (b[name] - a[name]) for name in a if name in b]
    return statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5, len(diffs)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _command(name: str) -> str:
    stage = next(s for s in STAGES if s.name == name)
    return stage.command.format(data="../shared/data", runs="runs/vaihingen-cpu")


def report(args: argparse.Namespace) -> int:
    from segdiff.plots import plot_training_curves

    runs, out = Path(args.runs), Path(args.out)
    figures = out.parent / "figures" / "results"
    figures.mkdir(parents=True, exist_ok=True)
    main = _summary(runs, "segdiff/test/summary.json")
    if main is None:
        sys.exit(f"{runs}/segdiff/test/summary.json is missing: run the stages first")
    lines = [
        "# Results: Vaihingen buildings under a CPU budget",
        "",
        "Written by `python experiments/vaihingen_cpu.py report` from the runs in `runs/vaihingen-cpu/`; every "
        "number below is read from a run's `summary.json` or `log.jsonl`.",
        "",
        f"Machine (from the test evaluation's summary): {main['machine']}.",
        "",
    ]
    # 1. SegDiff against the U-Net and the paper.
    variants = [v for v in VARIANTS if _summary(runs, f"{v[0]}/test/summary.json") is not None]
    runs_table = (("SegDiff `vaihingen-cpu`", "segdiff"), ("U-Net baseline", "unet"),
                  *((label, name) for name, label, _, _ in variants),
                  ("SegDiff, first preset (constant lr)", "segdiff-constant-lr"),
                  ("U-Net baseline, constant lr", "unet-constant-lr"))
    curves = {}
    rows = []
    for label, name in runs_table:
        summary = _summary(runs, f"{name}/test/summary.json")
        if summary is None:
            continue
        cores = int(re.search(r"OMP_NUM_THREADS=(\d+)", _command(f"train-{name}")).group(1))
        minutes, values, last = _val_curve(runs / name)
        curves[f"{label}, {cores} core{'s' * (cores > 1)}"] = (minutes, values)
        config = json.loads((runs / name / "config.json").read_text())
        m = summary["metrics"]
        rows.append(f"| {label} | {cores} | {config['train']['lr_schedule'] if 'lr_schedule' in config['train'] else 'constant'} | "
                    f"{_parameters(config) / 1e6:.2f} | {_pct(m['f1'])} | {_pct(m['iou'])} | {_pct(m['wcov'])} | "
                    f"{_pct(m['wcov_size_ratio'])} | {_pct(m['boundf'])} | {m['calibration']:.4f} | {m['ece']:.4f} | "
                    f"{last.get('step', '-')} | {minutes[-1] if minutes else 0:.0f} | {summary['num_generations']} | "
                    f"{summary['seconds_per_image']:.2f} |")
    if (runs / "segdiff-epsilon" / "log.jsonl").exists():
        curves["SegDiff, the paper's epsilon prediction, constant lr, 1 core"] = _val_curve(runs / "segdiff-epsilon")[:2]
    paper = main["paper"]["metrics"]
    from segdiff.config import ExperimentConfig

    paper_params = _parameters(ExperimentConfig.vaihingen().to_dict())  # the paper's network, built here
    rows.append(f"| paper (SegDiff `vaihingen` preset, 256 px, GPU) | - | constant | {paper_params / 1e6:.2f} | "
                f"{paper['f1']:.2f} | {paper['iou']:.2f} | - | {paper['wcov_size_ratio']:.2f} | {paper['boundf']:.2f} "
                "| - | - | - | - | 30 | - |")
    about_rows = (
        "Test split (68 images), scored at the paper's 256 x 256: the models' probabilities at their input size "
        "(64, 80 or 96 px) are resized bilinearly to 256 before the 0.5 threshold (`segdiff evaluate "
        "--score-size 256`). Percent, except the calibration score and ECE (lower is better). The first two rows "
        "are the page's comparison: each model trained alone on the 2-core machine for at most 60 minutes, its lr "
        "decaying (cosine) to 0 at the steps that fit. "
        + "".join(f"Row {i + 3}, alone on the 2 cores for its hour as well: {what}. "
                  for i, (*_, what) in enumerate(variants))
        + "The last two before the paper's are the first version of the preset: constant lr, the two runs side by "
        "side on one core each. Test evaluations of the 2-core runs used 2 threads, the others 1 (the s/image "
        "column).")
    lines += [
        "## SegDiff against a plain U-Net, same data, input and time",
        "",
        about_rows,
        "",
        "| model | cores | lr | parameters (M) | F1 | mIoU | WCov | WCov (size ratio, the paper's) | BoundF | "
        "calibration | ECE | training steps | training minutes | K | test s/image |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Commands:",
        "",
        "```",
        *(_command(f"{kind}-{name}") for _, name in runs_table for kind in ("train", "test")),
        "```",
        "",
    ]
    plot_training_curves(figures / "val_iou_over_time.png", {k.replace("`", ""): v for k, v in curves.items()},
                         title="Vaihingen validation split (10 images) at 64 px; SegDiff: K=3, 10 solver steps")
    lines += [
        "![validation IoU over training time](figures/results/val_iou_over_time.png)",
        "",
        "The `vaihingen-cpu` network predicts x_0 (the mask) and its sampler clamps each step's x_0 estimate "
        "to [-1, 1]; the paper's network predicts the noise and samples without clamping. The last line is the "
        "first preset with the paper's choices (`--set diffusion.prediction=epsilon --set sample.clip_x0=false`), "
        "stopped by hand when it was clear it was not learning the masks' shape at this budget:",
        "",
        "```",
        _command("train-segdiff-epsilon"),
        "```",
        "",
    ]
    for label, (minutes, values) in curves.items():
        if values:
            best = max(range(len(values)), key=values.__getitem__)
            tail = values[-4:]
            lines.append(f"- {label}: validation IoU {100 * values[0]:.1f} at {minutes[0]:.0f} min, best "
                         f"{100 * values[best]:.1f} at {minutes[best]:.0f} min, last four "
                         f"{', '.join(f'{100 * v:.1f}' for v in tail)} (at {minutes[-1]:.0f} min).")
    lines.append("")

    oracle_path = runs / "resolution-oracle.json"
    if oracle_path.exists():
        ceiling = json.loads(oracle_path.read_text())
        lines += [
            "## What the input size costs a perfect model",
            "",
            "The test masks as training sees them at each input size (resized antialiased, thresholded at 0.5), "
            "resized back to 256 px bilinearly and thresholded at 0.5, as `--score-size 256` treats the models' "
            "probabilities: the scores a model would get if it reproduced its training targets exactly.",
            "",
            "| input (px) | mIoU | BoundF |",
            "|---:|---:|---:|",
            *(f"| {size} | {_pct(row['iou'])} | {_pct(row['boundf'])} |" for size, row in ceiling.items()),
            "",
            "```",
            "python experiments/vaihingen_cpu.py oracle --data ../shared/data --runs runs/vaihingen-cpu",
            "```",
            "",
        ]

    # 2. The number of generations.
    curve = main["curve"]
    ks = [k for k in K_SHOWN if k <= len(curve["iou"])]
    lines += [
        "## The number of generations K",
        "",
        f"One sampling run of K = {main['num_generations']} ({main['sampler']}, {main['num_steps']} steps); the "
        "score for K = k is that of the mean of its first k generations (the same generations a k-generation run "
        "draws).",
        "",
        "| K | F1 | mIoU | BoundF | calibration | ECE |",
        "|---:|---:|---:|---:|---:|---:|",
        *(f"| {k} | {_pct(curve['f1'][k - 1])} | {_pct(curve['iou'][k - 1])} | {_pct(curve['boundf'][k - 1])} | "
          f"{curve['calibration'][k - 1]:.4f} | {curve['ece'][k - 1]:.4f} |" for k in ks),
        "",
    ]
    k_rows = []
    for label, name in (("SegDiff `vaihingen-cpu`", "segdiff"), *((label, name) for name, label, _, _ in variants)):
        s = _summary(runs, f"{name}/test/summary.json")
        if name == "segdiff":
            paired = "-"
        else:
            mean, se, _ = _paired_iou(runs, "segdiff/test", f"{name}/test")
            paired = f"{mean:+.2f} ± {se:.2f}"
        k_rows.append(f"| {label} | " + " | ".join(_pct(s["curve"]["iou"][k - 1]) for k in ks) + f" | {paired} |")
    lines += [
        ("Test mIoU over K for every SegDiff run of the first table trained on the 2 cores (each scored from its "
         "one sampling run of K = 30, as above), and at the largest K its per-image difference from the preset's "
         "run on the same images (mean ± standard error over the images; one seed per run, so this error does "
         "not include what another seed would change):"),
        "",
        "| run | " + " | ".join(f"K = {k}" for k in ks) + f" | K = {ks[-1]} minus the preset, paired |",
        "|---|" + "---:|" * (len(ks) + 1),
        *k_rows,
        "",
    ]
    for name in ("generations_metrics.png", "generations_calibration.png", "reliability.png", "examples.png"):
        shutil.copyfile(runs / "segdiff" / "test" / name, figures / name)
    lines += [
        "![metrics over K](figures/results/generations_metrics.png)",
        "![calibration over K](figures/results/generations_calibration.png)",
        "![reliability diagram](figures/results/reliability.png)",
        "",
        "Best and worst test images (image, ground truth, probability, uncertainty, prediction):",
        "",
        "![examples](figures/results/examples.png)",
        "",
    ]

    # 3. Test-time symmetry.
    sym_rows, sym_diffs = [], []
    for label, short, name in (("SegDiff `vaihingen-cpu`", "SegDiff", "segdiff"), ("U-Net baseline", "U-Net", "unet")):
        pair = [_summary(runs, f"{name}/{rel}/summary.json") for rel in ("test", "test-dihedral")]
        if None in pair:
            continue
        for s in pair:
            m = s["metrics"]
            by_k = " | ".join(_pct(s["curve"]["iou"][k - 1]) if k <= s["num_generations"] else "-"
                              for k in K_SHOWN[:-1])
            sym_rows.append(f"| {label} | {s.get('symmetry', 'none')} | {s['num_generations']} | {_pct(m['f1'])} | "
                            f"{_pct(m['iou'])} | {_pct(m['boundf'])} | {m['calibration']:.4f} | {m['ece']:.4f} | "
                            f"{by_k} | {s['seconds_per_image']:.2f} |")
        mean, se, n = _paired_iou(runs, f"{name}/test", f"{name}/test-dihedral")
        sym_diffs.append(f"- {short}: mIoU with `dihedral` minus without, image by image: {mean:+.2f} points "
                         f"(standard error {se:.2f} over {n} images).")
    if sym_rows:
        lines += [
            "## Test-time symmetry",
            "",
            ("The same two checkpoints as the first two rows above, on the test split at 256 px. With `--symmetry "
             "dihedral`, generation k of an image is sampled on the image under the k-th (mod 8) of the eight "
             "flips and 90-degree rotations of the square and mapped back before averaging; the samples drawn, and "
             "so the time, are those of the plain run (F(I) is computed once per transform used). Aerial tiles "
             "have no preferred orientation, and training already draws rotations and flips. The U-Net averages "
             "its probability over the eight transforms (eight passes in place of one)."),
            "",
            "| model | symmetry | K | F1 | mIoU | BoundF | calibration | ECE | "
            + " | ".join(f"mIoU at K = {k}" for k in K_SHOWN[:-1]) + " | test s/image |",
            "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(K_SHOWN) - 1) + "---:|",
            *sym_rows,
            "",
            *sym_diffs,
            "",
            "```",
            *(_command(name) for name in ("test-segdiff-dihedral", "test-unet-dihedral")),
            "```",
            "",
        ]

    # 4. Sampling steps.
    step_rows = []
    k = STEPS_GENERATIONS
    for rel in ("steps-ddpm-100", "steps-ddpm-25", "steps-sde-dpm-solver-10"):
        s = _summary(runs, f"segdiff/{rel}/summary.json")
        if s is not None:
            m = s["metrics"]
            step_rows.append((s["sampler"], s["num_steps"], m["f1"], m["iou"], m["boundf"], m["calibration"],
                              m["ece"], s["seconds_per_image"]))
    lines += [
        "## Sampling steps: 100 against 25",
        "",
        f"The SegDiff `vaihingen-cpu` of the first row above, K = {k} generations per image with the same seeds in every row, on the first "
        f"{STEPS_IMAGES} test images (the 100-step run is the costliest on this page), scored at 256 px. Seconds "
        "per image include scoring.",
        "",
        "| sampler | steps | F1 | mIoU | BoundF | calibration | ECE | test s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {name} | {steps} | {_pct(f)} | {_pct(i)} | {_pct(bf)} | {c:.4f} | {e:.4f} | {sec:.2f} |"
          for name, steps, f, i, bf, c, e, sec in step_rows),
        "",
        "```",
        *(_command(f"steps-{name}") for name in ("ddpm-100", "ddpm-25", "sde-dpm-solver-10")),
        "```",
        "",
    ]

    # 5. The conditioning ablation.
    abl_rows = []
    for c in CONDITIONINGS:
        s = _summary(runs, f"ablation-{c}/test/summary.json")
        if s is None:
            continue
        _, values, last = _val_curve(runs / f"ablation-{c}")
        m = s["metrics"]
        abl_rows.append(f"| {c} | {_pct(m['f1'])} | {_pct(m['iou'])} | {_pct(m['boundf'])} | "
                        f"{m['calibration']:.4f} | {last.get('step', '-')} | {last.get('time', 0) / 60:.0f} |")
    lines += [
        "## The paper's conditioning ablation",
        "",
        f"Each variant trained {ABLATION_STEPS} steps (the same number of updates), same seed, data and the first "
        "version of the preset (constant lr, one core each); "
        f"the checkpoint at step {ABLATION_STEPS} scored on the test split at 256 px, K = {ABLATION_GENERATIONS}, "
        "SDE-DPM-Solver++ with 10 steps. (The paper's Table 4 compares them on MoNuSeg and Cityscapes after full "
        "training.)",
        "",
        "| conditioning | F1 | mIoU | BoundF | calibration | training steps | training minutes |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *abl_rows,
        "",
        "```",
        *(_command(f"train-ablation-{c}") for c in CONDITIONINGS),
        *(_command(f"test-ablation-{c}") for c in CONDITIONINGS),
        "```",
        "",
    ]
    lines += gpu_section(Path(args.gpu_runs), figures)
    text = "\n".join(lines)
    if args.notes and Path(args.notes).exists():
        text += "\n" + Path(args.notes).read_text()
    out.write_text(text)
    print(f"wrote {out} and {figures}/")
    return 0


def gpu_section(gpu_runs: Path, figures: Path) -> list[str]:
    """The paper's preset on a GPU lease (experiments/gpu_vaihingen.sh), read from what it wrote."""
    run = gpu_runs / "vaihingen"
    main = _summary(run, "test/summary.json")
    if main is None:
        return []
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    vals = {r["step"]: r["val_iou"] for r in records if r["event"] == "val"}
    best_step = max(vals, key=vals.get)
    # The commands, quoted from the session log the script wrote (its stage lines).
    log = (gpu_runs / "session.log").read_text()
    reproduce = re.search(r"^=== reproduce \(.*?\): (.*)$", log, re.M).group(1)
    points = sorted((int(p.name.removeprefix("step-")), json.loads((p / "summary.json").read_text()))
                    for p in (run / "curve").glob("step-*") if (p / "summary.json").exists())
    # One curve command stands for all: its step written as STEP.
    curve_cmds = [re.sub(r"(last|step)-\d+", r"\1-STEP", c)
                  for c in re.findall(r"^=== curve-\d+ \(.*?\): (.*)$", log, re.M)[:1]]
    m, paper = main["metrics"], main["paper"]["metrics"]
    for name in ("examples.png", "generations_metrics.png"):
        shutil.copyfile(run / "test" / name, figures / f"gpu_{name}")
    k_curve = main["curve"]["iou"]
    return [
        "## The paper's preset on a GPU, for the minutes one lease allowed",
        "",
        f"Machine: {main['machine']}. The `vaihingen` preset ({_parameters(config) / 1e6:.2f} M parameters, "
        f"256 px, batch {config['train']['batch_size']}, lr {config['train']['lr']}, the paper's noise prediction) "
        f"trained with `train.precision={config['train']['precision']}` for "
        f"{config['train']['time_budget_min']} minutes: {train[-1]['step']} steps at "
        f"{train[-1]['samples_per_s']:.1f} samples/s (the paper trains for hundreds of thousands of steps). "
        "The data was the 256 px copy that `experiments/vaihingen_256.py` writes (the masks identical to what the "
        "loader makes of the originals, the images within 0.5/255). The tested checkpoint is the best on "
        f"validation (step {best_step}, validation IoU {100 * vals[best_step]:.1f}). The sampler is SDE-DPM-Solver++ "
        "with 10 steps rather than the paper's 100-step DDPM, so that K = 30 on 68 images fitted the lease.",
        "",
        "| model | steps | F1 | mIoU | WCov | WCov (size ratio, the paper's) | BoundF | calibration | ECE | K |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| SegDiff `vaihingen`, GPU lease | {best_step} | {_pct(m['f1'])} | {_pct(m['iou'])} | {_pct(m['wcov'])} | "
        f"{_pct(m['wcov_size_ratio'])} | {_pct(m['boundf'])} | {m['calibration']:.4f} | {m['ece']:.4f} | "
        f"{main['num_generations']} |",
        f"| paper | - | {paper['f1']:.2f} | {paper['iou']:.2f} | - | {paper['wcov_size_ratio']:.2f} | "
        f"{paper['boundf']:.2f} | - | - | 30 |",
        "",
        "Test mIoU over training steps (every step checkpoint, K = "
        f"{points[0][1]['num_generations'] if points else '-'}, the same sampler; validation IoU at the same step):",
        "",
        "| step | test mIoU | test F1 | validation IoU |",
        "|---:|---:|---:|---:|",
        *(f"| {step} | {_pct(s['metrics']['iou'])} | {_pct(s['metrics']['f1'])} | {_pct(vals.get(step))} |"
          for step, s in points),
        "",
        "mIoU over K for the tested checkpoint: " + ", ".join(
            f"K={k}: {_pct(k_curve[k - 1])}" for k in K_SHOWN if k <= len(k_curve)) + ".",
        "",
        "![GPU run: metrics over K](figures/results/gpu_generations_metrics.png)",
        "![GPU run: examples](figures/results/gpu_examples.png)",
        "",
        "Commands (`bash experiments/gpu_vaihingen.sh .gpudata /tmp/runs $OUT` ran them in one lease):",
        "",
        "```",
        "python experiments/vaihingen_256.py ../shared/data .gpudata",
        reproduce,
        *curve_cmds,
        "```",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the stages")
    p.add_argument("--data", default=os.environ.get("SEGDIFF_DATA", "../shared/data"))
    p.add_argument("--runs", default="runs/vaihingen-cpu")
    p.add_argument("--jobs", type=int, default=1, help="stages at once (the 1-thread stages ran two at a time)")
    p.add_argument("--only", nargs="*", help="stage names to run (default: all)")
    p.set_defaults(func=run)
    p = sub.add_parser("report", help="write docs/results.md from the runs")
    p.add_argument("--runs", default="runs/vaihingen-cpu")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--gpu-runs", default="runs/gpu-h200", help="what experiments/gpu_vaihingen.sh wrote "
                   "(its runs.tgz unpacked, with session.log beside it); skipped when absent")
    p.add_argument("--notes", default=str(ROOT / "experiments" / "vaihingen_cpu_notes.md"),
                   help="hand-written discussion appended to the page (it must quote no number)")
    p.set_defaults(func=report)
    p = sub.add_parser("oracle", help="the test masks at each training size, scored at 256 px as the models are")
    p.add_argument("--data", default=os.environ.get("SEGDIFF_DATA", "../shared/data"))
    p.add_argument("--runs", default="runs/vaihingen-cpu")
    p.set_defaults(func=oracle)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
