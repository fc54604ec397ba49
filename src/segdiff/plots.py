"""Figures of an evaluation (PNG, matplotlib), each written atomically with `io.atomic_write`.

- `plot_metrics_vs_generations`: metric of the K-generation ensemble against K (paper Fig. 5).
- `plot_calibration_vs_generations`: calibration score and ECE against K (paper Fig. 6).
- `plot_reliability`: reliability diagram pooled over all pixels (`metrics.reliability_diagram`).
- `plot_examples`: rows of pictures (the best and worst images with their uncertainty).
- `plot_training_curves`: validation IoU of training runs against wall-clock minutes.

matplotlib is imported inside each function, through its object API (`Figure`, no pyplot): no
global backend or figure state, nothing opens a window, and `import segdiff` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from .io import atomic_write

__all__ = ["plot_metrics_vs_generations", "plot_calibration_vs_generations", "plot_reliability", "plot_examples",
           "plot_training_curves"]


def _figure(width: float, height: float):
    # matplotlib is imported when a figure is drawn, not with segdiff: it takes a second to import.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(figure, path: str | Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def _k_axis(axes, ks: Sequence[int]) -> None:
    axes.set_xlabel("number of generations K")
    axes.set_xlim(0.5, max(ks) + 0.5)
    if len(ks) <= 12:
        axes.set_xticks(list(ks))
    axes.grid(True, alpha=0.3)


def plot_metrics_vs_generations(path: str | Path, curve: Mapping[str, Sequence[float]], names: Sequence[str],
                                labels: Mapping[str, str], *, title: str = "") -> None:
    """Each metric in `names` (fractions, shown in percent) against K = curve["num_generations"]."""
    ks = list(curve["num_generations"])
    fig = _figure(6.4, 4.2)
    axes = fig.add_subplot()
    for name in names:
        axes.plot(ks, [100 * v for v in curve[name]], marker="o", markersize=3, label=labels.get(name, name))
    _k_axis(axes, ks)
    axes.set_ylabel("score (%), higher is better")
    axes.set_title(f"Score of the mean of K generations\n{title}", fontsize=10)
    axes.legend(fontsize=8)
    _save(fig, path)


def plot_calibration_vs_generations(path: str | Path, curve: Mapping[str, Sequence[float]], *,
                                    title: str = "", names: tuple[str, str] = ("calibration", "ece"),
                                    labels: Mapping[str, str] | None = None) -> None:
    """Two calibration measures against K (lower is better), each on its own axis: by default the
    paper's calibration score and the ECE; `names` picks others from `curve` (e.g. ECE and Brier)."""
    labels = labels or {"calibration": "calibration score (paper: mean over bins of squared gap)", "ece": "ECE"}
    first, second = names
    ks = list(curve["num_generations"])
    fig = _figure(6.4, 4.2)
    axes = fig.add_subplot()
    axes.plot(ks, curve[first], marker="o", markersize=3, color="tab:red", label=labels.get(first, first))
    axes.set_ylabel(f"{first}, lower is better")
    twin = axes.twinx()
    twin.plot(ks, curve[second], marker="s", markersize=3, color="tab:blue", linestyle="--",
              label=labels.get(second, second))
    twin.set_ylabel(f"{second}, lower is better")
    _k_axis(axes, ks)
    axes.set_title(f"Calibration of the mean of K generations\n{title}", fontsize=10)
    handles = axes.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    axes.legend(handles, [h.get_label() for h in handles], fontsize=8)
    _save(fig, path)


def plot_reliability(path: str | Path, reliability: Mapping[str, Any], *, title: str = "",
                     top_label: bool = False) -> None:
    """Reliability diagram: fraction of foreground pixels per bin of predicted probability.

    `reliability` holds bin_edges, mean_prob, fraction_positive (None for empty bins) and count,
    as `evaluation.evaluate` stores it. Bars show the fraction of positives at each bin's centre;
    dots mark the bin's mean probability; the lower panel shows the pixel counts (log scale).
    `top_label`: the multi-class diagram, accuracy of the top class per bin of its probability.
    """
    what = "fraction of pixels whose top class is right" if top_label else "fraction of foreground pixels"
    along = "probability of the top class" if top_label else "predicted probability"
    edges = list(reliability["bin_edges"])
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    filled = [i for i, n in enumerate(reliability["count"]) if n > 0]
    fig = _figure(5.2, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar([centres[i] for i in filled], [reliability["fraction_positive"][i] for i in filled], width=width * 0.9,
            color="tab:blue", alpha=0.7, edgecolor="black", label=what)
    top.plot([reliability["mean_prob"][i] for i in filled], [reliability["fraction_positive"][i] for i in filled],
             "o", color="tab:orange", markersize=4, label="(mean probability, fraction)")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel(what)
    top.set_title(f"Reliability (pooled ECE {reliability['pooled_ece']:.4f})\n{title}", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    top.grid(True, alpha=0.3)
    bottom.bar([centres[i] for i in filled], [reliability["count"][i] for i in filled], width=width * 0.9,
               color="grey", edgecolor="black")
    bottom.set_yscale("log")
    bottom.set_ylabel("pixels")
    bottom.set_xlabel(f"{along} (mean of the K generations)")
    bottom.set_xlim(0, 1)
    _save(fig, path)


def plot_examples(path: str | Path, rows: Sequence[tuple[str, Sequence[tuple[str, Tensor]]]], *,
                  title: str = "", legend: Sequence[tuple[str, Sequence[int]]] = (),
                  heading: str = "Best and worst images by IoU") -> None:
    """A grid of pictures: one row per (row title, [(panel title, (3, H, W) in [0, 1]), ...]), under
    "HEADING: TITLE"; `legend`: (class name, 0..255 RGB) swatches drawn under the grid (colour-coded label maps)."""
    if not rows:
        raise ValueError("plot_examples needs at least one row")
    columns = max(len(panels) for _, panels in rows)
    fig = _figure(2.1 * columns, 2.35 * len(rows) + 0.4)
    grid = fig.subplots(len(rows), columns, squeeze=False)
    for r, (row_title, panels) in enumerate(rows):
        for c in range(columns):
            axes = grid[r][c]
            axes.set_xticks([])
            axes.set_yticks([])
            if c >= len(panels):
                axes.set_axis_off()
                continue
            panel_title, picture = panels[c]
            axes.imshow(picture.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy(),
                        interpolation="nearest")
            axes.set_title(panel_title if r == 0 else "", fontsize=9)
            if c == 0:
                axes.set_ylabel(row_title, fontsize=8)
    fig.suptitle(f"{heading}: {title}", fontsize=10)
    if legend:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(facecolor=[v / 255 for v in rgb], edgecolor="black", label=name)
                            for name, rgb in legend], loc="outside lower center", ncols=min(6, len(legend)), fontsize=8)
    _save(fig, path)


def plot_training_curves(path: str | Path, runs: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                         title: str = "") -> None:
    """Validation IoU (fractions, shown in percent) against training minutes, one line per run."""
    fig = _figure(6.4, 4.2)
    axes = fig.add_subplot()
    for label, (minutes, values) in runs.items():
        axes.plot(list(minutes), [100 * v for v in values], marker="o", markersize=3, label=label)
    axes.set_xlabel("training time (minutes)")
    axes.set_ylabel("validation IoU (%)")
    axes.grid(True, alpha=0.3)
    axes.set_title(f"Validation IoU during training\n{title}", fontsize=10)
    axes.legend(fontsize=8)
    _save(fig, path)
