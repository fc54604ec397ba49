"""Rerun docs/results.md, "CamVid (11 classes)": the `camvid-cpu` preset against the U-Net on 2 CPU cores.

    python experiments/camvid_cpu.py sizes --data DATA                    # choose the input size
    python experiments/camvid_cpu.py run --data DATA --name main --minutes 60
    python experiments/camvid_cpu.py run --data DATA --name alone --minutes 60 --alone --models segdiff
    python experiments/camvid_cpu.py run --data DATA --name encoding --minutes 15 --models onehot bits
    python experiments/camvid_cpu.py report                               # the section of docs/results.md

`sizes` measures, for each candidate input side S, what the input size costs and what it caps:
the resolution ceiling (CamVid's train+val label maps resized to S x S with nearest neighbour,
brought back to 480x360 the way the protocol brings a prediction back, one-hot probabilities
resized bilinearly before the argmax, then scored: the mIoU a perfect S x S model would get) and
the training step time of SegDiff and of the U-Net at S (median of timed steps of the real loop on
CamVid, batch 8, 2 threads), written to RUNS/sizes.json.

`run` trains the models named side by side, one thread each (the machine has 2 cores: each model
gets one, both the same wall time), or with `--alone` one after another, each alone on 2 threads
(one model a call if need be: run.json keeps the models of earlier calls of the same run), then
scores each in turn, alone on 2 threads, on CamVid's 233 test images at 480x360 with K =
`--test-generations` (the curve over k = 1..K comes from the same generations). Every stage is
logged to RUNS/NAME/logs/STAGE.log and marked done with STAGE.done: an interrupted run continues
where it stopped. `report` writes the CamVid section of docs/results.md (between the CAMVID
markers) and docs/figures/camvid/*.png from the runs' files; every number in it comes from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # segdiff, when run from a checkout without install
sys.path.insert(0, str(ROOT / "experiments"))  # _common, also when a test loads this file

from _common import add_run_arguments, begin_run, machine, read_log, run_stages, training_threads  # noqa: E402

RUNS = ROOT / "runs" / "camvid-cpu"
SIZES = (64, 96, 128)
# name -> (label in the report, the training command's arguments after `segdiff`)
MODELS: dict[str, tuple[str, str]] = {
    "segdiff": ("SegDiff `camvid-cpu` (one-hot)", "train --preset camvid-cpu"),
    "unet": ("U-Net baseline", "baseline --preset camvid-cpu"),
    "onehot": ("SegDiff, one-hot mask (11 channels)", "train --preset camvid-cpu"),
    "bits": ("SegDiff, analog bits (4 channels)", "train --preset camvid-cpu --set model.mask_encoding=bits"),
}
BEGIN, END = "<!-- CAMVID: written by experiments/camvid_cpu.py report -->", "<!-- /CAMVID -->"


# --- sizes --------------------------------------------------------------------------------------
def resolution_ceiling(data: str, size: int) -> dict:
    """Confusion scores of the train+val label maps after S x S and back (module docstring)."""
    import torch
    import torch.nn.functional as F

    from segdiff import metrics
    from segdiff.data.camvid import CAMVID_CLASSES, CamVid
    from segdiff.labels import IGNORE
    from segdiff.protocol import resize_probabilities
    from segdiff.data.reading import resize_labels

    c = CAMVID_CLASSES.num_classes
    matrix = torch.zeros(c, c, dtype=torch.int64)
    for split in ("train", "val"):
        dataset = CamVid(data, split, image_size=size)
        for i in range(len(dataset)):
            target = dataset.original_mask(i)  # (1, 360, 480)
            small = resize_labels(target, size)[0].long()  # (S, S), -1 on void
            onehot = F.one_hot(small.clamp(min=0), c).permute(2, 0, 1).float()
            onehot[:, small == int(IGNORE)] = 1 / c  # a perfect model knows nothing of void pixels
            predicted = resize_probabilities(onehot, tuple(target.shape[-2:])).argmax(0)
            matrix += metrics.confusion_matrix(predicted, target[0].long(), c, ignore_index=int(IGNORE))
    scores = metrics.confusion_scores(matrix)
    return {"miou": float(scores["miou"]), "per_class": dict(zip(CAMVID_CLASSES.names, scores["iou"].tolist()))}


def step_seconds(data: str, size: int, kind: str, steps: int = 12, warmup: int = 3) -> float:
    """Median seconds of a training step of the preset at input side `size` (real loop, real data)."""
    import contextlib
    import io

    import torch

    from segdiff.config import ExperimentConfig
    from segdiff.training import train

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as out:
        cfg = ExperimentConfig.from_preset("camvid-cpu").override([
            f"model.image_size={size}", f"model.attention_resolutions=[{size // 4}, {size // 8}]",
            f"model.kind={kind}", f"data.root={data}", f"train.max_steps={warmup + steps}", "train.log_every=1",
            "train.val_every=0", "train.save_every=1000000", "train.keep_last=1", "train.time_budget_min=0",
            "train.tensorboard=false", f"train.out_dir={out}"])
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg, progress=False)
        times = {r["step"]: r["time"] for r in map(json.loads, (Path(out) / "log.jsonl").read_text().splitlines())
                 if r.get("event") == "train"}
    return statistics.median(times[s] - times[s - 1] for s in range(warmup + 1, warmup + steps + 1))


def sizes(args: argparse.Namespace) -> int:
    results = {"machine": machine(), "sizes": {}}
    for size in args.sizes:
        ceiling = resolution_ceiling(args.data, size)
        row = {"ceiling": ceiling, "step_s": {kind: step_seconds(args.data, size, kind) for kind in ("segdiff", "unet")}}
        results["sizes"][str(size)] = row
        print(f"S={size}: ceiling mIoU {100 * ceiling['miou']:.1f} (" + ", ".join(
            f"{n} {100 * v:.0f}" for n, v in ceiling["per_class"].items()) + "); step "
            + ", ".join(f"{k} {v:.3f} s" for k, v in row["step_s"].items()), flush=True)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "sizes.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {runs / 'sizes.json'}")
    return 0


# --- run ----------------------------------------------------------------------------------------
def stages(name: str, model: str, args: argparse.Namespace) -> list[tuple[str, str]]:
    """(training stage, test stage) of one model: training on one thread beside the other models
    (with `--alone`, on 2 threads, alone), testing alone on 2 threads."""
    data = shlex.quote(args.data)
    run = shlex.quote(str(Path(args.runs) / name / model))
    threads = training_threads(len(args.models), args.alone)
    return [
        (f"train-{model}", f"OMP_NUM_THREADS={threads} segdiff {MODELS[model][1]} --data {data} "
                           f"--time-budget {args.minutes:g} --out {run}"),
        (f"test-{model}", f"OMP_NUM_THREADS=2 segdiff evaluate {run} --dataset camvid --data {data} "
                          f"--split test --generations {args.test_generations} --out {run}/test"),
    ]


def run(args: argparse.Namespace) -> int:
    """The models train side by side, each in a process of its own (with `--alone`, one after
    another, each alone on the machine); then each is tested in turn."""
    logs = begin_run(Path(args.runs) / args.name, args.minutes, args.models, args.alone)
    plans = {model: stages(args.name, model, args) for model in args.models}
    if run_stages(logs, dict(plan[0] for plan in plans.values()), args.alone):
        return 1
    return run_stages(logs, dict(plan[1] for plan in plans.values()), alone=True)


# --- report -------------------------------------------------------------------------------------
K_SHOWN = (1, 3, 9, 30)


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def size_lines(runs: Path) -> list[str]:
    path = runs / "sizes.json"
    if not path.exists():
        return []
    sizes_ = json.loads(path.read_text())
    rows = [f"| {s} | {pct(r['ceiling']['miou'])} | {pct(r['ceiling']['per_class']['pole'])} | "
            f"{pct(r['ceiling']['per_class']['pedestrian'])} | {r['step_s']['segdiff']:.2f} | {r['step_s']['unet']:.2f} |"
            for s, r in sizes_["sizes"].items()]
    return [
        "Input size (`python experiments/camvid_cpu.py sizes`): the ceiling is the mIoU a perfect model at S x S "
        "would score at 480x360 (CamVid train+val label maps resized to S and back as the protocol does); the step "
        f"is one training step of batch 8 on 2 threads (median) on {sizes_['machine']}.",
        "",
        "| input S | ceiling mIoU | ceiling pole IoU | ceiling pedestrian IoU | SegDiff s/step | U-Net s/step |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        (f"The preset takes 64 px: a SegDiff step costs {ratio(sizes_, 96):.1f}x as much at 96 px and "
         f"{ratio(sizes_, 128):.1f}x at 128 px, and the 64 px ceiling is far above what an hour of training "
         "reaches (the table above)."),
        "",
    ]


def ratio(sizes_: dict, size: int) -> float:
    """SegDiff's step time at `size` over its step time at 64 px."""
    steps = {int(s): r["step_s"]["segdiff"] for s, r in sizes_["sizes"].items()}
    return steps[size] / steps[64]


