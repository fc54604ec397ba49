"""Evaluation: a dataset's test protocol, the paper's metrics, calibration, and a report.

`evaluate(model, dataset, protocol, sample)` draws K generations per image once (through the
model's `generations`, any `models.Segmenter`) and scores, for every k = 1..K, the running
mean of the first k generations (the mask for k is mean_k > 0.5): the scores at k = K are the
run's result, and the whole curve over k (the paper's Fig. 5 and 6) costs no extra sampling.

The protocol (how an item is fed to the model, at what size it is scored, how seeds are drawn)
is `protocol.Protocol`, shared with training validation; any model kind is scored alike through
the `models.Segmenter` interface (the U-Net baseline has K = 1).

Metrics per image (`segdiff.metrics`, fractions in [0, 1]): IoU, F1, BoundF (d = 1..5), WCov
(`weighted_coverage`, the DSAC/DarNet definition), the reference code's size-ratio "WCov"
(`size_ratio_coverage`), the paper's calibration score and the standard ECE (10 bins, lower is
better for both). Aggregation as in the paper: the plain mean over images; for Cityscapes the
mean over the instances of each class, then the mean of the classes (`mean_over_classes`).

Seeds depend on (seed, item name, quadrant, k) only (`protocol`), so a result does not depend on
`max_batch`, `max_images` or the order of the images, any image can be re-sampled alone, and the
first k generations of a K-generation run are the generations of a k-generation run (the curve
over k is what separate runs would give).

Files (with `out_dir`), each written atomically (`io.atomic_write`), `summary.json` last so that
its presence means the run finished (a stale one is deleted before anything else happens):
`per_image.csv`, `curve.csv`, `generations_metrics.png` (metrics vs K), `generations_calibration.png`
(calibration vs K), `reliability.png`, `examples.png` (best and worst images with their
uncertainty), `report.md` (the table printed by the CLI), `report.html` (the same table, the figures and a
sortable per-image table whose rows open small pictures of each image: one self-contained file,
`report_html`), `summary.json`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import metrics, plots, report_html
from .config import ConfigError, SampleConfig
from .device import describe_machine
from .io import atomic_write, colormap, colour_labels, overlay, png_bytes
from .labels import IGNORE, ClassList, valid_pixels
from .progress import progress as progress_display
from .protocol import CAMVID_PUBLISHED_IOU, CAMVID_PUBLISHED_MIOU, CAMVID_PUBLISHED_SOURCE, PAPER_CITYSCAPES_IOU, PAPER_RESULTS, Protocol, item_names, resize_probabilities
from .sampling import symmetry_order
from .seeding import derive_seed

__all__ = ["evaluate", "evaluate_labels", "format_report", "score_probabilities", "LABEL_METRICS", "METRICS"]

# Per-image metrics, in report order; all fractions in [0, 1].
METRICS: tuple[str, ...] = ("f1", "iou", "wcov", "wcov_size_ratio", "boundf", "calibration", "ece")
METRIC_LABELS = {
    "f1": "F1",
    "iou": "mIoU",
    "wcov": "WCov (DSAC/DarNet definition)",
    "wcov_size_ratio": "WCov (reference code: size ratio)",
    "boundf": "BoundF (d = 1..5)",
    "calibration": "calibration score (lower is better)",
    "ece": "ECE (lower is better)",
}
_PERCENT_METRICS = ("f1", "iou", "wcov", "wcov_size_ratio", "boundf")  # shown x100, as the paper

_NUM_EXAMPLES = 3  # best and worst images shown in examples.png (each)
_THUMBNAIL_SIDE = 256  # example panels are kept at most this large
_HTML_THUMBNAIL_SIDE = 128  # report.html's per-image pictures: small, as every image gets four
_SCORE_PIXELS = 2**24  # running means scored together per chunk (bounds memory for big crops)


# ---------------------------------------------------------------------------------------------
# Scoring


def score_probabilities(probs: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Score each of the probability maps `probs` (K, C, H, W) against one target (C, H, W).

    The mask of row k is probs[k] > 0.5, class by class. Returns {metric: float64 (K, C)} for
    every name in `METRICS` (binary masks have C = 1); metrics raise ValueError for mismatched
    shapes or a non-binary target. Pixels the target marks ignored (`labels.IGNORE`) count in no
    score: the overlap and boundary metrics see them as background in both masks (which leaves
    foreground IoU and F1 exactly those of the labelled pixels), the calibration metrics skip them.
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be (K, C, H, W), found shape {tuple(probs.shape)}")
    if target.shape != probs.shape[1:]:
        raise ValueError(f"prediction and target must have the same shape, found prediction "
                         f"{tuple(probs.shape[1:])} and target {tuple(target.shape)}")
    valid = valid_pixels(target).to(probs.device)
    ignoring = not bool(valid.all())
    chunk = max(1, _SCORE_PIXELS // max(1, probs[0].numel()))  # rows of K scored together
    parts: list[dict[str, Tensor]] = []
    for start in range(0, probs.shape[0], chunk):
        prob = probs[start:start + chunk]
        tgt = target.to(prob.device).clamp(min=0).expand_as(prob)
        mask = (prob > 0.5) & valid if ignoring else prob > 0.5
        # calibration over the labelled pixels only, as (rows, C, 1, N)
        cal_prob, cal_tgt = ((prob[:, valid].view(*prob.shape[:2], 1, -1), tgt[:, valid].view(*prob.shape[:2], 1, -1))
                             if ignoring else (prob, tgt))
        parts.append({
            "f1": metrics.f1(mask, tgt),
            "iou": metrics.iou(mask, tgt),
            "wcov": metrics.weighted_coverage(mask, tgt),
            "wcov_size_ratio": metrics.size_ratio_coverage(mask, tgt),
            "boundf": metrics.boundary_f_mean(mask, tgt),
            "calibration": metrics.calibration_score(cal_prob, cal_tgt),
            "ece": metrics.expected_calibration_error(cal_prob, cal_tgt),
        })
    return {m: torch.cat([p[m] for p in parts]).cpu() for m in METRICS}


# ---------------------------------------------------------------------------------------------
# Bookkeeping while the loop runs


class _Extremes:
    """The `n` best and `n` worst images by IoU, with small pictures of each for examples.png."""

    def __init__(self, n: int) -> None:
        self.n, self.entries = n, []  # (iou, index, name, panels)

    def offer(self, score: float, index: int, name: str, make_panels) -> None:
        ranked = sorted(self.entries, key=lambda e: (e[0], e[1]))
        if len(ranked) >= 2 * self.n and ranked[self.n - 1][0] < score < ranked[-self.n][0]:
            return  # neither among the worst nor the best: skip drawing it
        ranked.append((score, index, name, make_panels()))
        ranked.sort(key=lambda e: (e[0], e[1]))
        self.entries = ranked if len(ranked) <= 2 * self.n else ranked[:self.n] + ranked[-self.n:]

    def rows(self) -> list[tuple[str, list[tuple[str, Tensor]]]]:
        ranked = sorted(self.entries, key=lambda e: (-e[0], e[1]))
        best = ranked[:min(self.n, math.ceil(len(ranked) / 2))]
        worst = [e for e in ranked[len(best):]][-self.n:]
        return ([(f"best: {name}, IoU {100 * s:.1f}", panels) for s, _, name, panels in best]
                + [(f"worst: {name}, IoU {100 * s:.1f}", panels) for s, _, name, panels in worst])


class _Thumbnails:
    """Per image, four small PNGs (image, ground truth, probability, uncertainty) for report.html.

    Drawn in the loop, where the image, target, probability and uncertainty are at hand; kept as
    PNG bytes (a few kB each) rather than tensors.
    """

    def __init__(self, side: int) -> None:
        self.side, self.by_name = side, {}  # name -> [(title, PNG bytes)]

    def add(self, name: str, image: Tensor, target: Tensor, prob: Tensor, uncertainty: Tensor) -> None:
        shown = panels(image, target, prob, uncertainty, side=self.side)[:4]  # without the overlay
        self.by_name[name] = [(title, png_bytes(picture)) for title, picture in shown]


def panels(image: Tensor, target: Tensor, prob: Tensor, uncertainty: Tensor, *,
            side: int = _THUMBNAIL_SIDE) -> list[tuple[str, Tensor]]:
    """Image, ground truth, probability, uncertainty and predicted-mask overlay, (3, h, w) each.

    The one way segdiff pictures a prediction (examples.png, report.html, TensorBoard's validation
    pictures). All are at most `side` pixels on their longer side; the uncertainty (std of the K generations,
    at most 0.5) is shown x2 on `io.colormap`'s ramp, the probability in grey, ignored pixels of the
    ground truth in mid-grey.
    """
    h, w = target.shape
    scale = min(1.0, side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = F.interpolate(image[None].float().cpu(), size=size, mode="bilinear", align_corners=False,
                          antialias=scale < 1)[0].clamp(0, 1)
    prob, uncertainty = resize_probabilities(torch.stack([prob.cpu(), uncertainty.cpu()]), size)
    target = F.interpolate(target[None, None].float().cpu(), size=size, mode="nearest")[0, 0]
    target = torch.where(valid_pixels(target), target, 0.5)  # ignored pixels in mid-grey
    grey = lambda x: x[None].expand(3, -1, -1)  # noqa: E731
    return [("image", image), ("ground truth", grey(target)), ("probability", grey(prob)),
            ("uncertainty (std x2)", colormap(uncertainty * 2)), ("prediction", overlay(image, prob > 0.5))]


def _aggregate(values: Tensor, classes: Sequence[str] | None) -> tuple[float, dict[str, float]]:
    """Per-image scores (N,) -> (overall, {class: mean}): the paper's aggregation.

    Without classes the plain mean over images (`metrics.mean_over_images`); with them the mean
    over each class's instances, then over classes (`metrics.mean_over_classes`).
    """
    if classes is None:
        return float(metrics.mean_over_images(values)), {}
    by_class = {c: values[[i for i, ci in enumerate(classes) if ci == c]] for c in dict.fromkeys(classes)}
    per_class, overall = metrics.mean_over_classes(by_class)
    return float(overall), {c: float(v) for c, v in per_class.items()}


# ---------------------------------------------------------------------------------------------
# The evaluation


@torch.no_grad()
def _prepare(model, dataset, protocol: Protocol, sample: SampleConfig | None, max_images: int | None,
             out_dir: str | Path | None) -> tuple[SampleConfig, int, int, Path | None]:
    """What both evaluations check and set up before sampling: (sample, K, images scored, out folder)."""
    sample = sample or model.config.sample
    data_classes = getattr(dataset, "classes", None)
    if isinstance(data_classes, ClassList) and data_classes.num_classes != model.config.model.num_classes:
        raise ConfigError(f"the model segments {model.config.model.num_classes} classes "
                         f"({', '.join(model.config.model.classes)}) but the data has {data_classes.num_classes} "
                         f"({', '.join(data_classes.names)}); evaluate it on data with its classes")
    symmetry_order(sample.symmetry, protocol.image_size, protocol.image_size)  # a bad name fails before sampling
    protocol.check_dataset(dataset)
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    if count == 0:
        raise ValueError(f"{protocol.name}: the dataset has no images to evaluate")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (out / "summary.json").exists():
        (out / "summary.json").unlink()  # a stale summary must not vouch for this run's files
    return sample, model.num_generations(sample), count, out


def _predictions(model, dataset, protocol: Protocol, sample: SampleConfig, seed: int, count: int):
    """The first `count` items, each predicted by the protocol: yields (index, name, image seed, image,
    target (C, h, w), running means (K, C, h, w), uncertainty) in item order."""
    names = item_names(dataset)
    for i in range(count):
        name = names[i]
        image_seed = derive_seed(seed, name)
        image, mask = dataset[i]
        protocol.check_item(name, image, mask)
        target = protocol.target(dataset, i, mask)  # (C, h, w)
        means, uncertainty = protocol.predict_item(model, image, sample, image_seed, tuple(target.shape[-2:]))
        yield i, name, image_seed, image, target, means, uncertainty


def evaluate(model, dataset, protocol: Protocol, sample: SampleConfig | None = None, *, seed: int = 0,
             out_dir: str | Path | None = None, progress: bool = True, max_images: int | None = None,
             metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate `model` (any `models.Segmenter`) on `dataset` with `protocol`; return the summary.

    `sample` (default: the model's own `config.sample`) holds every sampling setting. K
    generations per image (`model.num_generations(sample)`: 1 for the U-Net baseline) are drawn
    once and the running means of the first k are scored for every k. The summary holds the
    metrics at k = K ("metrics", fractions in [0, 1]; "per_class" for Cityscapes), the curve over
    k ("curve"), the pooled reliability diagram, the paper's numbers ("paper", percent) where a
    paper row applies, the resolved sampling settings ("sample"), the config, the seed and
    `metadata` (e.g. the checkpoint path). With `out_dir`, writes the files listed in the module
    docstring, summary.json last. `max_images` scores only the first N; `seed` fixes every
    generation (see `protocol`). Build the dataset at `protocol.dataset_size`:

        protocol = protocol_for("vaihingen", 64, score_size=256)
        summary = evaluate(model, make_dataset(cfg, "test", image_size=protocol.dataset_size), protocol)
        summary["metrics"]["iou"], summary["curve"]["iou"]  # at K, and for k = 1..K
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, found {max_images}")
    if model.config.model.num_classes > 2:
        return evaluate_labels(model, dataset, protocol, sample, seed=seed, out_dir=out_dir, progress=progress,
                               max_images=max_images, metadata=metadata)
    config = model.config
    sample, num_generations, count, out = _prepare(model, dataset, protocol, sample, max_images, out_dir)
    records = getattr(dataset, "records", None)
    classes = [records[i].label for i in range(count)] if protocol.per_class else None

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Tensor]] = []  # per image: {metric: (K,)}
    extremes = _Extremes(_NUM_EXAMPLES)
    thumbnails = _Thumbnails(_HTML_THUMBNAIL_SIDE) if out is not None else None
    bins = [torch.zeros(10, dtype=torch.float64) for _ in range(3)]  # count, prob sum, positives
    # A bar on a terminal; in a file or CI log, a plain line every 30 s.
    bar = progress_display(count, f"evaluate {protocol.name}", enabled=progress, every_s=30.0, unit="image")
    for i, name, image_seed, image, target, means, uncertainty in _predictions(model, dataset, protocol, sample,
                                                                              seed, count):
        try:
            # (K, C) per metric; the binary path's one channel is the foreground (C = 1).
            scores = {m: s[:, 0] for m, s in score_probabilities(means, target).items()}
            labelled = valid_pixels(target)  # (C, h, w): False where the target is ignored
            diagram = metrics.reliability_diagram(means[-1][labelled][None], target[labelled][None], num_bins=10)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        curves.append(scores)
        for acc, part in zip(bins, (diagram.count.double(), diagram.mean_prob.nan_to_num() * diagram.count,
                                    diagram.fraction_positive.nan_to_num() * diagram.count)):
            acc += part.cpu()
        prob = means[-1]  # (C, h, w)
        row = {"index": i, "name": name, **({"class": classes[i]} if classes else {}),
               "height": target.shape[-2], "width": target.shape[-1],
               "target_fraction": float(target[labelled].float().mean()),
               "predicted_fraction": float((prob[labelled] > 0.5).float().mean()),
               "mean_uncertainty": float(uncertainty.mean()), "seed": image_seed,
               **{m: float(scores[m][-1]) for m in METRICS}}
        rows.append(row)
        scored_image = resize_probabilities(image, tuple(target.shape[-2:]))  # (3, h, w), as scored
        extremes.offer(row["iou"], i, name, lambda: panels(scored_image, target[0], prob[0], uncertainty[0]))
        if thumbnails is not None:
            thumbnails.add(name, scored_image, target[0], prob[0], uncertainty[0])
        bar.set_postfix(iou=f"{sum(r['iou'] for r in rows) / len(rows):.4f}")
        bar.update(1)
    bar.close()
    elapsed = time.monotonic() - started

    # --- aggregate ------------------------------------------------------------------------------
    summary_metrics: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    curve: dict[str, list[float]] = {"num_generations": list(range(1, num_generations + 1))}
    for m in METRICS:
        summary_metrics[m], final_by_class = _aggregate(torch.tensor([r[m] for r in rows], dtype=torch.float64),
                                                        classes)
        for c, v in final_by_class.items():
            per_class.setdefault(c, {"count": classes.count(c)})[m] = v
        by_image = torch.stack([s[m] for s in curves])  # (N, K)
        curve[m] = [_aggregate(by_image[:, k], classes)[0] for k in range(num_generations)]
    count_, prob_sum, positives = bins
    reliability = {
        "bin_edges": torch.linspace(0, 1, 11, dtype=torch.float64).tolist(),
        "mean_prob": [float(p / n) if n > 0 else None for p, n in zip(prob_sum, count_)],
        "fraction_positive": [float(q / n) if n > 0 else None for q, n in zip(positives, count_)],
        "count": [int(n) for n in count_],
        "pooled_ece": float(metrics.ece_from_bins(count_, prob_sum, positives)),
    }
    paper = dict(PAPER_RESULTS.get(protocol.paper_key, {})) if protocol.paper_key else {}
    summary: dict[str, Any] = {
        "protocol": protocol.name,
        "protocol_description": protocol.description,
        "split": getattr(dataset, "split", None),
        "num_images": count,
        "dataset_size": len(dataset),
        "num_generations": num_generations,
        **model.sampling_summary(sample),  # sampler, num_steps
        "clip_x0": sample.clip_x0,
        "symmetry": sample.symmetry,
        "score_size": protocol.dataset_size if protocol.feed == "whole" and not protocol.target_from_dataset else None,
        "model": model.kind,
        "sample": asdict(sample),
        "seed": seed,
        "max_batch": sample.max_batch,
        "metrics": summary_metrics,
        "per_class": per_class,
        "curve": curve,
        "reliability": reliability,
        "paper": {"source": "Amit et al. 2021 (arXiv 2112.00390), docs/paper.md; test split, K=30, percent",
                  "metrics": paper,
                  "per_class_iou": dict(PAPER_CITYSCAPES_IOU) if protocol.paper_key == "cityscapes-expansion" else {}},
        "elapsed_s": round(elapsed, 2),
        "seconds_per_image": round(elapsed / count, 3),
        "machine": describe_machine(model.device),
        **(metadata or {}),
        "config": config.to_dict(),
    }
    if out is not None:
        _write_outputs(out, summary, rows, extremes, thumbnails)
    return summary


# ---------------------------------------------------------------------------------------------
# More than two classes: label maps


LABEL_METRICS: tuple[str, ...] = ("miou", "pixel_accuracy", "mean_class_accuracy", "miou_per_image", "ece", "brier")
LABEL_METRIC_LABELS = {
    "miou": "mIoU (one confusion matrix over the split)",
    "pixel_accuracy": "pixel accuracy",
    "mean_class_accuracy": "mean class accuracy",
    "miou_per_image": "mIoU per image, then the mean (classes in neither map skipped)",
    "ece": "top-label ECE, pooled (lower is better)",
    "brier": "Brier score (lower is better)",
}
_LABEL_PERCENT = ("miou", "pixel_accuracy", "mean_class_accuracy", "miou_per_image")


def label_panels(image: Tensor, target: Tensor, prob: Tensor, uncertainty: Tensor, palette, *,
                 side: int = _THUMBNAIL_SIDE) -> list[tuple[str, Tensor]]:
    """Image, ground truth, prediction (argmax) and entropy of a multi-class prediction, (3, h, w) each,
    the label maps in the classes' colours (ignored pixels black), at most `side` pixels on their
    longer side. `target` (h, w) labels, `prob` (C, h, w), `uncertainty` (h, w) entropy in nats."""
    h, w = target.shape
    scale = min(1.0, side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = F.interpolate(image[None].float().cpu(), size=size, mode="bilinear", align_corners=False,
                          antialias=scale < 1)[0].clamp(0, 1)
    near = lambda x: F.interpolate(x[None, None].float().cpu(), size=size, mode="nearest")[0, 0]  # noqa: E731
    entropy = near(uncertainty) / math.log(prob.shape[0])  # 0..1: log C is the most a pixel can have
    return [("image", image), ("ground truth", colour_labels(near(target), palette)),
            ("prediction", colour_labels(near(prob.argmax(dim=0)), palette)),
            ("entropy (/ log C)", colormap(entropy))]


def evaluate_labels(model, dataset, protocol: Protocol, sample: SampleConfig | None = None, *, seed: int = 0,
                    out_dir: str | Path | None = None, progress: bool = True, max_images: int | None = None,
                    metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """`evaluate` for models of more than two classes (label maps; called by `evaluate`).

    Each of the K running means is a label map by its argmax; for every k one confusion matrix is
    accumulated over the split (`metrics.confusion_matrix`, ignored pixels left out), giving per-class
    IoU, mIoU, pixel and mean class accuracy (`metrics.confusion_scores`); the per-image mIoU is the
    second view. Calibration: the top-label ECE pooled over all labelled pixels, and the Brier score
    (the mean over images). Uncertainty: the entropy of the mean (per image, its mean is reported).
    Files as `evaluate` writes them, the pictures colour-coded by class.
    """
    config = model.config
    sample, k_total, count, out = _prepare(model, dataset, protocol, sample, max_images, out_dir)
    m = config.model
    num_classes, names, palette = m.num_classes, m.classes, m.palette
    ignore = int(IGNORE)

    started = time.monotonic()
    matrices = torch.zeros(k_total, num_classes, num_classes, dtype=torch.int64)  # per k, over the split
    bins = torch.zeros(k_total, 3, 10, dtype=torch.float64)  # per k: count, confidence sum, correct
    brier = torch.zeros(k_total, dtype=torch.float64)  # per k: sum over images of the per-image Brier
    per_image_miou = torch.zeros(k_total, dtype=torch.float64)
    rows: list[dict[str, Any]] = []
    extremes = _Extremes(_NUM_EXAMPLES)
    thumbnails = _Thumbnails(_HTML_THUMBNAIL_SIDE) if out is not None else None
    bar = progress_display(count, f"evaluate {protocol.name}", enabled=progress, every_s=30.0, unit="image")
    for i, name, image_seed, image, target, means, uncertainty in _predictions(model, dataset, protocol, sample,
                                                                              seed, count):
        target = target[0].long()  # (h, w) labels, -1 ignored
        predicted = means.argmax(dim=1)  # (K, h, w)
        try:
            for k in range(k_total):
                matrices[k] += metrics.confusion_matrix(predicted[k], target, num_classes, ignore_index=ignore).cpu()
                bins[k] += torch.stack(metrics.top_label_bins(means[k], target, ignore_index=ignore)).cpu()
            brier += metrics.brier_score(means, target.expand(k_total, -1, -1), ignore_index=ignore).cpu()
            image_miou = metrics.mean_iou_per_image(predicted, target.expand(k_total, -1, -1), num_classes,
                                                    ignore_index=ignore).cpu()
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        per_image_miou += image_miou
        labelled = target != ignore
        row = {"index": i, "name": name, "height": target.shape[0], "width": target.shape[1],
               "miou": float(image_miou[-1]),
               "pixel_accuracy": float((predicted[-1] == target)[labelled].double().mean()) if labelled.any() else None,
               "mean_entropy": float(uncertainty[0].mean()), "seed": image_seed}
        rows.append(row)
        scored_image = resize_probabilities(image, tuple(target.shape))
        shown = (scored_image, target, means[-1], uncertainty[0])
        extremes.offer(row["miou"], i, name, lambda: label_panels(*shown, palette))
        if thumbnails is not None:
            thumbnails.by_name[name] = [(title, png_bytes(picture)) for title, picture
                                        in label_panels(*shown, palette, side=thumbnails.side)]
        bar.set_postfix(miou=f"{sum(r['miou'] for r in rows) / len(rows):.4f}")
        bar.update(1)
    bar.close()
    elapsed = time.monotonic() - started

    curve: dict[str, list[float]] = {"num_generations": list(range(1, k_total + 1))}
    by_k = [metrics.confusion_scores(matrices[k]) for k in range(k_total)]
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
        curve[key] = [float(scores[key]) for scores in by_k]
    curve["miou_per_image"] = (per_image_miou / count).tolist()
    curve["ece"] = [float(metrics.ece_from_bins(*bins[k])) for k in range(k_total)]
    curve["brier"] = (brier / count).tolist()
    final = by_k[-1]
    count_, conf_sum, correct = bins[-1]
    reliability = {
        "bin_edges": torch.linspace(0, 1, 11, dtype=torch.float64).tolist(),
        "mean_prob": [float(p / n) if n > 0 else None for p, n in zip(conf_sum, count_)],
        "fraction_positive": [float(q / n) if n > 0 else None for q, n in zip(correct, count_)],
        "count": [int(n) for n in count_],
        "pooled_ece": curve["ece"][-1],
    }
    summary: dict[str, Any] = {
        "protocol": protocol.name,
        "protocol_description": protocol.description,
        "split": getattr(dataset, "split", None),
        "num_images": count,
        "dataset_size": len(dataset),
        "num_generations": k_total,
        **model.sampling_summary(sample),
        "clip_x0": sample.clip_x0,
        "symmetry": sample.symmetry,
        "score_size": None,
        "model": model.kind,
        "num_classes": num_classes,
        "classes": list(names),
        "sample": asdict(sample),
        "seed": seed,
        "max_batch": sample.max_batch,
        "metrics": {key: curve[key][-1] for key in LABEL_METRICS},
        "per_class": {n: {"iou": None if math.isnan(v) else float(v),
                          "accuracy": None if math.isnan(a) else float(a),
                          "pixels": int(matrices[-1][c].sum())}
                      for c, (n, v, a) in enumerate(zip(names, final["iou"].tolist(), final["class_accuracy"].tolist()))},
        "confusion_matrix": matrices[-1].tolist(),
        "curve": curve,
        "reliability": reliability,
        "paper": _published_labels(protocol, names),
        "elapsed_s": round(elapsed, 2),
        "seconds_per_image": round(elapsed / count, 3),
        "machine": describe_machine(model.device),
        **(metadata or {}),
        "config": config.to_dict(),
    }
    if out is not None:
        _write_label_outputs(out, summary, rows, extremes, thumbnails, palette)
    return summary


def _published_labels(protocol: Protocol, names: Sequence[str]) -> dict[str, Any]:
    """The published row shown beside a multi-class run (CamVid: Dilation8, the best row of its source)."""
    if protocol.paper_key != "camvid" or len(names) != len(CAMVID_PUBLISHED_IOU["Dilation8"]):
        return {"source": "", "metrics": {}, "per_class_iou": {}}
    return {"source": f"Dilation8, {CAMVID_PUBLISHED_SOURCE}", "metrics": {"miou": CAMVID_PUBLISHED_MIOU["Dilation8"]},
            "per_class_iou": dict(zip(names, CAMVID_PUBLISHED_IOU["Dilation8"]))}


def _write_label_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], extremes: _Extremes,
                         thumbnails: _Thumbnails, palette) -> None:
    """`_write_outputs` for label maps: the same files, their content multi-class."""
    out.mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    atomic_write(out / "per_image.csv", lambda p: _write_csv(p, header, [[r[h] for h in header] for r in rows]))
    curve = summary["curve"]
    atomic_write(out / "curve.csv", lambda p: _write_csv(
        p, ["num_generations", *LABEL_METRICS],
        [[k, *(curve[m][k - 1] for m in LABEL_METRICS)] for k in curve["num_generations"]]))
    title = " ".join(str(x) for x in (summary["protocol"], summary["split"]) if x)
    title += f", {summary['num_images']} images, K={summary['num_generations']}, {summary['sampler']}"
    plots.plot_metrics_vs_generations(out / "generations_metrics.png", curve,
                                      ("miou", "miou_per_image", "pixel_accuracy", "mean_class_accuracy"),
                                      LABEL_METRIC_LABELS, title=title)
    plots.plot_calibration_vs_generations(out / "generations_calibration.png", curve, title=title,
                                          names=("ece", "brier"), labels=LABEL_METRIC_LABELS)
    plots.plot_reliability(out / "reliability.png", summary["reliability"], title=title, top_label=True)
    plots.plot_examples(out / "examples.png", extremes.rows(), title=title,
                        legend=list(zip(summary["classes"], palette)))
    report = format_report(summary)
    atomic_write(out / "report.md", lambda p: p.write_text(report + "\n"))
    columns = [("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"), ("mean_entropy", "mean entropy")]
    page = report_html.render(
        report_tables(summary),
        figures=[(name, (out / name).read_bytes())
                 for name in ("generations_metrics.png", "generations_calibration.png", "reliability.png")],
        columns=columns,
        rows=[{"name": r["name"], "thumbnails": thumbnails.by_name[r["name"]],
               "cells": [(_cell(key, r[key]), r[key]) for key, _ in columns]} for r in rows],
        classes=list(zip(summary["classes"], palette)))
    atomic_write(out / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
    atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))


def _write_csv(path: Path, header: list[str], lines: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(lines)


def _write_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], extremes: _Extremes,
                   thumbnails: _Thumbnails) -> None:
    """Write every file; summary.json last, so its presence means the rest is complete."""
    out.mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    atomic_write(out / "per_image.csv", lambda p: _write_csv(p, header, [[r[h] for h in header] for r in rows]))
    curve = summary["curve"]
    atomic_write(out / "curve.csv", lambda p: _write_csv(
        p, ["num_generations", *METRICS], [[k, *(curve[m][k - 1] for m in METRICS)] for k in curve["num_generations"]]))
    title = " ".join(str(x) for x in (summary["protocol"], summary["split"]) if x)
    title += f", {summary['num_images']} images, K={summary['num_generations']}, {summary['sampler']}"
    plots.plot_metrics_vs_generations(out / "generations_metrics.png", curve, ("iou", "f1", "boundf", "wcov"),
                                      {m: METRIC_LABELS[m] for m in METRICS}, title=title)
    plots.plot_calibration_vs_generations(out / "generations_calibration.png", curve, title=title)
    plots.plot_reliability(out / "reliability.png", summary["reliability"], title=title)
    plots.plot_examples(out / "examples.png", extremes.rows(), title=title)
    report = format_report(summary)
    atomic_write(out / "report.md", lambda p: p.write_text(report + "\n"))
    columns = [("iou", "IoU"), ("f1", "F1"), ("boundf", "BoundF"), ("wcov", "WCov"), ("calibration", "calibration"),
               ("ece", "ECE"), ("mean_uncertainty", "mean uncertainty")]
    page = report_html.render(
        report_tables(summary),
        figures=[(name, (out / name).read_bytes())
                 for name in ("generations_metrics.png", "generations_calibration.png", "reliability.png")],
        columns=([("class", "class")] if "class" in header else []) + columns,
        rows=[{"name": r["name"], "thumbnails": thumbnails.by_name[r["name"]],
               "cells": ([(str(r["class"]), r["class"])] if "class" in r else [])
               + [(_cell(key, r[key]), r[key]) for key, _ in columns]} for r in rows])
    atomic_write(out / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
    atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))


# ---------------------------------------------------------------------------------------------
# The report


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if metric in _PERCENT_METRICS + _LABEL_PERCENT else f"{value:.4f}"


def report_tables(summary: dict[str, Any]) -> dict[str, Any]:
    """The report's content, shared by report.md (`format_report`) and report.html.

    Returns {"heading": [lines], "metrics": [(metric, label, value, this run, paper)], "per_class":
    [(class (instances), mIoU, F1, BoundF, calibration, paper mIoU)], "per_class_note": str or
    None, "notes": [lines]}; numbers are shown as the paper does (percent; calibration raw).
    """
    if summary.get("num_classes", 2) > 2:
        return _label_report_tables(summary)
    paper, paper_classes = summary["paper"]["metrics"], summary["paper"]["per_class_iou"]
    steps = f", {summary['num_steps']} steps" if summary.get("num_steps") else ""
    if summary.get("symmetry", "none") != "none":
        steps += f", {summary['symmetry']} symmetry"
    split = f" {summary['split']} split" if summary["split"] else ""
    heading = [
        f"segdiff evaluate: {summary['protocol']}{split}, {summary['num_images']} of "
        f"{summary['dataset_size']} images, K={summary['num_generations']} generations "
        f"({summary['sampler']}{steps}), seed {summary['seed']}",
        f"protocol: {summary['protocol_description']}",
    ]
    table = [(m, METRIC_LABELS[m], summary["metrics"][m], _cell(m, summary["metrics"][m]),
              f"{paper[m]:.2f}" if m in paper else "-") for m in METRICS]
    per_class = [(f"{c} ({v['count']})", _cell("iou", v["iou"]), _cell("f1", v["f1"]), _cell("boundf", v["boundf"]),
                  _cell("calibration", v["calibration"]), f"{paper_classes[c]:.2f}" if c in paper_classes else "-")
                 for c, v in summary["per_class"].items()]
    per_class_note = None
    if summary["per_class"] and len(summary["per_class"]) < 8:
        per_class_note = f"(the mean is over the {len(summary['per_class'])} classes present; the paper's over 8)"
    notes = []
    if paper:
        notes.append("paper: Amit et al. 2021, test split, K=30, DDPM over all T steps; percent")
        if summary["split"] and summary["split"] != "test":
            notes.append(f"this run is on the {summary['split']} split, the paper's numbers are on test")
        if "wcov_size_ratio" in paper:
            notes.append("the paper's WCov comes from the authors' code, which computes the size ratio "
                         "min(|P|,|G|)/max(|P|,|G|), not the DSAC/DarNet weighted coverage")
    curve = summary["curve"]
    ks = curve["num_generations"]
    if len(ks) > 1:  # the curve at a few K (all of them in curve.csv)
        shown_k = [k for k in ks if k <= 3 or k in (5, 9, 10, 20, 30) or k == ks[-1]]
        notes.append("mIoU by K: " + ", ".join(f"K={k}: {100 * curve['iou'][k - 1]:.2f}" for k in shown_k))
    notes.append(f"pooled ECE over all pixels: {summary['reliability']['pooled_ece']:.4f}; "
                 f"{summary['seconds_per_image']:.2f} s per image")
    return {"heading": heading, "metrics": table, "per_class": per_class, "per_class_note": per_class_note,
            "per_class_header": ["class (instances)", "mIoU", "F1", "BoundF", "calibration", "paper mIoU"],
            "notes": notes}


def _heading(summary: dict[str, Any]) -> list[str]:
    steps = f", {summary['num_steps']} steps" if summary.get("num_steps") else ""
    if summary.get("symmetry", "none") != "none":
        steps += f", {summary['symmetry']} symmetry"
    split = f" {summary['split']} split" if summary["split"] else ""
    return [f"segdiff evaluate: {summary['protocol']}{split}, {summary['num_images']} of "
            f"{summary['dataset_size']} images, K={summary['num_generations']} generations "
            f"({summary['sampler']}{steps}), seed {summary['seed']}",
            f"protocol: {summary['protocol_description']}"]


def _label_report_tables(summary: dict[str, Any]) -> dict[str, Any]:
    """`report_tables` of a multi-class summary: the split's scores and the per-class table."""
    published = summary["paper"]["metrics"]
    table = [(m, LABEL_METRIC_LABELS[m], summary["metrics"][m], _cell(m, summary["metrics"][m]),
              f"{published[m]:.2f}" if m in published else "-") for m in LABEL_METRICS]
    published_iou = summary["paper"]["per_class_iou"]
    per_class = [(name, _cell("miou", v["iou"]), _cell("miou", v["accuracy"]), str(v["pixels"]),
                  f"{published_iou[name]:.1f}" if name in published_iou else "-")
                 for name, v in summary["per_class"].items()]
    curve, ks = summary["curve"], summary["curve"]["num_generations"]
    notes = []
    if summary["paper"]["source"]:
        notes.append(f"published: {summary['paper']['source']}")
    if len(ks) > 1:
        shown_k = [k for k in ks if k <= 3 or k in (5, 9, 10, 20, 30) or k == ks[-1]]
        notes.append("mIoU by K: " + ", ".join(f"K={k}: {100 * curve['miou'][k - 1]:.2f}" for k in shown_k))
    notes.append(f"{summary['seconds_per_image']:.2f} s per image")
    return {"heading": _heading(summary), "metrics": table, "per_class": per_class, "per_class_note": None,
            "per_class_header": ["class", "IoU", "accuracy (recall)", "labelled pixels", "published IoU"],
            "notes": notes}


def format_report(summary: dict[str, Any]) -> str:
    """A Markdown table of this run's scores beside the paper's (percent; calibration raw)."""
    tables = report_tables(summary)
    lines = [*tables["heading"], "", "| metric | this run | published |", "|---|---:|---:|"]
    lines += [f"| {label} | {shown} | {paper} |" for _, label, _, shown, paper in tables["metrics"]]
    if tables["per_class"]:
        header = tables["per_class_header"]
        lines += ["", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(cells) + " |" for cells in tables["per_class"]]
        if tables["per_class_note"]:
            lines.append(tables["per_class_note"])
    return "\n".join(lines + [""] + [f"- {n}" for n in tables["notes"]])
