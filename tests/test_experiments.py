"""The experiment scripts: the data copy must score as the original does, and the results page must show
what its runs wrote."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from segdiff.data import Vaihingen

ROOT = Path(__file__).resolve().parent.parent


def write_vaihingen(folder: Path, numbers: list[int], size: int = 512) -> None:
    """Tiles in the release's format: RGB TIFFs and 1-bit MinIsWhite masks (stored bits inverted)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for n in numbers:
        tifffile.imwrite(folder / f"building_{n:03d}.tif", rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                         photometric="rgb")
        mask = np.zeros((size, size), dtype=bool)
        mask[size // 4 + n % 7: size // 2 + 3 * n % 11, size // 3: 3 * size // 4] = True
        tifffile.imwrite(folder / f"building_mask_{n:03d}.tif", ~mask, photometric="miniswhite")


def test_vaihingen_256_copy_gives_the_loaders_masks_exactly_and_images_within_rounding(tmp_path):
    source = tmp_path / "data" / "vaihingen" / "buildings"
    write_vaihingen(source, [1, 2, 3, 101, 102])
    out = tmp_path / "copy"
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "vaihingen_256.py"), str(tmp_path / "data"),
                             str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "5 tiles written" in result.stdout
    for split in ("train", "test"):
        original, copy = Vaihingen(tmp_path / "data", split), Vaihingen(out, split)
        assert copy.names == original.names and len(copy) > 0
        for i in range(len(copy)):
            (image_a, mask_a), (image_b, mask_b) = original[i], copy[i]
            assert torch.equal(mask_a, mask_b)  # the ground truth every score uses
            assert (image_a - image_b).abs().max().item() <= 0.5 / 255 + 1e-6
    assert sum(p.stat().st_size for p in (out / "vaihingen" / "buildings").iterdir()) < sum(
        p.stat().st_size for p in source.iterdir()) / 3


def _summary(f1: float, iou: float, generations: int, seconds: float) -> dict:
    """A test evaluation's summary.json as `segdiff evaluate` writes it (the fields the page reads)."""
    metrics = {"f1": f1, "iou": iou, "wcov": iou - 0.01, "wcov_size_ratio": iou + 0.01, "boundf": iou - 0.2,
               "calibration": 0.0312, "ece": 0.0123}
    # The curve over K: metric of the mean of the first k generations, k = 1..K; here K = 1 scores
    # 0.5, rising by 0.01 per extra generation.
    curve = {name: [0.5 + 0.01 * k for k in range(generations)] for name in ("f1", "iou", "boundf")}
    curve |= {"calibration": [0.04] * generations, "ece": [0.02] * generations}
    return {"num_images": 3, "num_generations": generations, "sampler": "sde-dpm-solver++", "num_steps": 10,
            "seconds_per_image": seconds, "machine": "a test machine", "metrics": metrics, "curve": curve,
            "paper": {"metrics": {"f1": 95.14, "iou": 91.12, "wcov_size_ratio": 93.83, "boundf": 85.09}}}


def write_runs(runs: Path, *, redesigned: bool = False) -> None:
    """The two test evaluations the page reads, with hand-chosen scores; `redesigned`: written by
    segdiff after its redesign, which records the resolved sampling settings ("sample")."""
    for name, summary in (("segdiff", _summary(0.9, 0.8, 30, 5.0)), ("unet", _summary(0.95, 0.875, 1, 0.04))):
        if redesigned:
            summary["sample"] = {"num_generations": summary["num_generations"]}
        folder = runs / name / "test"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "per_image.csv").write_text("name,iou,f1\nbuilding_101,0.8,0.9\nbuilding_102,0.7,0.8\n")


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    """experiments/NAME run as a user runs it, its output captured."""
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *args], capture_output=True, text=True)