def report(args: argparse.Namespace) -> int:
    from segdiff.data.camvid import CAMVID_CLASSES
    from segdiff.io import write_section
    from segdiff.plots import plot_training_curves
    from segdiff.protocol import CAMVID_PUBLISHED_IOU, CAMVID_PUBLISHED_MIOU, CAMVID_PUBLISHED_SOURCE

    page = Path(args.out)
    figures = page.parent / "figures" / "camvid"
    figures.mkdir(parents=True, exist_ok=True)
    main_runs = Path(args.runs) / args.name
    info = json.loads((main_runs / "run.json").read_text())
    summaries, curves, steps_done = {}, {}, {}
    for model in info["models"]:
        summary_path = main_runs / model / "test" / "summary.json"
        if not summary_path.exists():
            sys.exit(f"{summary_path} is missing: run `python experiments/camvid_cpu.py run --name {args.name}` first")
        summaries[model] = json.loads(summary_path.read_text())
        steps, vals = read_log(main_runs / model)
        steps_done[model] = steps[-1]["step"]
        curves[MODELS[model][0]] = ([v["time"] / 60 for v in vals], [v["val_iou"] for v in vals])
    plot_training_curves(figures / "val-miou.png", curves, title="CamVid validation mIoU (64 val images, K=3)")
    segdiff, unet = summaries["segdiff"], summaries["unet"]
    k_total = segdiff["num_generations"]

    def at_k(summary, key, k):
        curve = summary["curve"]
        return curve[key][min(k, len(curve[key])) - 1]

    class_rows = []
    for c, name in enumerate(CAMVID_CLASSES.names):
        cells = [pct(s["per_class"][name]["iou"]) for s in (segdiff, unet)]
        cells += [f"{row[c]:.1f}" for row in CAMVID_PUBLISHED_IOU.values()]
        class_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    class_rows.append("| **mIoU** | " + " | ".join(
        [f"**{pct(s['metrics']['miou'])}**" for s in (segdiff, unet)]
        + [f"**{v:.1f}**" for v in CAMVID_PUBLISHED_MIOU.values()]) + " |")
    for key, label in (("pixel_accuracy", "pixel accuracy"), ("mean_class_accuracy", "mean class accuracy")):
        class_rows.append(f"| {label} | {pct(segdiff['metrics'][key])} | {pct(unet['metrics'][key])} |"
                          + " |" * len(CAMVID_PUBLISHED_IOU))
    k_rows = [f"| SegDiff | {k} | {pct(at_k(segdiff, 'miou', k))} | {pct(at_k(segdiff, 'pixel_accuracy', k))} | "
              f"{at_k(segdiff, 'ece', k):.4f} | {at_k(segdiff, 'brier', k):.4f} |" for k in K_SHOWN if k <= k_total]
    k_rows.append(f"| U-Net | 1 | {pct(unet['metrics']['miou'])} | {pct(unet['metrics']['pixel_accuracy'])} | "
                  f"{unet['curve']['ece'][-1]:.4f} | {unet['curve']['brier'][-1]:.4f} |")
    cores = f"the 2 cores of {info['machine'].split(';')[0]}"
    how = f"one after the other, each alone on {cores}" if info.get("alone") else f"side by side on one thread each ({cores})"
    section = [
        BEGIN,
        "## CamVid (11 classes)",
        "",
        (f"SegDiff (`camvid-cpu` preset) against the U-Net baseline on CamVid's SegNet split: trained on the 367 "
         f"train images for {info['minutes']:g} minutes of wall time each, {how}, the same data pipeline and "
         "64 px input; validated on "
         "64 of the 101 val images; scored on the 233 test images at 480x360 (class probabilities resized "
         "bilinearly, then the argmax; void ignored), mIoU from one confusion matrix over the split. "
         f"SegDiff: {segdiff['sampler']} with {segdiff['num_steps']} steps, K = {k_total}. "
         "Written by `python experiments/camvid_cpu.py report` from the runs' files; how the runs were made, "
         "and what ran beside them: experiments/README.md."),
        "",
        f"| class (test IoU) | SegDiff, K={k_total} | U-Net | " + " | ".join(CAMVID_PUBLISHED_IOU) + " |",
        "|---|---:|---:|" + "---:|" * len(CAMVID_PUBLISHED_IOU),
        *class_rows,
        "",
        (f"Published rows: {CAMVID_PUBLISHED_SOURCE}; the SegNet and DeepLab-LFOV rows are that table's "
         "comparison entries. Those are large networks trained for hours on a GPU at 640x480: they show where "
         "the benchmark stands, not a like-for-like comparison."),
        "",
        (f"Training steps in the {info['minutes']:g} minutes: SegDiff {steps_done['segdiff']}, U-Net "
         f"{steps_done['unet']}. Test seconds per image (2 threads): SegDiff {segdiff['seconds_per_image']:.2f} "
         f"at K = {k_total}, U-Net {unet['seconds_per_image']:.2f}."),
        "",
        "By the number of generations averaged (the same generations, the first k of them); ECE is the top-label "
        "ECE pooled over labelled pixels, Brier the mean over images:",
        "",
        "| model | K | test mIoU | pixel accuracy | top-label ECE | Brier |",
        "|---|---:|---:|---:|---:|---:|",
        *k_rows,
        "",
        "![CamVid validation mIoU over training time](figures/camvid/val-miou.png)",
        "",
        *encoding_lines(Path(args.runs) / args.encoding),
        *size_lines(Path(args.runs)),
        "Commands (DATA holds `camvid/`):",
        "",
        "```",
        "python experiments/camvid_cpu.py sizes --data DATA",
        f"python experiments/camvid_cpu.py run --data DATA --name {args.name} --minutes {info['minutes']:g}"
        + (" --alone" if info.get("alone") else ""),
        "python experiments/camvid_cpu.py report" + ("" if args.name == "main" else f" --name {args.name}"),
        "segdiff reproduce --preset camvid --data DATA            # full size (256 px, the paper's network), for a GPU",
        "```",
        END,
    ]
    write_section(page, BEGIN, END, section)
    print(f"wrote {page} and {figures}/")
    return 0


