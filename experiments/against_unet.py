"""Rerun docs/results.md, "MoNuSeg" and "Vaihingen: where diffusion earns its cost": a benchmark's
CPU preset against the U-Net, an hour each on 2 CPU cores, and what the diffusion model adds.

    python experiments/against_unet.py ceiling --data DATA               # MoNuSeg: choose the scale
    python experiments/against_unet.py run --data DATA --name main --minutes 60
    python experiments/against_unet.py analyse --data DATA --name main   # one pass over the test split
    python experiments/against_unet.py steps --data DATA --name main     # fewer sampling steps
    python experiments/against_unet.py report --name main                # the section of docs/results.md

`--dataset` (before the command) picks the benchmark: `monuseg` (the default; preset `monuseg-cpu`)
or `vaihingen` (preset `vaihingen-cpu`); the runs go to runs/PRESET unless `--runs` says otherwise.

`ceiling` (MoNuSeg) measures what the working scale caps: the 30 training masks resized from
1000 px to a side s and brought back to 512 the way the protocol brings a prediction back
(bilinear, then the 0.5 threshold), scored at 512 against the masks resized to 512: the F1 and IoU
a perfect model at scale s would get. A 64 px training crop costs the same at every scale; the
test costs (s / 64)^2 tiles per image.

`run` trains SegDiff (`segdiff train --preset PRESET`) and the U-Net (`segdiff baseline --preset
PRESET`) side by side, one thread each, for the same wall time, the learning rate of both decaying
to 0 when the time ends; with `--alone`, one after the other, each alone on 2 threads (one model
a call if need be, `--models`: run.json keeps the models of earlier calls of the same run). The log
of each stage is RUNS/NAME/logs/STAGE.log, marked done with STAGE.done, so an interrupted run
continues.

`analyse` loads both runs' best checkpoints and makes one pass over the test split, alone on 2
threads, with the test protocol `segdiff evaluate` uses (`protocol.Protocol`; MoNuSeg: the image at
256 covered by 16 tiles of 64, each generation seeded by (seed, image, tile, k), the probabilities
resized to 512 and scored there; Vaihingen: the tile resized to 64, the probabilities resized to
the paper's 256 and scored there), so its SegDiff and U-Net rows are what `segdiff evaluate RUN
--dataset D --generations K` prints. From the same K generations it scores, per image:
- SegDiff with the first k generations, k in 1, 3, 9, K (F1, IoU at 0.5, ECE);
- the U-Net alone (one pass), and with its 8 dihedral copies (test-time augmentation);
- the ensemble (1 - w) * SegDiff + w * U-Net for several w: what `--ensemble RUN
  --ensemble-weight w` computes (`models.Ensemble`);
- uncertainty scores: SegDiff's mean entropy and boundary disagreement
  (`metrics.mean_entropy`, `metrics.boundary_disagreement`, what `segdiff predict` writes to
  uncertainty.csv), the U-Net's mean entropy and its TTA variance on the predicted object and
  its border (boundary_disagreement of the 8 copies' variance), each scored as a failure
  detector against per-image IoU (`metrics.spearman`, `metrics.failure_auroc` for the worst
  20 %, `metrics.risk_coverage_area`);
- seconds per image of SegDiff at K and of the U-Net's one pass, timed in turn on the same images.
It writes RUNS/NAME/analysis/per_image.csv and analysis.json.

`report` writes the benchmark's section from one run (`--name`); a paragraph sums up the pair's
other run (`--compare`, default `main`: trained the other way, side by side or alone) and the rows
of the passes made on that run only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # segdiff, when run from a checkout without install
sys.path.insert(0, str(ROOT / "experiments"))  # _common, also when a test loads this file

from _common import add_run_arguments, begin_run, machine, read_log, run_stages, training_threads  # noqa: E402

SCALES = (128, 256, 512)
K_SHOWN = (1, 3, 9, 30)
ENSEMBLE_WEIGHTS = (0.25, 0.5, 0.75)
# Ensembles whose U-Net weight varies per pixel with the two models' uncertainty (`weighted_ensembles`).
# key -> (the rule's name, the rest of its description in the report)
WEIGHTED_ENSEMBLES = {"ensemble_entropy": ("entropy-weighted", ": U-Net share H(SegDiff) / (H(SegDiff) + H(U-Net))"),
                      "ensemble_variance": ("variance-weighted", ", with the U-Net's 8 dihedral copies: U-Net share "
                                                                 "var(SegDiff) / (var(SegDiff) + var(U-Net copies))")}


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's CPU preset, how its test is scored, and its section of docs/results.md."""

    dataset: str
    preset: str
    unet_args: str  # beyond `baseline --preset PRESET`: the U-Net's lr must decay with the time budget
    score_size: int | None  # whole-image protocols: the side scored at (the paper's)
    title: str
    validation: str  # what the validation IoU of the figure is measured on
    key: str  # the markers' name

    @property
    def models(self) -> dict[str, str]:
        """The training command of each model, after `segdiff`."""
        return {"segdiff": f"train --preset {self.preset}", "unet": f"baseline --preset {self.preset}{self.unet_args}"}

    @property
    def markers(self) -> tuple[str, str]:
        return f"<!-- {self.key}: written by experiments/against_unet.py report -->", f"<!-- /{self.key} -->"


BENCHMARKS = {
    "monuseg": Benchmark("monuseg", "monuseg-cpu", "", None, "MoNuSeg nuclei on 2 CPU cores", "3 images at 512",
                         "MONUSEG"),
    # The vaihingen-cpu preset stops at 7000 steps, which the U-Net reaches before the hour.
    "vaihingen": Benchmark("vaihingen", "vaihingen-cpu", " --steps 100000", 256,
                           "Vaihingen: where diffusion earns its cost", "10 tiles at 64 px", "VAIHINGEN_COST"),
}