def _load_script(name: str):
    """experiments/NAME imported as a module, under its own name (a dataclass in it looks its module up there)."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, ROOT / "experiments" / name)
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    return script


def _page(*args: str) -> subprocess.CompletedProcess:
    return _script("vaihingen_cpu.py", *args)


def test_results_page_shows_the_scores_its_runs_wrote(tmp_path):
    write_runs(tmp_path / "runs")
    out = tmp_path / "docs" / "results.md"
    result = _page("report", "--runs", str(tmp_path / "runs"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    # Fractions shown in percent: F1 0.9 -> 90.00, IoU 0.8 -> 80.00, WCov 0.79, size ratio 0.81, BoundF 0.6.
    assert "| SegDiff `vaihingen-cpu` | 90.00 | 80.00 | 79.00 | 81.00 | 60.00 | 0.0312 | 0.0123 | 30 | 5.00 |" in page
    assert "| U-Net baseline | 95.00 | 87.50 | 86.50 | 88.50 | 67.50 | 0.0312 | 0.0123 | 1 | 0.04 |" in page
    assert "| paper (SegDiff `vaihingen`, 256 px, GPU) | 95.14 | 91.12 | - | 93.83 | 85.09 |" in page
    # K = k reads curve entry k - 1: 0.5 + 0.01 * (k - 1).
    for k, iou in ((1, "50.00"), (3, "52.00"), (9, "58.00"), (30, "79.00")):
        assert f"| {k} | {iou} | {iou} | {iou} | 0.0400 | 0.0200 |" in page
    assert "Test split (3 images)" in page and "a test machine" in page
    # The commands that made the numbers, with the data folder as a placeholder.
    assert page.count("segdiff evaluate runs/vaihingen-cpu/") == 2
    assert "--data DATA --split test --generations 30 --sampler sde-dpm-solver++ --steps 10 --score-size 256" in page
    assert "../" not in page.replace("../experiments/README.md", "")


def test_results_page_says_when_its_runs_predate_the_redesign(tmp_path):
    for redesigned in (False, True):
        runs, out = tmp_path / f"runs{redesigned}", tmp_path / f"results{redesigned}.md"
        write_runs(runs, redesigned=redesigned)
        assert _page("report", "--runs", str(runs), "--out", str(out)).returncode == 0
        assert ("made with segdiff before its redesign (commit 4683c4f)" in out.read_text()) is not redesigned


def test_results_page_without_the_runs_says_what_to_run(tmp_path):
    result = _page("report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results.md"))
    assert result.returncode != 0
    assert "segdiff/test/summary.json is missing" in result.stderr and "vaihingen_cpu.py run" in result.stderr
    assert not (tmp_path / "results.md").exists()


def test_runner_commands_parse_with_the_segdiff_command_line(tmp_path):
    # A mistyped flag would otherwise surface only when `run` reaches its stage, an hour in.
    import shlex

    from segdiff.cli import build_parser

    page = _load_script("vaihingen_cpu.py")
    parser = build_parser()
    for _, template in page.STAGES:
        words = shlex.split(template.format(data=tmp_path / "data", runs=tmp_path / "runs"))
        assert words[0] == "OMP_NUM_THREADS=2" and words[1] == "segdiff"
        parser.parse_args(words[2:])


def test_runner_skips_stages_marked_done(tmp_path):
    logs = tmp_path / "runs" / "logs"
    logs.mkdir(parents=True)
    for name in ("train-segdiff", "test-segdiff", "train-unet", "test-unet"):
        (logs / f"{name}.done").write_text("")
    result = _page("run", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skip ") == 4


# --- experiments/camvid_cpu.py ------------------------------------------------------------------
CAMVID_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian",
                "bicyclist")


def _camvid_summary(k_total: int, base: float, seconds: float) -> dict:
    """A test summary as evaluate writes it for CamVid: class c has IoU base + c / 100; the curve's
    entry k - 1 is base + k / 1000 (mIoU), ECE 0.1 - k / 1000."""
    ks = list(range(1, k_total + 1))
    return {
        "num_generations": k_total, "sampler": "sde-dpm-solver++" if k_total > 1 else "none", "num_steps": 10,
        "seconds_per_image": seconds, "machine": "a test machine",
        "metrics": {"miou": base + k_total / 1000, "pixel_accuracy": 0.8, "mean_class_accuracy": 0.5},
        "per_class": {n: {"iou": base + c / 100, "accuracy": 0.5, "pixels": 10} for c, n in enumerate(CAMVID_NAMES)},
        "curve": {"num_generations": ks, "miou": [base + k / 1000 for k in ks], "pixel_accuracy": [0.8] * k_total,
                  "ece": [0.1 - k / 1000 for k in ks], "brier": [0.5] * k_total},
    }


def write_camvid_runs(runs: Path) -> None:
    (runs / "main").mkdir(parents=True)
    (runs / "main" / "run.json").write_text(json.dumps({"minutes": 60, "models": ["segdiff", "unet"],
                                                        "machine": "a test machine; torch"}))
    for model, summary, steps in (("segdiff", _camvid_summary(30, 0.3, 4.0), 3000),
                                  ("unet", _camvid_summary(1, 0.4, 0.05), 9000)):
        (runs / "main" / model / "test").mkdir(parents=True)
        (runs / "main" / model / "test" / "summary.json").write_text(json.dumps(summary))
        log = [{"step": steps, "event": "train", "time": 3600.0},
               {"step": steps, "event": "val", "val_iou": 0.5, "time": 3600.0}]
        (runs / "main" / model / "log.jsonl").write_text("\n".join(map(json.dumps, log)) + "\n")


def _camvid(*args: str) -> subprocess.CompletedProcess:
    return _script("camvid_cpu.py", *args)


def _camvid_script():
    return _load_script("camvid_cpu.py")


def test_camvid_page_shows_the_scores_its_runs_wrote_beside_the_published_rows(tmp_path):
    write_camvid_runs(tmp_path / "runs")
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    out.write_text("# Results\n\nkept\n")
    result = _camvid("--runs", str(tmp_path / "runs"), "report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert page.startswith("# Results\n\nkept\n")
    # Class c: SegDiff 30 + c, U-Net 40 + c (percent); Dilation8, DeepLab-LFOV, SegNet from Yu & Koltun.
    assert "| sky | 30.0 | 40.0 | 89.9 | 89.0 | 87.0 |" in page
    assert "| bicyclist | 40.0 | 50.0 | 55.5 | 50.1 | 24.8 |" in page
    assert "| **mIoU** | **33.0** | **40.1** | **65.3** | **61.6** | **46.4** |" in page
    for k, miou, ece in ((1, "30.1", "0.0990"), (3, "30.3", "0.0970"), (9, "30.9", "0.0910"), (30, "33.0", "0.0700")):
        assert f"| SegDiff | {k} | {miou} | 80.0 | {ece} | 0.5000 |" in page
    assert "| U-Net | 1 | 40.1 | 80.0 | 0.0990 | 0.5000 |" in page
    assert "SegDiff 3000, U-Net 9000" in page and "(tmp" not in page
    assert (tmp_path / "docs" / "figures" / "camvid" / "val-miou.png").is_file()
    # Written again, the section replaces itself.
    assert _camvid("--runs", str(tmp_path / "runs"), "report", "--out", str(out)).returncode == 0
    assert out.read_text() == page


def test_camvid_runs_made_alone_take_two_threads_gather_their_models_and_say_so(tmp_path):
    import argparse

    script = _camvid_script()
    args = argparse.Namespace(data=str(tmp_path), runs=str(tmp_path / "runs"), minutes=60.0, test_generations=30,
                              models=["segdiff"], alone=True)
    train, test = script.stages("alone", "segdiff", args)
    assert train[1].startswith("OMP_NUM_THREADS=2 segdiff train") and test[1].startswith("OMP_NUM_THREADS=2 ")
    folder = tmp_path / "run"

    def models_after(minutes, models, alone):
        assert script.begin_run(folder, minutes, models, alone) == folder / "logs" and (folder / "logs").is_dir()
        return json.loads((folder / "run.json").read_text())["models"]

    assert models_after(60.0, ["segdiff"], True) == ["segdiff"]
    # The U-Net's hour, another day, joins the run; a run of other minutes, or side by side, starts afresh.
    assert models_after(60.0, ["unet"], True) == ["segdiff", "unet"]
    assert models_after(30.0, ["unet"], True) == ["unet"]
    assert models_after(60.0, ["segdiff"], False) == ["segdiff"]
    # The page says how the pair was trained, and the command that trains it so.
    write_camvid_runs(tmp_path / "runs")
    (tmp_path / "runs" / "main").rename(tmp_path / "runs" / "alone")
    info = tmp_path / "runs" / "alone" / "run.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "alone": True}))
    out = tmp_path / "results.md"
    out.write_text("# Results\n")
    assert _camvid("--runs", str(tmp_path / "runs"), "report", "--name", "alone", "--out", str(out)).returncode == 0
    page = out.read_text()
    assert "60 minutes of wall time each, one after the other, each alone on the 2 cores of a test machine," in page
    assert "side by side" not in page.split("## CamVid")[1].split("|")[0]
    assert "run --data DATA --name alone --minutes 60 --alone\npython experiments/camvid_cpu.py report --name alone\n" in page


def test_camvid_runner_commands_parse_with_the_segdiff_command_line(tmp_path):
    import argparse
    import shlex

    from segdiff.cli import build_parser

    script = _camvid_script()
    parser = build_parser()
    args = argparse.Namespace(data=str(tmp_path), runs=str(tmp_path / "runs"), minutes=15.0, test_generations=9,
                              models=["onehot", "bits"], alone=False)
    for model in args.models:
        for _, command in script.stages("encoding", model, args):
            words = shlex.split(command)
            assert words[0].startswith("OMP_NUM_THREADS=") and words[1] == "segdiff"
            parser.parse_args(words[2:])


# --- experiments/against_unet.py ------------------------------------------------------------------
def _against_unet_script():
    return _load_script("against_unet.py")


def _monuseg_rows() -> list[dict]:
    """Three test images: SegDiff IoU 0.7, 0.6, 0.8 against the U-Net's 0.6 each; SegDiff's entropy
    ranks the images exactly by its IoU, the U-Net's scores are all equal."""
    rows = []
    for i, (sd, ent) in enumerate(((0.7, 0.2), (0.6, 0.3), (0.8, 0.1))):
        row = {"name": f"img{i}"}
        for key, iou in (("segdiff_k1", sd - 0.1), ("segdiff_k3", sd), ("unet", 0.6), ("unet_tta", 0.61),
                         ("ensemble_w0.25", sd + 0.01), ("ensemble_w0.5", sd + 0.02), ("ensemble_w0.75", 0.65),
                         ("ensemble_entropy", sd + 0.03), ("ensemble_variance", 0.6)):
            row.update({f"{key}_f1": iou + 0.1, f"{key}_iou": iou, f"{key}_ece": 0.01})
        row.update({"segdiff_entropy": ent, "segdiff_disagreement": ent / 10, "unet_entropy": 0.5,
                    "unet_tta_variance": 0.01, "segdiff_seconds": 40.0, "unet_seconds": 0.5})
        rows.append(row)
    return rows