def encoding_lines(runs: Path) -> list[str]:
    """One-hot against analog bits at a shorter budget (the runs of `run --models onehot bits`)."""
    name = runs.name
    if not (runs / "run.json").exists():
        return []
    info = json.loads((runs / "run.json").read_text())
    rows = []
    for model in info["models"]:
        summary = json.loads((runs / model / "test" / "summary.json").read_text())
        steps, vals = read_log(runs / model)
        rows.append(f"| {MODELS[model][0]} | {steps[-1]['step']} | {pct(vals[-1]['val_iou'])} | "
                    f"{pct(summary['metrics']['miou'])} | {summary['curve']['ece'][-1]:.4f} | "
                    f"{summary['seconds_per_image']:.2f} |")
    k = summary["num_generations"]
    return [
        (f"One-hot mask against analog bits, {info['minutes']:g} minutes each, side by side on one thread each "
         f"(`python experiments/camvid_cpu.py run --name {name} --minutes {info['minutes']:g} --models "
         f"{' '.join(info['models'])} --test-generations {k}`); test at K = {k}:"),
        "",
        "| mask encoding | steps | val mIoU at the end | test mIoU | top-label ECE | test s/image |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(RUNS), help="where the runs go (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sizes")
    p.add_argument("--data", default=os.environ.get("SEGDIFF_DATA", ""))
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p = sub.add_parser("run")
    add_run_arguments(p, list(MODELS), "runs/camvid-cpu", default=["segdiff", "unet"])
    p.add_argument("--test-generations", type=int, default=30)
    p = sub.add_parser("report")
    p.add_argument("--name", default="main", help="the SegDiff-against-U-Net runs")
    p.add_argument("--encoding", default="encoding", help="the one-hot-against-bits runs (skipped if absent)")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args()
    return {"sizes": sizes, "run": run, "report": report}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