# --- ceiling ------------------------------------------------------------------------------------
def ceiling(args: argparse.Namespace) -> int:
    if args.benchmark.dataset != "monuseg":
        raise SystemExit(f"ceiling measures MoNuSeg's scales; --dataset is {args.benchmark.dataset}")
    import torch.nn.functional as F
    from segdiff import metrics
    from segdiff.data import build_dataset
    from segdiff.data.monuseg import SCORE_SIDE
    from segdiff.data.reading import mask_to_tensor, read_mask, resize_mask

    folder = build_dataset("monuseg", args.data, "train", 64).directory / "masks"  # all 30, whatever the split
    masks = [mask_to_tensor(read_mask(p)) for p in sorted(folder.glob("*.png"))]
    rows = {}
    for side in args.scales:
        f1s, ious = [], []
        for mask in masks:
            target = resize_mask(mask, SCORE_SIDE)[0] > 0.5
            back = F.interpolate(resize_mask(mask, side)[None], size=(SCORE_SIDE, SCORE_SIDE), mode="bilinear",
                                 align_corners=False)
            pred = back[0, 0] >= 0.5
            f1s.append(float(metrics.f1(pred, target)[0]))
            ious.append(float(metrics.iou(pred, target)[0]))
        rows[side] = {"f1": statistics.mean(f1s), "iou": statistics.mean(ious), "tiles": (side // 64) ** 2}
        print(f"scale {side}: a perfect model scores F1 {100 * rows[side]['f1']:.1f}, IoU {100 * rows[side]['iou']:.1f} "
              f"at {SCORE_SIDE} ({len(masks)} training masks); {rows[side]['tiles']} tiles of 64 per test image")
    out = Path(args.runs) / "ceiling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"masks": len(masks), "rows": rows}, indent=2) + "\n")
    return 0


# --- run ----------------------------------------------------------------------------------------
def commands(args: argparse.Namespace) -> dict[str, str]:
    """The training command of each model named: the same wall-time budget, one thread each side by
    side (with `--alone`, 2 threads each)."""
    data = shlex.quote(args.data)
    threads = training_threads(len(args.models), args.alone)
    return {model: f"OMP_NUM_THREADS={threads} segdiff {args.benchmark.models[model]} --data {data} "
                   f"--time-budget {args.minutes:g} --out {shlex.quote(str(Path(args.runs) / args.name / model))}"
            for model in args.models}


def run(args: argparse.Namespace) -> int:
    """The models train side by side, each in a process of its own (with `--alone`, one after
    another, each alone on the machine)."""
    logs = begin_run(Path(args.runs) / args.name, args.minutes, args.models, args.alone)
    return run_stages(logs, {f"train-{model}": line for model, line in commands(args).items()}, args.alone)


# --- analyse ------------------------------------------------------------------------------------
def dihedral_probabilities(net, image, protocol):
    """The U-Net's probability of each of the 8 dihedral copies of the image as the protocol feeds it
    (each tile, or the whole image resized to the input), mapped back (and stitched): (8, 1, s, s)."""
    import torch
    from segdiff.data import resize_image
    from segdiff.sampling import apply_symmetry, invert_symmetry
    from segdiff.sliding import stitch_tiles, tiles

    if protocol.feed == "tiles":
        parts = tiles(image[None], image.shape[-1] // protocol.image_size)[0]  # (n*n, 3, tile, tile)
    else:
        parts = resize_image(image, protocol.image_size)[None]  # (1, 3, S, S)
    with torch.no_grad():
        copies = [invert_symmetry(torch.sigmoid(net(apply_symmetry(parts, g))), g) for g in range(8)]
    return torch.stack([stitch_tiles(c) if protocol.feed == "tiles" else c[0] for c in copies])


def _share(own, partner):
    """The partner's per-pixel share own / (own + partner) of two non-negative uncertainty maps; 1/2
    where both are 0 (both certain: neither is preferred)."""
    import torch
    total = own + partner
    return torch.where(total > 0, own / total.clamp(min=1e-12), torch.full_like(total, 0.5))


def weighted_ensembles(segdiff_mean, segdiff_var, unet_prob, tta_mean, tta_var) -> dict:
    """The per-pixel uncertainty-weighted ensembles of WEIGHTED_ENSEMBLES, each a probability map:
    - entropy: each pixel's U-Net weight is SegDiff's binary entropy over the sum of both models'
      (the U-Net's one pass), so the more certain model counts more where they differ;
    - variance: inverse-variance weighting of SegDiff's K generations (their variance) against the
      U-Net's 8 dihedral copies (their variance, their mean as the U-Net's probability).
    All arguments are (1, h, w) maps in [0, 1] (variances in [0, 0.25])."""
    from segdiff.encoding import entropy
    import torch

    def binary_entropy(p):  # (1, h, w) -> (1, h, w)
        return entropy(torch.cat([1 - p, p]), dim=0)

    w = _share(binary_entropy(segdiff_mean), binary_entropy(unet_prob))
    v = _share(segdiff_var, tta_var)
    return {"ensemble_entropy": (1 - w) * segdiff_mean + w * unet_prob,
            "ensemble_variance": (1 - v) * segdiff_mean + v * tta_mean}


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of the per-image differences a - b and its standard error (sd / sqrt(n))."""
    d = [x - y for x, y in zip(a, b)]
    return {"mean": statistics.mean(d), "se": statistics.stdev(d) / math.sqrt(len(d)), "n": len(d),
            "wins": sum(x > 0 for x in d)}


def test_setup(args: argparse.Namespace):
    """The run's SegDiff (best checkpoint), the benchmark's protocol and the test split, on args.threads threads."""
    import torch
    from segdiff.data import make_dataset
    from segdiff.models import load_model
    from segdiff.protocol import protocol_for

    torch.set_num_threads(args.threads)
    segdiff = load_model(Path(args.runs) / args.name / "segdiff")
    cfg = replace(segdiff.config, data=replace(segdiff.config.data, root=args.data))
    bench = args.benchmark
    protocol = (protocol_for("monuseg", cfg.model.image_size, resize=cfg.data.resize) if bench.dataset == "monuseg"
                else protocol_for(bench.dataset, cfg.model.image_size, score_size=bench.score_size))
    return segdiff, protocol, make_dataset(cfg, "test", image_size=protocol.dataset_size)


def analyse(args: argparse.Namespace) -> int:
    from segdiff import metrics
    from segdiff.models import load_model
    from segdiff.protocol import resize_probabilities
    from segdiff.seeding import derive_seed

    base = Path(args.runs) / args.name
    segdiff, protocol, dataset = test_setup(args)
    unet = load_model(base / "unet")
    sample = replace(segdiff.config.sample, num_generations=args.generations)
    ks = [k for k in K_SHOWN if k <= args.generations]
    rows, seconds = [], {"segdiff": [], "unet": []}
    print(f"analyse: {len(dataset)} test images, SegDiff {sample.describe()}, {args.threads} threads")
    for i, name in enumerate(dataset.names[:args.max_images or None]):
        image, mask = dataset[i]
        target = protocol.target(dataset, i, mask)[0] > 0.5  # MoNuSeg (512, 512), Vaihingen (256, 256)
        size = tuple(target.shape)
        seed = derive_seed(args.seed, name)
        start = time.perf_counter()
        means, std = protocol.predict_item(segdiff, image, sample, seed, size)  # (K, 1, h, w), (1, h, w)
        seconds["segdiff"].append(time.perf_counter() - start)
        start = time.perf_counter()
        unet_prob = protocol.predict_item(unet, image, unet.config.sample, seed, size)[0][-1]  # (1, h, w)
        seconds["unet"].append(time.perf_counter() - start)
        copies = resize_probabilities(dihedral_probabilities(unet.net, image, protocol), size)
        tta_prob, tta_var = copies.mean(0), copies.var(0, unbiased=False)
        row = {"name": name}

        def score(key: str, prob) -> None:
            row[f"{key}_f1"] = float(metrics.f1(prob[0] > 0.5, target)[0])
            row[f"{key}_iou"] = float(metrics.iou(prob[0] > 0.5, target)[0])
            row[f"{key}_ece"] = float(metrics.expected_calibration_error(prob[0], target.float())[0])

        for k in ks:
            score(f"segdiff_k{k}", means[k - 1])
        score("unet", unet_prob)
        score("unet_tta", tta_prob)
        for w in ENSEMBLE_WEIGHTS:
            score(f"ensemble_w{w:g}", (1 - w) * means[-1] + w * unet_prob)
        for key, prob in weighted_ensembles(means[-1], std.square(), unet_prob, tta_prob, tta_var).items():
            score(key, prob)
        row["segdiff_entropy"] = float(metrics.mean_entropy(means[-1][None])[0])
        row["segdiff_disagreement"] = float(metrics.boundary_disagreement(means[-1][None], std.square()[None])[0])
        row["unet_entropy"] = float(metrics.mean_entropy(unet_prob[None])[0])
        row["unet_tta_variance"] = float(metrics.boundary_disagreement(tta_prob[None], tta_var[None])[0])
        row["segdiff_seconds"], row["unet_seconds"] = seconds["segdiff"][-1], seconds["unet"][-1]
        rows.append(row)
        print(f"[{i + 1}/{len(dataset)}] {name}: SegDiff IoU {100 * row[f'segdiff_k{ks[-1]}_iou']:.2f} "
              f"({row['segdiff_seconds']:.1f} s), U-Net {100 * row['unet_iou']:.2f} ({row['unet_seconds']:.2f} s), "
              f"ensemble 0.5 {100 * row['ensemble_w0.5_iou']:.2f}", flush=True)
    summary = summarise(rows, ks, args.generations)
    summary.update({"machine": machine(), "threads": args.threads, "seed": args.seed,
                    "sample": sample.describe(), "sampler": sample.sampler, "sampling_steps": sample.num_sampling_steps,
                    "protocol": protocol.description})
    out = base / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    from segdiff.io import atomic_write
    atomic_write(out / "per_image.csv", lambda p: p.write_text(buffer.getvalue()))
    atomic_write(out / "analysis.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    print(json.dumps({k: summary[k] for k in ("models", "paired", "failure", "seconds_per_image")}, indent=2))
    return 0


def merge_steps(earlier: dict, result: dict) -> dict:
    """A steps pass's result, with the rows of an earlier pass of the same setting (K, images, seed)
    kept beside its own (its own win where both have a step count); else the result alone. Files
    written before the seed was recorded were made with the default seed, 0."""
    earlier = {"seed": 0, **earlier}
    if any(earlier.get(key) != result[key] for key in ("generations", "images", "seed")):
        return result
    rows = {**earlier["rows"], **result["rows"]}
    return {**result, "rows": {n: rows[n] for n in sorted(rows, key=int)}}


def steps(args: argparse.Namespace) -> int:
    """SegDiff's test scores at few sampling steps: for each step count, the same K generations'
    seeds as `analyse`, sampled with `--sampler` in that many steps; F1, IoU and ECE of the mean.
    With `--refine T0`, SegDiff refines the U-Net's mask from step T0 (`models.Refinement`)."""
    from segdiff import metrics
    from segdiff.models import load_model
    from segdiff.seeding import derive_seed

    base = Path(args.runs) / args.name
    segdiff, protocol, dataset = test_setup(args)
    names = dataset.names[:args.max_images or None]
    unet = load_model(base / "unet")
    model = segdiff
    if args.refine is not None:
        from segdiff.models import Refinement
        model = Refinement(segdiff, unet, start_step=args.refine)
    scores = {n: {"f1": [], "iou": [], "ece": []} for n in args.steps}
    seconds = {n: [] for n in args.steps}
    unet_seconds = []  # the U-Net's one pass on the same images, timed in the same run: the cost's reference
    for i, name in enumerate(names):
        image, mask = dataset[i]
        target = protocol.target(dataset, i, mask)[0] > 0.5
        start = time.perf_counter()
        protocol.predict_item(unet, image, unet.config.sample, derive_seed(args.seed, name), tuple(target.shape))
        unet_seconds.append(time.perf_counter() - start)
        for n in args.steps:
            sample = replace(segdiff.config.sample, num_generations=args.generations, sampler=args.sampler,
                             num_sampling_steps=n)
            start = time.perf_counter()
            prob = protocol.predict_item(model, image, sample, derive_seed(args.seed, name), tuple(target.shape))[0][-1]
            seconds[n].append(time.perf_counter() - start)
            scores[n]["f1"].append(float(metrics.f1(prob[0] > 0.5, target)[0]))
            scores[n]["iou"].append(float(metrics.iou(prob[0] > 0.5, target)[0]))
            scores[n]["ece"].append(float(metrics.expected_calibration_error(prob[0], target.float())[0]))
        print(f"[{i + 1}/{len(names)}] {name}: " + ", ".join(
            f"{n} steps IoU {100 * scores[n]['iou'][-1]:.2f}" for n in args.steps), flush=True)
    result = {"sampler": args.sampler, "refine": args.refine, "generations": args.generations, "images": len(names),
              "seed": args.seed, "threads": args.threads, "machine": machine(),
              "rows": {str(n): {**{m: statistics.mean(v) for m, v in scores[n].items()},
                                "iou_per_image": scores[n]["iou"], "seconds": statistics.median(seconds[n]),
                                "unet_seconds": statistics.median(unet_seconds)}
                       for n in args.steps}}
    out = base / "analysis" / (f"steps-{args.sampler}.json" if args.refine is None else
                               f"refine-{args.refine}-{args.sampler}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        result = merge_steps(json.loads(out.read_text()), result)
    from segdiff.io import atomic_write
    atomic_write(out, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    for n in args.steps:
        row = result["rows"][str(n)]
        print(f"{args.sampler}, {n} steps, K = {args.generations}: F1 {100 * row['f1']:.2f}, IoU {100 * row['iou']:.2f}, "
              f"ECE {row['ece']:.4f}, {row['seconds']:.1f} s/image")
    return 0


FAILURE_SCORES = {"segdiff_entropy": ("segdiff", "SegDiff mean entropy"),
                  "segdiff_disagreement": ("segdiff", "SegDiff boundary disagreement"),
                  "unet_entropy": ("unet", "U-Net mean entropy"),
                  "unet_tta_variance": ("unet", "U-Net dihedral-TTA variance (boundary)")}


def summarise(rows: list[dict], ks: list[int], generations: int) -> dict:
    from segdiff import metrics
    column = lambda key: [r[key] for r in rows]  # noqa: E731
    weighted = [key for key in WEIGHTED_ENSEMBLES if f"{key}_iou" in rows[0]]  # absent from older analyses
    keys = [f"segdiff_k{k}" for k in ks] + ["unet", "unet_tta"] + [f"ensemble_w{w:g}" for w in ENSEMBLE_WEIGHTS]
    keys += weighted
    models = {key: {m: statistics.mean(column(f"{key}_{m}")) for m in ("f1", "iou", "ece")} for key in keys}
    full = f"segdiff_k{ks[-1]}"
    better = max((full, "unet"), key=lambda key: models[key]["iou"])
    pairs = {f"{full} - unet": paired(column(f"{full}_iou"), column("unet_iou"))}
    for w in ENSEMBLE_WEIGHTS:
        pairs[f"ensemble_w{w:g} - {better}"] = paired(column(f"ensemble_w{w:g}_iou"), column(f"{better}_iou"))
    for key in weighted:  # the variance rule uses the U-Net's TTA: also against it
        pairs[f"{key} - {better}"] = paired(column(f"{key}_iou"), column(f"{better}_iou"))
        pairs[f"{key} - unet_tta"] = paired(column(f"{key}_iou"), column("unet_tta_iou"))
    failure = {}
    for score, (model, _) in FAILURE_SCORES.items():
        quality = column(f"{full}_iou" if model == "segdiff" else "unet_iou")
        failure[score] = {"spearman": metrics.spearman(column(score), quality),
                          "auroc_worst20": metrics.failure_auroc(column(score), quality, 0.2),
                          "aurc": metrics.risk_coverage_area(column(score), quality),
                          "aurc_oracle": metrics.risk_coverage_area([-q for q in quality], quality)}
    seconds = {m: statistics.median(column(f"{m}_seconds")) for m in ("segdiff", "unet")}
    return {"images": len(rows), "generations": generations, "models": models, "better_single": better,
            "iou_per_image": column(f"{full}_iou"), "unet_iou_per_image": column("unet_iou"),
            "paired": pairs, "failure": failure, "seconds_per_image": seconds,
            "cost_ratio": seconds["segdiff"] / seconds["unet"]}


# --- report -------------------------------------------------------------------------------------
def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def pass_rows(files: list[Path], reference: list[float]):
    """(the file's JSON, steps, its row, the row's paired IoU difference to `reference`) of each row of
    each `steps` result file."""
    for path in files:
        found = json.loads(path.read_text())
        for n, row in found["rows"].items():
            yield found, n, row, paired(row["iou_per_image"], reference)


def analysis_sampling(summary: dict) -> tuple[str, int]:
    """The analysis pass's sampler and steps (older analysis.json files hold them only in the
    `sample` line)."""
    if "sampler" in summary:
        return summary["sampler"], int(summary["sampling_steps"])
    found = re.search(r"sampler (\S+) \((\d+) steps\)", summary["sample"])
    return found.group(1), int(found.group(2))


def preset_sampling(preset: str):
    """The preset's SampleConfig (its default sampler and steps)."""
    from segdiff.config import PRESETS
    return PRESETS[preset]().sample


def intro(bench: Benchmark, args: argparse.Namespace, summary: dict, steps: dict, meta: dict) -> list[str]:
    """The section's opening: the data, the scale, the runs (as run.json describes them) and their commands."""
    script = f"python experiments/against_unet.py{'' if bench.dataset == 'monuseg' else ' --dataset ' + bench.dataset}"
    minutes, alone = meta.get("minutes", 60), meta.get("alone", False)
    how = "one after the other, each alone on 2 threads" if alone else "side by side, one thread each"
    trained = (f"Both models trained for {minutes:g} minutes {how}, the learning rate of each decaying to 0 when the "
               f"time ends (`{script} run --data DATA --name {args.name} --minutes {minutes:g}{' --alone' if alone else ''}`): "
               f"SegDiff made {steps['segdiff']} steps, the U-Net {steps['unet']}. Test, one pass "
               f"(`{script} analyse --data DATA --name {args.name}`; SegDiff {summary['sample']}):")
    if bench.dataset == "vaihingen":
        return [f"The page's first section finds SegDiff and the U-Net within about a point of each other on "
                f"Vaihingen. What does the diffusion model add: an ensemble with the U-Net, uncertainty that flags "
                f"failures, fewer sampling steps? The 100 training tiles (90 train, 10 validate), the "
                f"{summary['images']} test tiles scored at the paper's 256 px. "
                + ("" if alone else "These runs are not the first section's (each alone on 2 threads): both trained "
                   "at once, one thread each, so each made fewer steps. ")
                + f"Machine: {summary['machine']}.", "", trained]
    ceiling_rows = json.loads((Path(args.runs) / "ceiling.json").read_text())["rows"]
    return [f"MoNuSeg's 30 training images (27 train, 3 validate) on 2 CPU cores; the 14 test images scored with "
            f"the paper's protocol at 512 x 512 (F1 and IoU per image, then averaged). Machine: {summary['machine']}.",
            "",
            "Scale: the `monuseg-cpu` preset trains on 64 px crops of the images resized to 256 (the paper: 256 px "
            "crops at 512) and tests each image as 16 tiles of 64. A perfect model at each scale would score "
            f"(`{script} ceiling --data DATA`):",
            "",
            "| scale | F1 ceiling | IoU ceiling | 64 px tiles per test image |",
            "|---:|---:|---:|---:|",
            *[f"| {side} | {pct(r['f1'])} | {pct(r['iou'])} | {r['tiles']} |" for side, r in ceiling_rows.items()],
            "", trained]


def one_command(bench: Benchmark) -> str:
    """How a user reruns the preset, the U-Net and the ensemble with segdiff alone."""
    run, unet = f"runs/{bench.dataset}", f"runs/{bench.dataset}-unet"
    scored = "" if bench.score_size is None else f" --score-size {bench.score_size}"
    return (f"One command trains the preset alone on the machine for its hour and scores it on the test split: "
            f"`segdiff reproduce --preset {bench.preset} --data DATA --out {run}`; the U-Net: `segdiff baseline "
            f"--preset {bench.preset}{bench.unet_args} --data DATA --out {unet}`, then `segdiff evaluate "
            f"{unet} --dataset {bench.dataset} --data DATA{scored} --out {unet}/test`; the ensemble: `segdiff evaluate "
            f"{run} --dataset {bench.dataset} --data DATA{scored} --ensemble {unet} --ensemble-weight W --out DIR`. "
            "How the runs were made: experiments/README.md.")


def compare_lines(bench: Benchmark, args: argparse.Namespace, script: str, base: Path) -> list[str]:
    """The other run of the same pair (`--compare NAME`, trained the other way: side by side or alone),
    in a paragraph: its steps and test scores, and the rows of its passes this run has not made."""
    other = Path(args.runs) / args.compare
    if args.compare == args.name or not (other / "analysis" / "analysis.json").exists():
        return []
    summary = json.loads((other / "analysis" / "analysis.json").read_text())
    meta = json.loads((other / "run.json").read_text()) if (other / "run.json").exists() else {}
    minutes, alone = meta.get("minutes", 60), meta.get("alone", False)
    steps = {m: read_log(other / m)[0][-1]["step"] for m in bench.models}
    k, models, better = summary["generations"], summary["models"], summary["better_single"]
    diff = summary["paired"][f"segdiff_k{k} - unet"]
    text = (f"The same pair trained {minutes:g} minutes "
            + ("one after the other, each alone on 2 threads" if alone else "side by side, one thread each")
            + f" (`{script} run --data DATA --name {args.compare} --minutes {minutes:g}{' --alone' if alone else ''}`): "
            f"SegDiff made {steps['segdiff']} steps, the U-Net {steps['unet']}; test IoU {pct(models[f'segdiff_k{k}']['iou'])} "
            f"(K = {k}) against {pct(models['unet']['iou'])}, SegDiff minus the U-Net {100 * diff['mean']:+.2f} ± "
            f"{100 * diff['se']:.2f}; the ensemble at w = 0.5 {pct(models['ensemble_w0.5']['iou'])}.")
    made = set()  # (sampler, T0 or None, steps) of this run's passes
    for path in (base / "analysis").glob("*-*.json"):
        found = json.loads(path.read_text())
        made |= {(found["sampler"], found.get("refine"), n) for n in found["rows"]}
    passes, ref_steps = [], analysis_sampling(summary)[1]
    for found, n, row, d in pass_rows(sorted((other / "analysis").glob("steps-*.json")), summary["iou_per_image"]):
        if (found["sampler"], None, n) not in made:
            passes.append(f"{found['sampler']} at {n} steps, IoU {pct(row['iou'])} ({100 * d['mean']:+.2f} ± "
                          f"{100 * d['se']:.2f} against its {ref_steps} steps)")
    reference = summary["iou_per_image"] if better.startswith("segdiff") else summary["unet_iou_per_image"]
    for found, n, row, d in pass_rows(sorted((other / "analysis").glob("refine-*.json")), reference):
        if (found["sampler"], found["refine"], n) not in made:
            passes.append(f"refinement from T0 = {found['refine']} with {n} steps of {found['sampler']}, IoU "
                          f"{pct(row['iou'])} ({100 * d['mean']:+.2f} ± {100 * d['se']:.2f} against its better "
                          "single model)")
    if passes:
        text += " Passes made on that run only: " + "; ".join(passes) + "."
    return [text, ""]


def report(args: argparse.Namespace) -> int:
    from segdiff.io import write_section
    from segdiff.plots import plot_training_curves
    from segdiff.protocol import PAPER_MONUSEG_BASELINES, PAPER_RESULTS

    bench = args.benchmark
    script = f"python experiments/against_unet.py{'' if bench.dataset == 'monuseg' else ' --dataset ' + bench.dataset}"
    base = Path(args.runs) / args.name
    summary = json.loads((base / "analysis" / "analysis.json").read_text())
    meta = json.loads((base / "run.json").read_text()) if (base / "run.json").exists() else {}
    models, k = summary["models"], summary["generations"]
    logs = {m: read_log(base / m) for m in bench.models}  # (training records, validation records)
    steps = {m: train[-1]["step"] for m, (train, _) in logs.items()}
    vals = {m: val for m, (_, val) in logs.items()}
    figure_name = f"figures/{bench.dataset}/val-iou.png"
    figure = Path(args.out).parent / figure_name
    figure.parent.mkdir(parents=True, exist_ok=True)
    plot_training_curves(figure, {name: ([v["time"] / 60 for v in vals[m]], [v["val_iou"] for v in vals[m]])
                                  for m, name in (("segdiff", f"SegDiff {bench.preset}"), ("unet", "U-Net baseline"))},
                         title=f"{bench.dataset} validation IoU ({bench.validation})")
    paper = PAPER_RESULTS[bench.dataset]
    baselines = PAPER_MONUSEG_BASELINES if bench.dataset == "monuseg" else {}
    label = {key: f"SegDiff `{bench.preset}`, K = {key[len('segdiff_k'):]}" for key in models if key.startswith("segdiff_k")}
    label.update({"unet": "U-Net baseline", "unet_tta": "U-Net, 8 dihedral copies averaged"})
    for w in ENSEMBLE_WEIGHTS:
        label[f"ensemble_w{w:g}"] = f"ensemble, U-Net weight {w:g}"
    begin, end = bench.markers
    lines = [
        begin,
        f"## {bench.title}",
        "",
        *intro(bench, args, summary, steps, meta),
        "",
        "| model | F1 | IoU | ECE |",
        "|---|---:|---:|---:|",
        *[f"| {label[key]} | {pct(v['f1'])} | {pct(v['iou'])} | {v['ece']:.4f} |" for key, v in models.items()
          if not key.startswith("ensemble")],
        f"| paper, SegDiff (256 px, GPU) | {paper['f1']:.2f} | {paper['iou']:.2f} | |",
        *[f"| paper, {name} | {v['f1']:.2f} | {v['iou']:.2f} | |" for name, v in baselines.items()],
        "",
    ]
    diff = summary["paired"][f"segdiff_k{k} - unet"]
    lines += [f"Paired over the {diff['n']} test images, SegDiff (K = {k}) minus the U-Net: "
              f"{100 * diff['mean']:+.2f} ± {100 * diff['se']:.2f} IoU points (mean ± standard error; SegDiff "
              f"better on {diff['wins']} of {diff['n']}). Validation IoU at the end: SegDiff "
              f"{pct(vals['segdiff'][-1]['val_iou'] if vals['segdiff'] else None)}, U-Net "
              f"{pct(vals['unet'][-1]['val_iou'] if vals['unet'] else None)} ({bench.validation}; "
              f"![validation IoU over training time]({figure_name})).", ""]
    lines += compare_lines(bench, args, script, base)
    better = summary["better_single"]
    lines += ["**Ensemble** (`--ensemble RUN --ensemble-weight w`: (1 - w) x SegDiff's mean + w x the U-Net's "
              "probability), against the better single model (" + label[better] + "):", "",
              "| U-Net weight w | F1 | IoU | IoU minus the better single model (± s.e.) |", "|---:|---:|---:|---:|"]
    for w in ENSEMBLE_WEIGHTS:
        v, d = models[f"ensemble_w{w:g}"], summary["paired"][f"ensemble_w{w:g} - {better}"]
        lines.append(f"| {w:g} | {pct(v['f1'])} | {pct(v['iou'])} | {100 * d['mean']:+.2f} ± {100 * d['se']:.2f} |")
    weighted = [key for key in WEIGHTED_ENSEMBLES if key in models]
    if weighted:
        lines += ["", "Weighted by uncertainty, pixel by pixel (computed in the analysis pass; not a segdiff option):", "",
                  "| rule | F1 | IoU | ECE | minus the better single model (± s.e.) | minus the U-Net's 8 copies (± s.e.) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for key in weighted:
            v, d, t = models[key], summary["paired"][f"{key} - {better}"], summary["paired"][f"{key} - unet_tta"]
            lines.append(f"| {''.join(WEIGHTED_ENSEMBLES[key])} | {pct(v['f1'])} | {pct(v['iou'])} | {v['ece']:.4f} | "
                         f"{100 * d['mean']:+.2f} ± {100 * d['se']:.2f} | {100 * t['mean']:+.2f} ± {100 * t['se']:.2f} |")
        if "ensemble_entropy" in weighted:
            lines += ["", "With two classes the entropy rule's mask is the plain average's at w = 0.5, pixel for pixel: "
                      "it says foreground where (s - 1/2) / H(s) + (u - 1/2) / H(u) > 0, and (p - 1/2) / H(p) "
                      "increases and is odd about 1/2, so that holds exactly where s + u > 1. Only its probabilities, "
                      f"and so its calibration, differ (ECE {models['ensemble_entropy']['ece']:.4f} against "
                      f"{models['ensemble_w0.5']['ece']:.4f})."]
    worst = math.ceil(0.2 * summary["images"] - 1e-9)
    lines += ["", "**Failure detection**: each per-image score against that model's per-image IoU. Spearman "
              "(negative is right: more uncertain, lower IoU), AUROC for picking out the worst 20 % "
              f"({worst} image{'s' if worst != 1 else ''}), and the area under the risk-coverage "
              "curve (lower is better; the oracle orders images by their true IoU):", "",
              "| score | Spearman | AUROC, worst 20 % | AURC | AURC, oracle |", "|---|---:|---:|---:|---:|"]
    for score, (_, name) in FAILURE_SCORES.items():
        f = summary["failure"][score]
        lines.append(f"| {name} | {f['spearman']:+.2f} | {f['auroc_worst20']:.2f} | {f['aurc']:.4f} | "
                     f"{f['aurc_oracle']:.4f} |")
    step_rows = list(pass_rows(sorted((base / "analysis").glob("steps-*.json")), summary["iou_per_image"]))
    ref_sampler, ref_steps = analysis_sampling(summary)
    if step_rows:
        fewer = all(int(n) < ref_steps for _, n, _, _ in step_rows)
        lines += ["", f"**{'Fewer' if fewer else 'Other'} sampling steps** (K = {k}, the same seeds; "
                  f"`{script} steps --data DATA --name {args.name} --sampler S`), "
                  f"against the {ref_steps}-step row above:", "",
                  f"| sampler | steps | F1 | IoU | IoU minus {ref_steps} steps (± s.e.) | ECE | s/image |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for found, n, row, d in step_rows:
            lines.append(f"| {found['sampler']} | {n} | {pct(row['f1'])} | {pct(row['iou'])} | "
                         f"{100 * d['mean']:+.2f} ± {100 * d['se']:.2f} | {row['ece']:.4f} | {row['seconds']:.1f} |")
    refine_files = sorted((base / "analysis").glob("refine-*.json"))
    if refine_files:
        lines += ["", "**Refinement** (SDEdit, `models.Refinement`): SegDiff starts from the U-Net's mask 2p - 1 "
                  f"noised to step T0 and samples from there (`{script} steps --data DATA "
                  f"--name {args.name} --refine T0 --steps N`), against the better single model ({label[better]}):",
                  "", "| T0 | sampler | steps | F1 | IoU | IoU minus the better single model (± s.e.) | s/image |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        reference = summary["iou_per_image"] if better.startswith("segdiff") else summary["unet_iou_per_image"]
        for found, n, row, d in pass_rows(refine_files, reference):
            lines.append(f"| {found['refine']} | {found['sampler']} | {n} | {pct(row['f1'])} | {pct(row['iou'])} | "
                         f"{100 * d['mean']:+.2f} ± {100 * d['se']:.2f} | {row['seconds']:.1f} |")
    sec = summary["seconds_per_image"]
    lines += ["", f"Cost: {sec['segdiff']:.1f} s per test image for SegDiff at K = {k} against {sec['unet']:.2f} s "
              f"for the U-Net's one pass, timed in turn in the same run on {summary['threads']} threads "
              f"(median over the images): {summary['cost_ratio']:.0f}x."]
    default = preset_sampling(bench.preset)
    chosen = [row for found, n, row, _ in step_rows
              if found["sampler"] == default.sampler and int(n) == default.num_sampling_steps]
    if (ref_sampler, ref_steps) == (default.sampler, default.num_sampling_steps):
        lines[-1] += f" That pass sampled at the preset's default, {ref_steps} steps of {ref_sampler}."
    elif chosen:  # timed beside the U-Net's pass in the steps run (older step files: against the analysis pass's)
        row = chosen[0]
        reference = row.get("unet_seconds", sec["unet"])
        lines[-1] += (f" At the preset's default, {default.num_sampling_steps} steps of {default.sampler} (K = {k}, the "
                      f"steps pass, also on {summary['threads']} threads): {row['seconds']:.1f} s against the U-Net's "
                      f"{reference:.3f} s timed in that pass, {row['seconds'] / reference:.0f}x, for IoU "
                      f"{pct(row['iou'])} against the U-Net's {pct(models['unet']['iou'])}.")
    lines.append("")
    lines += ["**Against the targets of the issue that asked for these runs:**", ""]
    gains = {f"the weight {w:g}": summary["paired"][f"ensemble_w{w:g} - {better}"] for w in ENSEMBLE_WEIGHTS}
    gains.update({f"the {WEIGHTED_ENSEMBLES[key][0]} rule": summary["paired"][f"{key} - {better}"] for key in weighted})
    best = max(gains, key=lambda rule: gains[rule]["mean"])
    lines.append(f"- Ensemble at least 1 IoU point above the better single model: "
                 f"{'met' if gains[best]['mean'] >= 0.01 else 'missed'}; the best, {best}, gives "
                 f"{100 * gains[best]['mean']:+.2f} ± {100 * gains[best]['se']:.2f}.")
    fail = summary["failure"]
    best_sd = min(("segdiff_entropy", "segdiff_disagreement"), key=lambda key: fail[key]["aurc"])
    best_un = min(("unet_entropy", "unet_tta_variance"), key=lambda key: fail[key]["aurc"])
    wins = sum((fail[best_sd]["spearman"] < fail[best_un]["spearman"],
                fail[best_sd]["auroc_worst20"] > fail[best_un]["auroc_worst20"],
                fail[best_sd]["aurc"] - fail[best_sd]["aurc_oracle"] < fail[best_un]["aurc"] - fail[best_un]["aurc_oracle"]))
    lines.append(f"- SegDiff's score flags failures better than the U-Net's: SegDiff's best by AURC "
                 f"({FAILURE_SCORES[best_sd][1]}) beats the U-Net's best ({FAILURE_SCORES[best_un][1]}) on {wins} of "
                 f"the 3 measures (AURC taken above each model's oracle); on {summary['images']} images, "
                 f"{worst} of them failures" + (", these measures move a lot with one image." if worst < 10 else "."))
    per_image = {(ref_sampler, ref_steps): summary["iou_per_image"]}  # (sampler, steps) -> IoU per image
    per_image.update({(found["sampler"], int(n)): row["iou_per_image"]
                      for found, n, row, _ in step_rows})
    ten = per_image.get((ref_sampler, 10))
    few = [] if ten is None else [(sampler, n, paired(ious, ten)["mean"])
                                  for (sampler, n), ious in sorted(per_image.items()) if n <= 3]
    if few:
        close = [item for item in few if item[2] >= -0.01]
        # met: the fewest steps within the point; missed: the smallest shortfall
        sampler, n, gap = max(close, key=lambda item: -item[1]) if close else max(few, key=lambda item: item[2])
        lines.append(f"- Within 1 IoU point of 10 steps at 3 steps or fewer: {'met' if close else 'missed'}; "
                     + (f"the fewest such steps: {sampler}, {n} ({100 * gap:+.2f})." if close else
                        f"the closest: {sampler}, {n} steps ({100 * gap:+.2f})."))
    tiles = "" if bench.dataset != "monuseg" else "; a test image is 16 tiles"
    lines.append(f"- SegDiff at K = {k} at most 20x one U-Net pass: {'met' if summary['cost_ratio'] <= 20 else 'missed'} "
                 f"({summary['cost_ratio']:.0f}x here{tiles}).")
    lines += ["", one_command(bench), "", end]
    write_section(args.out, begin, end, lines)
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(BENCHMARKS), default="monuseg", help="the benchmark (default: monuseg)")
    parser.add_argument("--runs", default=None, help="where the runs go (default: runs/PRESET)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ceiling")
    p.add_argument("--data", default=os.environ.get("SEGDIFF_DATA", ""))
    p.add_argument("--scales", type=int, nargs="+", default=list(SCALES))
    p = sub.add_parser("run")
    add_run_arguments(p, ["segdiff", "unet"], "--runs")
    for command in ("analyse", "steps"):  # passes over the test split
        p = sub.add_parser(command)
        p.add_argument("--data", default=os.environ.get("SEGDIFF_DATA", ""))
        p.add_argument("--name", required=True)
        p.add_argument("--generations", type=int, default=30)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-images", type=int, default=0, help="only the first N test images (a dry run)")
    p.add_argument("--sampler", default="sde-dpm-solver++")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 5])
    p.add_argument("--refine", type=int, default=None, metavar="T0", help="SegDiff refines the U-Net's mask, "
                   "noised to step T0 (SDEdit); the steps then run from T0 down")
    p = sub.add_parser("report")
    p.add_argument("--name", default="main")
    p.add_argument("--compare", default="main", metavar="NAME",
                   help="the pair's other run (trained the other way), summed up in a paragraph if it has an analysis")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args()
    args.benchmark = BENCHMARKS[args.dataset]
    args.runs = args.runs or str(ROOT / "runs" / args.benchmark.preset)
    return {"ceiling": ceiling, "run": run, "analyse": analyse, "steps": steps, "report": report}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