def test_uncertainty_weighted_ensembles_trust_the_more_certain_model_per_pixel():
    script = _against_unet_script()
    # Pixel 0: SegDiff unsure (0.5), the U-Net sure (0.9): the entropy rule gives the U-Net the share
    # H(0.5) / (H(0.5) + H(0.9)) = 0.6931 / (0.6931 + 0.3251). Pixel 1: both sure (0 and 1): 1/2 each.
    segdiff_mean = torch.tensor([[[0.5, 0.0]]])
    unet = torch.tensor([[[0.9, 1.0]]])
    share = math.log(2) / (math.log(2) + (-0.9 * math.log(0.9) - 0.1 * math.log(0.1)))
    # Variance: SegDiff's generations vary (0.25, 0.0), the U-Net's copies (0.05, 0.0): shares 0.25 / 0.3 and 1/2.
    found = script.weighted_ensembles(segdiff_mean, torch.tensor([[[0.25, 0.0]]]), unet, torch.tensor([[[0.8, 1.0]]]),
                                      torch.tensor([[[0.05, 0.0]]]))
    assert found["ensemble_entropy"][0, 0, 0].item() == pytest.approx((1 - share) * 0.5 + share * 0.9)
    assert found["ensemble_entropy"][0, 0, 1].item() == pytest.approx(0.5)
    assert found["ensemble_variance"][0, 0, 0].item() == pytest.approx((0.05 * 0.5 + 0.25 * 0.8) / 0.3)
    assert found["ensemble_variance"][0, 0, 1].item() == pytest.approx(0.5)
    # The report's claim: with two classes the entropy rule's 0.5 mask is the plain average's.
    s, u = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zero = torch.zeros_like(s)
    mixed = script.weighted_ensembles(s, zero, u, u, zero)["ensemble_entropy"]
    assert torch.equal(mixed > 0.5, (s + u) / 2 > 0.5) and not torch.allclose(mixed, (s + u) / 2)


def test_monuseg_summary_pairs_images_and_scores_each_failure_detector():
    summary = _against_unet_script().summarise(_monuseg_rows(), [1, 3], 3)
    diff = summary["paired"]["segdiff_k3 - unet"]  # differences 0.1, 0.0, 0.2: mean 0.1, sd 0.1
    assert diff["mean"] == pytest.approx(0.1) and diff["se"] == pytest.approx(0.1 / 3 ** 0.5) and diff["wins"] == 2
    assert summary["better_single"] == "segdiff_k3"
    assert summary["paired"]["ensemble_w0.5 - segdiff_k3"]["mean"] == pytest.approx(0.02)
    assert summary["paired"]["ensemble_variance - unet_tta"]["mean"] == pytest.approx(-0.01)
    entropy = summary["failure"]["segdiff_entropy"]
    assert entropy["spearman"] == pytest.approx(-1.0) and entropy["auroc_worst20"] == 1.0
    assert entropy["aurc"] == pytest.approx(entropy["aurc_oracle"])
    assert summary["failure"]["unet_entropy"]["auroc_worst20"] == 0.5  # all tied: chance
    assert summary["cost_ratio"] == pytest.approx(80.0)


def test_monuseg_page_shows_the_analysis_beside_the_paper(tmp_path):
    script = _against_unet_script()
    runs = tmp_path / "runs"
    summary = script.summarise(_monuseg_rows(), [1, 3], 3)
    summary.update({"machine": "a test machine", "threads": 2, "sample": "K=3, sampler ddim (10 steps), symmetry none",
                    "protocol": "MoNuSeg"})
    (runs / "main" / "analysis").mkdir(parents=True)
    (runs / "main" / "analysis" / "analysis.json").write_text(json.dumps(summary))
    one_step = {"f1": 0.75, "iou": 0.65, "ece": 0.02, "iou_per_image": [0.65, 0.55, 0.75], "seconds": 5.0}
    (runs / "main" / "analysis" / "steps-ddim.json").write_text(json.dumps(
        {"sampler": "ddim", "generations": 3, "rows": {"1": one_step}}))
    refined = {"f1": 0.9, "iou": 0.72, "ece": 0.02, "iou_per_image": [0.72, 0.62, 0.82], "seconds": 9.0}
    (runs / "main" / "analysis" / "refine-30-ddim.json").write_text(json.dumps(
        {"sampler": "ddim", "refine": 30, "generations": 3, "rows": {"3": refined}}))
    (runs / "ceiling.json").write_text(json.dumps({"masks": 30, "rows": {"256": {"f1": 0.929, "iou": 0.868,
                                                                               "tiles": 16}}}))
    for model, steps in (("segdiff", 2500), ("unet", 6000)):
        log = [{"step": steps, "event": "train", "time": 3600.0},
               {"step": steps, "event": "val", "val_iou": 0.55, "time": 3600.0}]
        (runs / "main" / model).mkdir(parents=True)
        (runs / "main" / model / "log.jsonl").write_text("\n".join(map(json.dumps, log)) + "\n")
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    out.write_text("# Results\n")
    result = _script("against_unet.py", "--runs", str(runs), "report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "| 256 | 92.90 | 86.80 | 16 |" in page
    assert "| SegDiff `monuseg-cpu`, K = 3 | 80.00 | 70.00 | 0.0100 |" in page
    assert "| U-Net baseline | 70.00 | 60.00 | 0.0100 |" in page
    assert "| paper, SegDiff (256 px, GPU) | 81.59 | 69.00 | |" in page and "| paper, U-Net | 79.43 | 65.99 | |" in page
    assert "+10.00 ± 5.77 IoU points" in page and "SegDiff made 2500 steps, the U-Net 6000" in page
    assert "60 minutes side by side, one thread each" in page  # no run.json: the pair of the first runs
    assert "| 0.5 | 82.00 | 72.00 | +2.00 ± 0.00 |" in page
    assert "| SegDiff mean entropy | -1.00 | 1.00 |" in page
    assert "40.0 s per test image" in page and "80x" in page
    assert "| ddim | 1 | 75.00 | 65.00 | -5.00 ± 0.00 | 0.0200 | 5.0 |" in page  # 5 points below 10 steps on each image
    assert "| 30 | ddim | 3 | 90.00 | 72.00 | +2.00 ± 0.00 | 9.0 |" in page  # against SegDiff, the better one
    assert ("| entropy-weighted: U-Net share H(SegDiff) / (H(SegDiff) + H(U-Net)) | 83.00 | 73.00 | 0.0100 | "
            "+3.00 ± 0.00 |") in page
    assert "better single model: met; the best, the entropy-weighted rule, gives +3.00 ± 0.00." in page
    assert "3 steps or fewer: missed; the closest: ddim, 1 steps (-5.00)." in page
    assert "20x one U-Net pass: missed (80x here" in page and page.count("## MoNuSeg") == 1
    assert (tmp_path / "docs" / "figures" / "monuseg" / "val-iou.png").is_file()
    # Written again, the section replaces itself.
    assert _script("against_unet.py", "--runs", str(runs), "report", "--out", str(out)).returncode == 0
    assert out.read_text() == page


def test_vaihingen_section_has_no_scale_table_keeps_the_monuseg_section_and_names_its_dataset(tmp_path):
    script = _against_unet_script()
    runs = tmp_path / "runs"
    summary = script.summarise(_monuseg_rows(), [1, 3], 3)
    summary.update({"machine": "a test machine", "threads": 2, "sample": "K=3, sampler ddim (10 steps), symmetry none",
                    "protocol": "Vaihingen"})
    (runs / "main" / "analysis").mkdir(parents=True)
    (runs / "main" / "analysis" / "analysis.json").write_text(json.dumps(summary))
    two_steps = {"f1": 0.8, "iou": 0.7, "ece": 0.02, "iou_per_image": [0.7, 0.6, 0.8], "seconds": 4.0,
                 "unet_seconds": 0.25}
    (runs / "main" / "analysis" / "steps-sde-dpm-solver++.json").write_text(json.dumps(
        {"sampler": "sde-dpm-solver++", "generations": 3, "rows": {"2": two_steps}}))
    for model, steps in (("segdiff", 2500), ("unet", 6000)):
        log = [{"step": steps, "event": "train", "time": 3600.0},
               {"step": steps, "event": "val", "val_iou": 0.8, "time": 3600.0}]
        (runs / "main" / model).mkdir(parents=True)
        (runs / "main" / model / "log.jsonl").write_text("\n".join(map(json.dumps, log)) + "\n")
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    (runs / "main" / "run.json").write_text(json.dumps({"minutes": 60, "models": ["segdiff", "unet"], "alone": True}))
    out.write_text("# Results\n\n<!-- MONUSEG: written by experiments/against_unet.py report -->\nold\n<!-- /MONUSEG -->\n")
    result = _script("against_unet.py", "--dataset", "vaihingen", "--runs", str(runs), "report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "<!-- /MONUSEG -->" in page and "\nold\n" in page  # the other section is left alone
    assert page.count("## Vaihingen: where diffusion earns its cost") == 1 and "| scale |" not in page
    assert "| SegDiff `vaihingen-cpu`, K = 3 | 80.00 | 70.00 | 0.0100 |" in page
    assert "| paper, SegDiff (256 px, GPU) | 95.14 | 91.12 | |" in page and "paper, U-Net" not in page
    assert "against_unet.py --dataset vaihingen analyse --data DATA --name main" in page
    # The pair trained alone (run.json says so): the page says how, and gives the command that does it.
    assert "60 minutes one after the other, each alone on 2 threads" in page and "not the first section's" not in page
    assert "against_unet.py --dataset vaihingen run --data DATA --name main --minutes 60 --alone`" in page
    assert "--ensemble runs/vaihingen-unet" in page and "--score-size 256" in page
    # The preset's default (2 steps of SDE-DPM-Solver++) costs 4.0 s against the U-Net's 0.25 s timed
    # in the same steps pass (not the analysis pass's 0.5 s).
    assert "At the preset's default, 2 steps of sde-dpm-solver++ (K = 3, the steps pass, also on 2 threads): " \
           "4.0 s against the U-Net's 0.250 s timed in that pass, 16x, for IoU 70.00 against the U-Net's 60.00." in page
    assert (tmp_path / "docs" / "figures" / "vaihingen" / "val-iou.png").is_file()


def _write_pair(run: Path, summary: dict, steps: dict, passes: dict, alone: bool) -> None:
    """A run folder of the pair as `run` and `analyse` leave it: run.json, each model's log, the
    analysis and the passes' files (file name -> content)."""
    (run / "analysis").mkdir(parents=True)
    (run / "analysis" / "analysis.json").write_text(json.dumps(summary))
    for name, content in passes.items():
        (run / "analysis" / name).write_text(json.dumps(content))
    (run / "run.json").write_text(json.dumps({"minutes": 60, "models": ["segdiff", "unet"], "alone": alone}))
    for model, n in steps.items():
        log = [{"step": n, "event": "train", "time": 3600.0}, {"step": n, "event": "val", "val_iou": 0.6, "time": 3600.0}]
        (run / model).mkdir(parents=True)
        (run / model / "log.jsonl").write_text("\n".join(map(json.dumps, log)) + "\n")


def test_the_section_of_one_run_sums_up_the_pairs_other_run_and_the_passes_made_only_there(tmp_path):
    script = _against_unet_script()
    runs = tmp_path / "runs"
    (runs).mkdir()
    (runs / "ceiling.json").write_text(json.dumps({"masks": 30, "rows": {}}))
    summary = script.summarise(_monuseg_rows(), [1, 3], 3)  # SegDiff 70.00 against the U-Net's 60.00
    summary.update({"machine": "a test machine", "threads": 2, "sample": "K=3, sampler ddim (10 steps)",
                    "protocol": "MoNuSeg"})
    # The alone run's analysis sampled at the preset's default (2 steps of SDE-DPM-Solver++): its passes
    # compare with it; its 10-step pass is the reference of the few-steps target.
    alone = {**summary, "sample": "K=3, sampler sde-dpm-solver++ (2 steps)", "sampler": "sde-dpm-solver++",
             "sampling_steps": 2}
    ten = {"f1": 0.8, "iou": 0.72, "ece": 0.02, "iou_per_image": [0.72, 0.62, 0.82], "seconds": 20.0}
    row = {"f1": 0.75, "iou": 0.65, "ece": 0.02, "iou_per_image": [0.65, 0.55, 0.75], "seconds": 5.0}
    # Side by side (main): a ddim pass at 1 and 2 steps and a refinement; alone: a ddim pass at 1 step only.
    _write_pair(runs / "main", summary, {"segdiff": 2500, "unet": 6000}, alone=False, passes={
        "steps-ddim.json": {"sampler": "ddim", "generations": 3, "rows": {"1": row, "2": row}},
        "refine-30-ddim.json": {"sampler": "ddim", "refine": 30, "generations": 3, "rows": {"3": row}}})
    _write_pair(runs / "alone", alone, {"segdiff": 6000, "unet": 16000}, alone=True, passes={
        "steps-ddim.json": {"sampler": "ddim", "generations": 3, "rows": {"1": row}},
        "steps-sde-dpm-solver++.json": {"sampler": "sde-dpm-solver++", "generations": 3, "rows": {"10": ten}}})
    out = tmp_path / "results.md"
    result = _script("against_unet.py", "--runs", str(runs), "report", "--name", "alone", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "60 minutes one after the other, each alone on 2 threads" in page and "SegDiff made 6000 steps" in page
    assert ("The same pair trained 60 minutes side by side, one thread each (`python experiments/against_unet.py run "
            "--data DATA --name main --minutes 60`): SegDiff made 2500 steps, the U-Net 6000; test IoU 70.00 (K = 3) "
            "against 60.00, SegDiff minus the U-Net +10.00 ± 5.77; the ensemble at w = 0.5 72.00.") in page
    # Only the passes the alone run lacks: ddim at 2 steps (5 points below 10 steps on each image) and
    # the refinement (5 points below SegDiff, the better single model, on each image).
    assert ("Passes made on that run only: ddim at 2 steps, IoU 65.00 (-5.00 ± 0.00 against its 10 steps); "
            "refinement from T0 = 30 with 3 steps of ddim, IoU 65.00 (-5.00 ± 0.00 against its better single "
            "model).") in page
    assert "ddim at 1 steps" not in page
    assert "**Other sampling steps**" in page and "| IoU minus 2 steps (± s.e.) |" in page
    assert "| sde-dpm-solver++ | 10 | 80.00 | 72.00 | +2.00 ± 0.00 |" in page
    assert "That pass sampled at the preset's default, 2 steps of sde-dpm-solver++." in page
    # Against 10 steps: ddim at 1 step is 7 points below, the 2-step analysis 2 points below.
    assert "3 steps or fewer: missed; the closest: sde-dpm-solver++, 2 steps (-2.00)." in page
    # The main run's own section does not compare it with itself; a missing other run is skipped.
    for name, compare in (("main", "main"), ("alone", "nothing")):
        assert _script("against_unet.py", "--runs", str(runs), "report", "--name", name, "--compare", compare,
                       "--out", str(out)).returncode == 0
        assert "The same pair trained" not in out.read_text()


def test_a_steps_pass_keeps_the_rows_of_an_earlier_pass_only_of_the_same_setting():
    merge = _against_unet_script().merge_steps
    earlier = {"generations": 30, "images": 14, "rows": {"10": {"iou": 0.6}, "2": {"iou": 0.5}}}  # no seed: 0
    now = {"generations": 30, "images": 14, "seed": 0, "rows": {"2": {"iou": 0.55}, "1": {"iou": 0.4}}}
    merged = merge(earlier, now)
    assert list(merged["rows"]) == ["1", "2", "10"] and merged["rows"]["2"] == {"iou": 0.55}  # the new pass wins
    for other in ({"seed": 1}, {"generations": 9}, {"images": 3}):
        assert merge(earlier, {**now, **other})["rows"] == now["rows"]


@pytest.mark.parametrize("dataset", ["monuseg", "vaihingen"])
def test_against_unet_runner_commands_parse_with_the_segdiff_command_line(tmp_path, dataset):
    import argparse
    import shlex

    from segdiff.cli import build_parser

    script = _against_unet_script()
    args = argparse.Namespace(data=str(tmp_path / "my data"), runs=str(tmp_path / "runs"), name="main", minutes=60.0,
                              benchmark=script.BENCHMARKS[dataset], models=["segdiff", "unet"], alone=False)
    parser = build_parser()
    lines = script.commands(args)
    assert set(lines) == {"segdiff", "unet"}
    for line in lines.values():
        words = shlex.split(line)
        assert words[0] == "OMP_NUM_THREADS=1" and words[1] == "segdiff" and f"{dataset}-cpu" in words
        parsed = parser.parse_args(words[2:])
        assert parsed.time_budget == 60.0
    # Alone, each model takes both cores; one model a call.
    alone = script.commands(argparse.Namespace(**{**vars(args), "models": ["unet"], "alone": True}))
    assert list(alone) == ["unet"] and alone["unet"].startswith("OMP_NUM_THREADS=2 segdiff baseline")
    if dataset == "vaihingen":  # the preset stops at 7000 steps, which the U-Net would reach before the hour
        assert "--steps 100000" in lines["unet"]


# --- experiments/own_data.py ----------------------------------------------------------------------
def _own_data_script():
    return _load_script("own_data.py")


def _write_own_data_run(run: Path, iou: float, val_ious: list[float], steps: dict[int, float] | None = None,
                        test_steps: dict[int, float] | None = None) -> None:
    """A run folder as `own_data.py run` leaves it: log.jsonl, test/summary.json, and for SegDiff the
    validation scores at each sampling step (val-steps-N/summary.json; on a tuning task, whose test
    split is a held-out training video, the test scores too: test-steps-N)."""
    run.mkdir(parents=True)
    records = [{"event": "train", "step": 100 * (i + 1), "time": 60.0 * (i + 1)} for i in range(len(val_ious))]
    records += [{"event": "val", "step": 100 * (i + 1), "time": 60.0 * (i + 1), "val_iou": v}
                for i, v in enumerate(val_ious)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "test").mkdir()
    summary = {"machine": "the test machine", "num_generations": 9, "seconds_per_image": 0.5,
               "metrics": {"iou": iou, "f1": iou + 0.1}}
    (run / "test" / "summary.json").write_text(json.dumps(summary))
    for split, scores in (("val", steps), ("test", test_steps)):
        for n, split_iou in (scores or {}).items():
            (run / f"{split}-steps-{n}").mkdir()
            (run / f"{split}-steps-{n}" / "summary.json").write_text(json.dumps(
                {**summary, "num_steps": n, "score_size": 256, "metrics": {"iou": split_iou}}))


def test_own_data_page_shows_each_tasks_gap_and_segdiffs_validation_steps(tmp_path):
    script = _own_data_script()
    runs = tmp_path / "runs"
    _write_own_data_run(runs / "car-20m" / "segdiff", 0.40, [0.3, 0.5], steps={1: 0.41, 2: 0.43, 10: 0.385})
    _write_own_data_run(runs / "car-20m" / "unet", 0.45, [0.6, 0.7])
    _write_own_data_run(runs / "road-20m" / "segdiff", 0.80, [0.8, 0.9], steps={2: 0.9})
    _write_own_data_run(runs / "road-20m" / "unet", 0.84, [0.9, 0.95])
    # a tuning task: video 0006R0 held out as the test split, scored at each sampling step
    _write_own_data_run(runs / "car-0006R0-20m" / "segdiff", 0.5, [0.6], steps={1: 0.7, 2: 0.72, 10: 0.69},
                        test_steps={1: 0.52, 2: 0.5, 10: 0.45})
    _write_own_data_run(runs / "car-0006R0-20m" / "unet", 0.55, [0.7])
    # car again at seed 1 (`run --seed 1`): the seed table puts it beside seed 0's runs
    # and a variant of SegDiff at both seeds: its gap to the U-Net too
    for folder, model, iou in (("car-20m", "segdiff", 0.4), ("car-20m", "unet", 0.45),
                               ("car-20m-seed1", "segdiff", 0.43), ("car-20m-seed1", "unet", 0.46),
                               ("car-20m", "segdiff-batch-dice", 0.38), ("car-20m-seed1", "segdiff-batch-dice", 0.41)):
        if folder.endswith("seed1") or model == "segdiff-batch-dice":
            _write_own_data_run(runs / folder / model, iou, [0.5])
        (runs / folder / model / "config.json").write_text(json.dumps({"train": {"seed": int(folder.endswith("1"))}}))
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\n{script.BEGIN}\nSTALE SECTION\n{script.END}\n\n## Kept\n")
    # short screening runs (RUNS/screens/car-8m/NAME), each with a post-hoc evaluation (val/) but one SegDiff run
    screens = runs / "screens" / "car-8m"
    for name, kind, evaluation in (("screen-a", "segdiff", (9, 2, 0.31)), ("screen-b", "unet", (1, 0, 0.5)),
                                   ("screen-c", "segdiff", None)):
        _write_own_data_run(screens / name, 0.3, [0.2, 0.25])
        (screens / name / "config.json").write_text(json.dumps(
            {"train": {"time_budget_min": 8}, "model": {"kind": kind}, "sample": {"num_sampling_steps": 10},
             "data": {"root": "/tasks/camvid-car"}}))
        if evaluation is not None:
            k, steps, iou = evaluation
            (screens / name / "val").mkdir()
            (screens / name / "val" / "summary.json").write_text(json.dumps(
                {"num_generations": k, "num_steps": steps, "score_size": 256, "metrics": {"iou": iou}}))
    # a `run`'s SegDiff beside them: its common evaluation is its validation at its own sampling steps (10 here)
    run_folder = runs / "car-20m" / "segdiff-run"
    _write_own_data_run(run_folder, 0.3, [0.2, 0.35], steps={2: 0.99, 10: 0.33})
    (run_folder / "config.json").write_text(json.dumps(
        {"train": {"time_budget_min": 20}, "model": {"kind": "segdiff"}, "sample": {"num_sampling_steps": 10},
         "data": {"root": "/tasks/camvid-car"}}))
    # a screen on a tuning task: its held-out video's score (test/) beside the validation's
    tuned = runs / "screens" / "car-0006R0-20m" / "lr"
    _write_own_data_run(tuned, 0.47, [0.6, 0.65])
    (tuned / "config.json").write_text(json.dumps(
        {"train": {"time_budget_min": 20}, "model": {"kind": "segdiff"}, "sample": {"num_sampling_steps": 2},
         "data": {"root": "/tasks/camvid-car-0006R0"}}))
    (tuned / "val").mkdir()
    (tuned / "val" / "summary.json").write_text(json.dumps(
        {"num_generations": 9, "num_steps": 2, "score_size": 256, "metrics": {"iou": 0.66}}))
    result = _script("own_data.py", "report", "--tasks", "car", "road", "pedestrian", "--runs", str(runs),
                     "--models", "segdiff", "unet", "segdiff-batch-dice", "--out", str(page), "--screens", "preset=car-8m/screen-a",
                     "U-Net=car-8m/screen-b", f"variant={screens / 'screen-c'}", f"the run={run_folder}",
                     "lr=car-0006R0-20m/lr")
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    assert "STALE SECTION" not in text and text.endswith("## Kept\n")
    assert "| car | SegDiff `cpu` preset | 20 | 200 | 50.0 | 40.00 | 50.00 | 9 | 0.50 |" in text
    # the gap is the U-Net's test IoU minus SegDiff's, in points, against the target of 3
    assert "car, 20 min: +5.00 (missed); road, 20 min: +4.00 (missed)" in text
    assert "| car | SegDiff `cpu` preset | 20 | 41.00 | 43.00 | 38.50 | 9 |" in text
    assert "| road | SegDiff `cpu` preset | 20 | - | 90.00 | - | 9 |" in text  # the steps a run was scored at
    assert "Not measured yet with this preset: pedestrian (20 min: segdiff, unet)." in text
    assert ("| car | 0006R0 | 20 | 55.00 | SegDiff `cpu` preset | 52.00 | 50.00 | 45.00 | 70.00 | 72.00 | 69.00 |"
            in text)
    assert "| road | 0006R0 |" not in text  # no tuning run of road
    assert "| car | 20 | SegDiff `cpu` preset | 40.00 (seed 0), 43.00 (seed 1) | 41.50 |" in text
    assert "| car | 20 | U-Net baseline | 45.00 (seed 0), 46.00 (seed 1) | 45.50 |" in text
    assert "| car | 20 | U-Net minus SegDiff `cpu` preset, the means | | +4.00 |" in text
    assert "| car | 20 | U-Net minus SegDiff `cpu` preset before, one Dice ratio over the batch, the means | | +6.00 |" in text
    assert "| road | 20 | SegDiff" not in text  # road has one seed only
    assert ("--hold-out 0006R0\n" in text and "run --tasks-dir TASKS --task car-0006R0 --minutes 20\n" in text
            and "run --tasks-dir TASKS --task car --minutes 20 --seed 1\n" in text)  # the commands of those runs
    assert "| preset | car | 8 | 200 | 25.0 | 10 | 31.0 | - |" in text
    assert "| U-Net | car | 8 | 200 | 25.0 | - | 50.0 | - |" in text
    assert "| variant | car | 8 | 200 | 25.0 | 10 | - | - |" in text
    assert "| the run | car | 20 | 200 | 35.0 | 10 | 33.0 | - |" in text  # its test/ is CamVid's test split
    assert "| lr | car-0006R0 | 20 | 200 | 65.0 | 2 | 66.0 | 47.0 |" in text
    assert ("validation split (SegDiff at K = 9, 2 sampling steps, scored at 256 px; K = 9, 10 sampling steps, "
            "scored at 256 px), and on a tuning task on its held-out video") in text
    assert (tmp_path / "figures" / "own-data" / "camvid-car.png").exists()


def test_own_data_splits_an_evaluations_errors_into_false_positives_and_negatives(tmp_path):
    script = _own_data_script()
    # image a: 30 % predicted, 20 % true, 10 % overlap (IoU 0.1 / 0.4); image b: both empty (IoU 1 by the empty rule)
    (tmp_path / "per_image.csv").write_text("name,target_fraction,predicted_fraction,iou\n"
                                            "a,0.2,0.3,0.25\nb,0.0,0.0,1.0\n")
    split = script.error_split(tmp_path)
    assert split["images"] == 2
    assert split["false_positive"] == pytest.approx(0.1) and split["false_negative"] == pytest.approx(0.05)
    assert split["foreground"] == pytest.approx(0.1)
    with pytest.raises(SystemExit, match="per_image.csv: not found"):
        script.error_split(tmp_path / "missing")


def test_own_data_keeps_a_runs_small_result_files_and_not_its_weights(tmp_path):
    script = _own_data_script()
    run, record = tmp_path / "run", tmp_path / "records" / "car-20m" / "segdiff"
    _write_own_data_run(run, 0.4, [0.3], steps={2: 0.43})
    (run / "config.json").write_text("{}")
    (run / "last.safetensors").write_bytes(b"weights")
    (run / "test" / "examples.png").write_bytes(b"picture")
    kept = script.keep(run, record)
    assert sorted(p.relative_to(record).as_posix() for p in kept) == [
        "config.json", "log.jsonl", "test/summary.json", "val-steps-2/summary.json"]
    assert all(p.read_bytes() == (run / p.relative_to(record)).read_bytes() for p in kept)
    assert sorted(p.name for p in record.rglob("*") if p.is_file()) == ["config.json", "log.jsonl", "summary.json",
                                                                       "summary.json"]
    tuning = tmp_path / "tuning"  # a tuning task's run: its test scores at each sampling step are kept too
    _write_own_data_run(tuning, 0.4, [0.3], test_steps={1: 0.45, 2: 0.43})
    assert sorted(p.relative_to(tmp_path / "kept").as_posix() for p in script.keep(tuning, tmp_path / "kept")) == [
        "log.jsonl", "test-steps-1/summary.json", "test-steps-2/summary.json", "test/summary.json"]
    # a later call replaces the records with the run's newer files
    (run / "test" / "summary.json").write_text('{"new": 1}')
    script.keep(run, record)
    assert json.loads((record / "test" / "summary.json").read_text()) == {"new": 1}


def test_own_data_runner_commands_parse_with_the_segdiff_command_line(tmp_path):
    import shlex

    from segdiff.cli import build_parser

    script = _own_data_script()
    parser = build_parser()
    for model in script.MODELS:
        stages = script.stages("car", 20, model, str(tmp_path / "tasks"), tmp_path / "runs")
        assert [name for name, _ in stages][:2] == [f"train-{model}", f"test-{model}"]
        for _, command in stages:
            for part in command.split(" && "):  # the validation-steps stage chains one evaluation per step
                words = shlex.split(part)
                assert words[0] == "OMP_NUM_THREADS=2" and words[1] == "segdiff"
                parser.parse_args(words[2:])
    # a screening run: the variant's overrides reach the training command; its evaluation is at the preset's K and steps
    screen = script.screen_stages("car", 8, "lr", "segdiff", ["train.lr=1e-3"], str(tmp_path / "tasks"),
                                  tmp_path / "runs" / "lr")
    assert list(screen) == ["train-lr", "val-lr"]
    train_args, val_args = (parser.parse_args(shlex.split(command)[2:]) for command in screen.values())
    assert train_args.command == "train" and train_args.set == ["train.lr=1e-3"] and train_args.time_budget == 8
    assert (val_args.split, val_args.generations, val_args.steps) == ("val", 9, 2)
    tuning = script.screen_stages("car-0006R0", 20, "lr", "segdiff", [], "t", tmp_path / "lr")
    assert list(tuning) == ["train-lr", "val-lr", "test-lr"]  # a tuning task's held-out video too
    test_args = parser.parse_args(shlex.split(tuning["test-lr"])[2:])
    assert (test_args.split, test_args.generations, test_args.steps) == ("test", 9, 2)
    assert test_args.out == str(tmp_path / "lr" / "test") and test_args.data == "t/camvid-car-0006R0"
    unet = script.screen_stages("car", 8, "unet", "unet", [], "t", tmp_path / "unet")["train-unet"]
    assert shlex.split(unet)[1:3] == ["segdiff", "baseline"]
    steps = dict(script.stages("car", 20, "segdiff", "t", tmp_path))["val-steps-segdiff"]
    assert [f"--steps {n} " in steps for n in script.VAL_STEPS] == [True] * len(script.VAL_STEPS)
    assert "val-steps-unet" not in dict(script.stages("car", 20, "unet", "t", tmp_path))
    assert "test-steps-segdiff" not in dict(script.stages("car", 20, "segdiff", "t", tmp_path))
    # a tuning task (camvid_tasks.py --hold-out): the held-out video, its test split, is scored at each step too
    tuning = dict(script.stages("car-0006R0", 20, "segdiff", "t", tmp_path))
    assert [f"--split test --steps {n} " in tuning["test-steps-segdiff"] for n in script.VAL_STEPS] == [True] * 3
    assert "t/camvid-car-0006R0" in tuning["train-segdiff"] and script.held_out_video("car") == ""
    seeded = script.stages("car", 20, "unet", "t", tmp_path / "car-20m-seed3", seed=3)[0][1]
    assert parser.parse_args(shlex.split(seeded)[2:]).set == ["train.seed=3"]
    assert script.task_runs(tmp_path, "car", 20, seed=3) == tmp_path / "car-20m-seed3"


# --- experiments/camvid_tasks.py ------------------------------------------------------------------
def _fake_camvid(root: Path) -> Path:
    """A CamVid folder in the SegNet layout: 4x4 frames of three training videos and a test video, each
    label map 0 sky / 8 car / 11 void in fixed places."""
    from PIL import Image

    camvid = root / "camvid"
    labels = np.zeros((4, 4), np.uint8)
    labels[0, :2] = 8  # two car pixels
    labels[3, 3] = 11  # one void pixel
    listings = {"train": ["0001TP_006690", "0016E5_00390"], "val": ["0006R0_f01200", "0006R0_f01230"],
                "test": ["Seq05VD_f00000"]}
    for split, frames in listings.items():
        (camvid / split).mkdir(parents=True)
        (camvid / f"{split}annot").mkdir()
        for frame in frames:
            Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(camvid / split / f"{frame}.png")
            Image.fromarray(labels).save(camvid / f"{split}annot" / f"{frame}.png")
        (camvid / f"{split}.txt").write_text("".join(f"{split}/{f}.png {split}annot/{f}.png\n" for f in frames))
    return camvid


def test_camvid_tasks_hold_out_a_training_video_as_the_test_split(tmp_path):
    from PIL import Image

    script = _load_script("camvid_tasks.py")
    camvid = _fake_camvid(tmp_path)
    shares = script.make_task(camvid, tmp_path / "tasks", "car", hold_out="0006R0")
    root = tmp_path / "tasks" / "camvid-car-0006R0"
    names = {split: sorted(p.name for p in (root / split / "images").iterdir()) for split in ("train", "test")}
    assert names == {"train": ["0001TP_006690.png", "0016E5_00390.png"],
                     "test": ["0006R0_f01200.png", "0006R0_f01230.png"]}  # CamVid's test video left out
    mask = np.array(Image.open(root / "test" / "masks" / "0006R0_f01200.png"))
    assert mask[0, :2].tolist() == [1, 1] and mask[3, 3] == 255 and int(mask.sum()) == 2 + 255
    assert shares == {"train": 2 / 15, "test": 2 / 15}
    plain = script.make_task(camvid, tmp_path / "tasks", "car")  # without it: CamVid's train+val, then its test
    assert sorted(p.name[:6] for p in (tmp_path / "tasks" / "camvid-car" / "test" / "images").iterdir()) == ["Seq05V"]
    assert len(list((tmp_path / "tasks" / "camvid-car" / "train" / "images").iterdir())) == 4 and plain["test"] == 2 / 15
    with pytest.raises(SystemExit, match="Seq05VD: not one of CamVid's training videos"):
        script.make_task(camvid, tmp_path / "tasks", "car", hold_out="Seq05VD")
