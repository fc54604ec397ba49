"""Rerun docs/results.md, "Your own data": the `cpu` preset against the U-Net on data no preset was tuned on.

    python experiments/camvid_tasks.py --data DATA --out TASKS            # the folder datasets
    python experiments/own_data.py run --tasks-dir TASKS --task car --minutes 20
    python experiments/own_data.py run --tasks-dir TASKS --task car --minutes 20 --seed 1   # another training seed
    python experiments/own_data.py run --tasks-dir TASKS --task car-0006R0 --minutes 20     # a tuning task
    python experiments/own_data.py screen --tasks-dir TASKS --name NAME --set KEY=VALUE   # 8 minutes on car
    python experiments/own_data.py screen --tasks-dir TASKS --task car-0006R0 --minutes 20 --name NAME --set ...
    python experiments/own_data.py report --minutes 20   # the section of docs/results.md (car, road, pedestrian)
    python experiments/own_data.py errors RUN/test ...   # false positives and negatives, from per_image.csv
    python experiments/own_data.py compare --segdiff RUN --unet RUN --data TASKS/camvid-road --out PNG

Each model of MODELS trains alone on the machine (2 threads) for the given minutes of wall time, the
same data, input size and pipeline, then is scored on the task's test split at SCORE_SIZE px with the
sampler settings its checkpoint holds (the preset's defaults); a SegDiff run is also scored on the
validation split at each of VAL_STEPS sampling steps, the evidence for the preset's (on a tuning task,
`camvid_tasks.py --hold-out`, also its test split: a training video held out). Every stage is logged to
RUNS/TASK-MINm/logs/STAGE.log and marked done with STAGE.done: an interrupted run continues where it
stopped. `screen` trains one variant (`--set` overrides of the preset, or the U-Net) on a task for a
shorter budget, alone on 2 threads, and scores its last weights on the validation split (on a tuning
task, also on the held-out video) at the preset's K and steps: one common evaluation for every variant.

A run's small result files (RECORD_FILES: its config, log.jsonl and evaluation summaries, never its
weights) are copied to experiments/records/own-data/ when its stages are done, and git keeps them:
run folders live outside git and do not outlast a machine. `report` reads those records and writes
the "Your own data" section of docs/results.md (the text between the OWN_DATA markers) and one
figure per task: the validation IoU of every run against its training minutes. Every number in it
comes from those files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # segdiff's plotting, when run from a checkout without install
sys.path.insert(0, str(ROOT / "experiments"))  # _common, also when a test loads this file

from _common import read_log, run_stages  # noqa: E402
from camvid_tasks import TRAINING_VIDEOS, task_folder, task_name  # noqa: E402

SCORE_SIZE = 256  # as on Vaihingen: models at 64 px, probabilities resized bilinearly to 256 before the threshold
VAL_STEPS = (1, 2, 10)  # sampling steps each SegDiff run is scored at on the validation split (the preset's choice)
# name -> (label in the report, the training command's arguments after `segdiff`)
MODELS: dict[str, tuple[str, str]] = {
    "segdiff": ("SegDiff `cpu` preset", "train --preset cpu"),
    "unet": ("U-Net baseline", "baseline --preset cpu"),
    "segdiff-paper": ("SegDiff, the paper's network, x_0 by MSE (the `cpu` preset of session 17)",
                      "train --preset cpu --set model.body=segdiff --set diffusion.prediction=sample "
                      "--set diffusion.mask_input=x_t"),
    "segdiff-batch-dice": ("SegDiff `cpu` preset before, one Dice ratio over the batch",
                           "train --preset cpu --set train.dice_batch=true --set diffusion.mask_input=x_t"),
    "segdiff-xt": ("SegDiff `cpu` preset before, the network reading x_t",
                   "train --preset cpu --set diffusion.mask_input=x_t"),
}
PAIR = ("segdiff", "unet")  # the preset's SegDiff and its U-Net: the comparison the issue's target is on
BEGIN, END = "<!-- OWN_DATA: written by experiments/own_data.py report -->", "<!-- /OWN_DATA -->"
RECORDS = ROOT / "experiments" / "records" / "own-data"  # what `report` reads; kept in git
# The files of a run folder that its report needs, copied to RECORDS (`keep`); the weights stay behind.
RECORD_FILES = ("config.json", "log.jsonl", "test/summary.json", "val/summary.json",
                *(f"{split}-steps-{n}/summary.json" for split in ("val", "test") for n in VAL_STEPS))


def task_runs(runs_root: Path, task: str, minutes: float, seed: int = 0) -> Path:
    """The folder of one task's runs at one budget (a subfolder per model, and logs/); a training
    seed other than the presets' 0 gets its own folder, TASK-MINm-seedN."""
    return runs_root / (f"{task}-{minutes:g}m-seed{seed}" if seed else f"{task}-{minutes:g}m")


def other_seeds(runs_root: Path, task: str, minutes: float) -> list[int]:
    """The training seeds other than 0 that `run --seed` left folders of (`task_runs`'s TASK-MINm-seedN), in order."""
    return sorted(int(folder.name.rpartition("seed")[2]) for folder in runs_root.glob(f"{task}-{minutes:g}m-seed*"))


def held_out_video(task: str) -> str:
    """The CamVid training video a tuning task tests on (`camvid_tasks.py --hold-out`: car-0006R0 ->
    0006R0), or "" for a task whose test split is CamVid's."""
    video = task.rpartition("-")[2]
    return video if video in TRAINING_VIDEOS else ""


def tuning_splits(task: str) -> tuple[str, ...]:
    """The splits settings are chosen on (a run's sampling steps, a screen's variant): the validation
    split, and on a tuning task (`held_out_video`) its test split too, an unseen video; CamVid's test
    split is never one of them."""
    return ("val", "test") if held_out_video(task) else ("val",)


def is_segdiff(model: str) -> bool:
    """Whether a name of MODELS is SegDiff (the preset or a variant), which samples, rather than the U-Net."""
    return model.startswith("segdiff")


def stages(task: str, minutes: float, model: str, tasks_dir: str, runs: Path, seed: int = 0) -> list[tuple[str, str]]:
    data = shlex.quote(f"{tasks_dir}/{task_folder(task)}")
    run = shlex.quote(str(runs / model))
    evaluate = f"OMP_NUM_THREADS=2 segdiff evaluate {run} --dataset folder --data {data} --score-size {SCORE_SIZE}"
    stages = [
        (f"train-{model}", f"OMP_NUM_THREADS=2 segdiff {MODELS[model][1]} --data {data} --time-budget {minutes:g} "
                           f"--out {run}" + (f" --set train.seed={seed}" if seed else "")),
        (f"test-{model}", f"{evaluate} --split test --out {run}/test"),
    ]
    if is_segdiff(model):  # its sampling steps, chosen on the validation split (the test split unseen)
        for split in tuning_splits(task):
            stages.append((f"{split}-steps-{model}", " && ".join(
                f"{evaluate} --split {split} --steps {n} --out {run}/{split}-steps-{n}" for n in VAL_STEPS)))
    return stages


def steps_table(runs_root: Path, tasks: list[str], minutes: list[float], models: list[str]) -> list[str]:
    """Lines of the table of SegDiff's validation scores at each of VAL_STEPS sampling steps (the
    preset's K), one row per run that has them; the runs' val-steps-N/summary.json."""
    rows = []
    for task in tasks:
        for m in minutes:
            for model in filter(is_segdiff, models):
                paths = {n: task_runs(runs_root, task, m) / model / f"val-steps-{n}" / "summary.json" for n in VAL_STEPS}
                found = {n: json.loads(path.read_text()) for n, path in paths.items() if path.exists()}
                if found:
                    rows.append(f"| {task} | {MODELS[model][0]} | {m:g} | "
                                + " | ".join(f"{100 * found[n]['metrics']['iou']:.2f}" if n in found else "-"
                                             for n in VAL_STEPS)
                                + f" | {next(iter(found.values()))['num_generations']} |")
    if not rows:
        return []
    return [
        (f"SegDiff's sampling steps, on the validation split (IoU at {SCORE_SIZE} px, the preset's K, SDE-DPM-Solver++; "
         "the test split is not used to choose them):"),
        "",
        "| task | model | minutes | " + " | ".join(f"{n} step{'s' * (n > 1)}" for n in VAL_STEPS) + " | K |",
        "|---|---|---:|" + "---:|" * len(VAL_STEPS) + "---:|",
        *rows,
        "",
    ]


def held_out_table(runs_root: Path, tasks: list[str], minutes: list[float], models: list[str]) -> list[str]:
    """Lines of the table of the tuning tasks (TASK-VIDEO, a training video held out as the test
    split) that have been run: the U-Net's IoU on the held-out video, and each SegDiff of `models`'s
    at each of VAL_STEPS sampling steps there and on its validation split (frames of its training videos)."""
    rows = []
    for task, video, m in ((t, v, m) for t in tasks for v in TRAINING_VIDEOS for m in minutes):
        runs = task_runs(runs_root, f"{task}-{video}", m)
        unet = runs / "unet" / "test" / "summary.json"
        if not unet.exists():
            continue
        unet_iou = 100 * json.loads(unet.read_text())["metrics"]["iou"]
        for model in filter(is_segdiff, models):
            found = {(split, n): runs / model / f"{split}-steps-{n}" / "summary.json" for split in ("test", "val")
                     for n in VAL_STEPS}
            if not all(path.exists() for path in found.values()):
                continue
            iou = {key: 100 * json.loads(path.read_text())["metrics"]["iou"] for key, path in found.items()}
            rows.append(f"| {task} | {video} | {m:g} | {unet_iou:.2f} | {MODELS[model][0]} | "
                        + " | ".join(f"{iou['test', n]:.2f}" for n in VAL_STEPS) + " | "
                        + " | ".join(f"{iou['val', n]:.2f}" for n in VAL_STEPS) + " |")
    if not rows:
        return []
    steps = [f"{n} step{'s' * (n > 1)}" for n in VAL_STEPS]
    return [
        ("The validation split holds frames of the training videos, while most of the test split is a video "
         "training never sees. To choose settings on an unseen video without the test split, a tuning task "
         "holds one training video out as its test split (`camvid_tasks.py --hold-out VIDEO`) and trains on "
         "the other two. mIoU on the held-out video of the U-Net and of SegDiff at each number "
         "of sampling steps, and SegDiff's on its validation split (frames of the two training videos), at "
         f"{SCORE_SIZE} px, SegDiff at the preset's K:"),
        "",
        "| task | held-out video | minutes | U-Net | SegDiff | " + " | ".join(f"SegDiff, {s}" for s in steps) + " | "
        + " | ".join(f"SegDiff on validation, {s}" for s in steps) + " |",
        "|---|---|---:|---:|---|" + "---:|" * 2 * len(VAL_STEPS),
        *rows,
        "",
    ]


def seed_table(runs_root: Path, tasks: list[str], minutes: list[float], models: list[str]) -> list[str]:
    """Lines of the table of test mIoU over training seeds, for each task and budget that has runs at
    another seed (`run --seed N`: TASK-MINm-seedN beside the seed-0 TASK-MINm): each of `models`'s
    score per seed (those run at more than one seed), their mean, and the gap between the U-Net's mean
    and each SegDiff's."""
    rows = []
    for task, m in ((t, m) for t in tasks for m in minutes):
        seeds = other_seeds(runs_root, task, m)
        if not seeds:
            continue
        scores = {}
        for model in models:
            for seed in (0, *seeds):
                summary = task_runs(runs_root, task, m, seed) / model / "test" / "summary.json"
                if summary.exists():
                    scores.setdefault(model, {})[seed] = 100 * json.loads(summary.read_text())["metrics"]["iou"]
        scores = {model: by_seed for model, by_seed in scores.items() if len(by_seed) > 1}
        if "unet" not in scores or len(scores) < 2:
            continue
        means = {model: sum(s.values()) / len(s) for model, s in scores.items()}
        for model, by_seed in scores.items():
            rows.append(f"| {task} | {m:g} | {MODELS[model][0]} | "
                        + ", ".join(f"{v:.2f} (seed {k})" for k, v in sorted(by_seed.items()))
                        + f" | {means[model]:.2f} |")
        rows += [f"| {task} | {m:g} | U-Net minus {MODELS[model][0]}, the means | | {means['unet'] - means[model]:+.2f} |"
                 for model in scores if is_segdiff(model)]
    if not rows:
        return []
    return [
        "Test mIoU over training seeds (`own_data.py run --seed N`; the runs above are seed 0):",
        "",
        "| task | minutes | model | test mIoU per seed | mean |",
        "|---|---:|---|---|---:|",
        *rows,
        "",
    ]


def more_commands(runs_root: Path, tasks: list[str], minutes: list[float]) -> list[str]:
    """The commands of the seed and tuning-task runs found under `runs_root` for these tasks and budgets."""
    lines, videos = [], []
    for task, m in ((t, m) for t in tasks for m in minutes):
        for seed in other_seeds(runs_root, task, m):
            lines.append(f"python experiments/own_data.py run --tasks-dir TASKS --task {task} --minutes {m:g} "
                         f"--seed {seed}")
        for video in TRAINING_VIDEOS:
            if task_runs(runs_root, f"{task}-{video}", m).is_dir():
                videos.append(video)
                lines.append(f"python experiments/own_data.py run --tasks-dir TASKS --task {task}-{video} --minutes {m:g}")
    return [f"python experiments/camvid_tasks.py --data DATA --out TASKS --hold-out {v}"
            for v in dict.fromkeys(videos)] + lines


def keep(run: Path, record: Path) -> list[Path]:
    """Copy the RECORD_FILES that `run` holds to the same places under `record` (replacing what was
    there) and return the copies."""
    kept = []
    for name in RECORD_FILES:
        if (run / name).exists():
            (record / name).parent.mkdir(parents=True, exist_ok=True)
            kept.append(Path(shutil.copyfile(run / name, record / name)))
    return kept


def run(args: argparse.Namespace) -> int:
    runs = task_runs(Path(args.runs), args.task, args.minutes, args.seed)
    logs = runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed = run_stages(logs, {name: command for model in args.models for name, command
                               in stages(args.task, args.minutes, model, args.tasks_dir, runs, args.seed)},
                        alone=True)
    for model in args.models:  # what finished is kept, also when a later stage failed
        keep(runs / model, task_runs(Path(args.records), args.task, args.minutes, args.seed) / model)
    return failed


def screen_stages(task: str, minutes: float, name: str, kind: str, sets: list[str], tasks_dir: str,
                  run: Path) -> dict[str, str]:
    """A screening run's stages: train `kind` ("segdiff" with the preset's settings and `sets`
    overrides, or "unet") alone on 2 threads, then score the last weights on the validation split at
    the `cpu` preset's K and sampling steps (for every variant the same), at SCORE_SIZE px; on a
    tuning task (`held_out_video`) on its test split, the held-out video, as well."""
    from segdiff.config import ExperimentConfig

    sample = ExperimentConfig.cpu().sample
    data, out = shlex.quote(f"{tasks_dir}/{task_folder(task)}"), shlex.quote(str(run))
    command = "train" if kind == "segdiff" else "baseline"
    overrides = "".join(f" --set {shlex.quote(item)}" for item in sets)
    stages = {f"train-{name}": (f"OMP_NUM_THREADS=2 segdiff {command} --preset cpu --data {data} "
                                f"--time-budget {minutes:g} --out {out}{overrides}")}
    for split in tuning_splits(task):
        stages[f"{split}-{name}"] = (f"OMP_NUM_THREADS=2 segdiff evaluate {out} --dataset folder --data {data} "
                                     f"--split {split} --score-size {SCORE_SIZE} --generations "
                                     f"{sample.num_generations} --steps {sample.num_sampling_steps} --out {out}/{split}")
    return stages


def screen(args: argparse.Namespace) -> int:
    runs = task_runs(Path(args.runs) / "screens", args.task, args.minutes)
    logs = runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed = run_stages(logs, screen_stages(args.task, args.minutes, args.name, args.kind, args.set,
                                            args.tasks_dir, runs / args.name), alone=True)
    keep(runs / args.name, task_runs(Path(args.records) / "screens", args.task, args.minutes) / args.name)
    return failed


def per_image_rows(evaluation: Path) -> list[dict[str, str]]:
    """The rows of an evaluation folder's per_image.csv (`segdiff evaluate`), one per image."""
    import csv

    path = evaluation / "per_image.csv"
    if not path.exists():
        raise SystemExit(f"{path}: not found; pass an evaluation folder (`segdiff evaluate ... --out FOLDER`)")
    rows = list(csv.DictReader(path.open()))
    if not rows:
        raise SystemExit(f"{path}: no images")
    return rows


def error_split(evaluation: Path) -> dict[str, float]:
    """Where the errors of an evaluation (its per_image.csv) lie: the mean over images of the share of
    labelled pixels that are false positives and false negatives, and of the true foreground. Exact
    from each row's IoU J, predicted share A and true share B: the overlap is J (A + B) / (1 + J)."""
    rows = per_image_rows(evaluation)
    false_pos = false_neg = truth = 0.0
    for row in rows:
        a, b, j = float(row["predicted_fraction"]), float(row["target_fraction"]), float(row["iou"])
        overlap = j * (a + b) / (1 + j)
        false_pos, false_neg, truth = false_pos + a - overlap, false_neg + b - overlap, truth + b
    return {"images": len(rows), "foreground": truth / len(rows), "false_positive": false_pos / len(rows),
            "false_negative": false_neg / len(rows)}


def errors(args: argparse.Namespace) -> int:
    print("| evaluation | images | foreground | false positives | false negatives | FP / FN |")
    print("|---|---:|---:|---:|---:|---:|")
    for folder in args.evaluations:
        e = error_split(Path(folder))
        print(f"| {folder} | {e['images']} | {100 * e['foreground']:.2f} % | {100 * e['false_positive']:.2f} % | "
              f"{100 * e['false_negative']:.2f} % | {e['false_positive'] / max(e['false_negative'], 1e-12):.2f} |")
    return 0


def compare(args: argparse.Namespace) -> int:
    """Picture the test images where the U-Net's IoU most exceeds SegDiff's (their runs' test/
    per_image.csv): the image, the truth, SegDiff's probability (the preset's K, at its sampling steps
    and at 1 step) and the U-Net's, at the models' input size."""
    from dataclasses import replace

    import torch
    from segdiff.data.folder import FolderDataset
    from segdiff.evaluation import panels
    from segdiff.models import load_model
    from segdiff.plots import plot_examples

    runs = {"segdiff": Path(args.segdiff), "unet": Path(args.unet)}
    iou = {model: {row["name"]: float(row["iou"]) for row in per_image_rows(run / "test")}
           for model, run in runs.items()}
    if iou["segdiff"].keys() != iou["unet"].keys():
        raise SystemExit(f"{runs['segdiff']}/test and {runs['unet']}/test scored different images")
    worst = sorted(iou["segdiff"], key=lambda name: (iou["segdiff"][name] - iou["unet"][name], name))[:args.images]
    segdiff, unet = load_model(runs["segdiff"]), load_model(runs["unet"])
    dataset = FolderDataset(args.data, "test", segdiff.config.model.image_size)
    sample = segdiff.config.sample
    settings = {f"SegDiff, {sample.num_sampling_steps} steps": sample,
                "SegDiff, 1 step": replace(sample, num_sampling_steps=1)}
    rows = []
    for name in worst:
        image, mask = dataset[dataset.names.index(name)]
        pictures = []
        for title, setting in settings.items():
            seeds = list(range(segdiff.num_generations(setting)))
            with torch.no_grad():
                generations = segdiff.generations(image[None], seeds, setting)[0, :, 0]  # (K, H, W)
            pictures.append((title, panels(image, mask[0], generations.mean(0), generations.std(0))))
        with torch.no_grad():
            probability = unet.generations(image[None], [0], unet.config.sample)[0, 0, 0]
        pictures.append(("U-Net", panels(image, mask[0], probability, torch.zeros_like(probability))))
        rows.append((f"{name}: SegDiff {100 * iou['segdiff'][name]:.1f}, U-Net {100 * iou['unet'][name]:.1f}",
                     [*pictures[0][1][:2], *((title, shown[2][1]) for title, shown in pictures)]))
    plot_examples(args.out, rows, heading="Where the U-Net beats SegDiff most, test IoU",
                  title=f"{Path(args.data).name}, SegDiff K = {sample.num_generations}")
    print(f"wrote {args.out}")
    return 0


def gap_lines(scores: dict) -> list[str]:
    """The issue's target, SegDiff within 3 test-mIoU points of the U-Net, checked per task and budget."""
    gaps = [(task, minutes, 100 * (scores[(task, minutes, "unet")] - scores[(task, minutes, "segdiff")]))
            for (task, minutes, model) in scores if model == "segdiff" and (task, minutes, "unet") in scores]
    if not gaps:
        return []
    return ["U-Net minus SegDiff, test mIoU points (the target is at most 3): "
            + "; ".join(f"{task}, {minutes:g} min: {gap:+.2f} ({'met' if gap <= 3 else 'missed'})"
                        for task, minutes, gap in gaps) + ".", ""]


def missing_lines(tasks: list[str], minutes: list[float], models: list[str], scores: dict) -> list[str]:
    """A line naming each task and budget asked for whose `models` (the preset's pair) have not all
    been tested yet."""
    missing = [f"{task} ({m:g} min: {', '.join(model for model in models if (task, m, model) not in scores)})"
               for task in tasks for m in minutes if any((task, m, model) not in scores for model in models)]
    return [f"Not measured yet with this preset: {'; '.join(missing)}.", ""] if missing else []


def screening_table(screens: list[str], root: Path) -> list[str]:
    """Lines of the short screening runs' table (LABEL=FOLDER each, FOLDER under `root` unless
    absolute: the records `screen` keeps): steps and validation IoU at the end from their log.jsonl
    (each run's own validation: K = train.val_generations at its sampling steps), and, where
    FOLDER/val/summary.json exists (for a `run`'s SegDiff, FOLDER/val-steps-N at its N sampling
    steps), the validation IoU of one common post-hoc evaluation
    (`segdiff evaluate RUN --split val ...`), so that runs validated at different sampling settings
    compare on one footing; for a run on a tuning task, the same evaluation on its held-out video
    (FOLDER/test/summary.json). The task is that of the folder the run trained on (`camvid_tasks.task_name`)."""
    if not screens:
        return []
    rows, common = [], set()
    for item in screens:
        label, _, name = item.rpartition("=")
        folder = root / name
        steps, vals = read_log(folder)
        config = json.loads((folder / "config.json").read_text())
        segdiff = config["model"]["kind"] == "segdiff"
        evaluated = folder / "val" / "summary.json"
        if not evaluated.exists() and segdiff:  # a `run`'s SegDiff: its validation at its own sampling steps
            evaluated = folder / f"val-steps-{config['sample']['num_sampling_steps']}" / "summary.json"
        post_hoc = "-"
        if evaluated.exists():
            summary = json.loads(evaluated.read_text())
            post_hoc = f"{100 * summary['metrics']['iou']:.1f}"
            if segdiff:  # a U-Net's evaluation is its one pass
                common.add((summary["num_generations"], summary["num_steps"], summary["score_size"]))
        task = task_name(Path(config["data"]["root"]).name)
        held_out = folder / "test" / "summary.json"
        held_out = (f"{100 * json.loads(held_out.read_text())['metrics']['iou']:.1f}"
                    if held_out_video(task) and held_out.exists() else "-")
        rows.append(f"| {label} | {task} | {config['train']['time_budget_min']:g} | {steps[-1]['step']} | "
                    f"{100 * vals[-1]['val_iou']:.1f} | "
                    f"{config['sample']['num_sampling_steps'] if segdiff else '-'} | "
                    f"{post_hoc} | {held_out} |")
    setting = ("SegDiff at " + "; ".join(f"K = {k}, {n} sampling steps, scored at {size} px"
                                         for k, n, size in sorted(common)) if common else "none of SegDiff")
    return [
        ("What was tried, each run alone on 2 threads (`python experiments/own_data.py screen`; a screen is set "
         "against the preset's run of the same task and minutes): steps and validation IoU at the last step from "
         "the runs' log.jsonl (SegDiff's own validation at K = 3), and one common evaluation of the last weights "
         f"on the validation split ({setting}), and on a tuning task on its held-out video as well."),
        "",
        ("| run | task | minutes | steps | val IoU at the end | its sampling steps | val IoU, common evaluation "
         "| held-out video IoU, common evaluation |"),
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def report(args: argparse.Namespace) -> int:
    from segdiff.io import write_section
    from segdiff.plots import plot_training_curves

    runs_root, page = Path(args.runs), Path(args.out)
    figures = page.parent / "figures" / "own-data"
    figures.mkdir(parents=True, exist_ok=True)
    rows, pictures, machine, scores = [], [], None, {}
    for task in args.tasks:
        curves = {}
        for minutes in args.minutes:
            runs = task_runs(runs_root, task, minutes)
            for model in args.models:
                summary_path = runs / model / "test" / "summary.json"
                if not summary_path.exists():
                    continue
                summary = json.loads(summary_path.read_text())
                machine = machine or summary["machine"]
                steps, vals = read_log(runs / model)
                curves[f"{MODELS[model][0]}, {minutes:g} min"] = ([v["time"] / 60 for v in vals],
                                                                   [v["val_iou"] for v in vals])
                m = summary["metrics"]
                scores[(task, minutes, model)] = m["iou"]
                rows.append(f"| {task} | {MODELS[model][0]} | {minutes:g} | {steps[-1]['step']} | "
                            f"{100 * vals[-1]['val_iou']:.1f} | {100 * m['iou']:.2f} | {100 * m['f1']:.2f} | "
                            f"{summary['num_generations']} | {summary['seconds_per_image']:.2f} |")
        if curves:
            figure = figures / f"camvid-{task}.png"
            plot_training_curves(figure, curves, title=f"CamVid {task} against the rest, void ignored")
            pictures.append(f"![validation IoU over time, {task}](figures/own-data/{figure.name})")
    if not rows:
        sys.exit(f"no test summaries under {runs_root}: run `python experiments/own_data.py run` first")
    section = [
        BEGIN,
        "## Your own data",
        "",
        ("Binary tasks cut from CamVid, a dataset no preset was tuned on: one class against the rest, void "
         "pixels ignored in training and scoring (`python experiments/camvid_tasks.py`). Train: CamVid's train "
         "and val images (468, of which segdiff holds 10 % out for validation); test: its 233 test images, scored "
         f"at {SCORE_SIZE} px. Both models use the `cpu` preset (64 px input, the same data pipeline; SegDiff's "
         "denoiser is the U-Net's network, `model.body=basicunet`, reading the posterior mean of the mask "
         "and predicting x_0's logits) and train "
         f"alone for the same wall time on {machine}; SegDiff is scored at the preset's K and steps. Written by "
         "`python experiments/own_data.py report` from the runs' logs and `summary.json`."),
        "",
        "| task | model | minutes | steps | val IoU at the end | test mIoU | test F1 | K | test s/image |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *gap_lines(scores),
        *missing_lines(args.tasks, args.minutes, [m for m in args.models if m in PAIR], scores),
        *[line for picture in pictures for line in (picture, "")],
        *steps_table(runs_root, args.tasks, args.minutes, args.models),
        *seed_table(runs_root, args.tasks, args.minutes, args.models),
        *held_out_table(runs_root, args.tasks, args.minutes, args.models),
        *screening_table(args.screens, runs_root / "screens"),
        "The recipe, for a folder of your own (`images/`, `masks/`, and a `classes.yaml` if masks have void):",
        "",
        "```",
        "segdiff train --preset cpu --data MY_DATA --out runs/mine            # 20 minutes; --time-budget 60 for longer",
        "segdiff baseline --preset cpu --data MY_DATA --out runs/mine-unet    # the U-Net, the same budget",
        f"segdiff evaluate runs/mine --dataset folder --data MY_TEST --split test --score-size {SCORE_SIZE}",
        "```",
        "",
        "Commands of these runs (TASKS is where `camvid_tasks.py` wrote the folders):",
        "",
        "```",
        "python experiments/camvid_tasks.py --data DATA --out TASKS",
        *(f"python experiments/own_data.py run --tasks-dir TASKS --task {t} --minutes {m:g}"
          for t in args.tasks for m in args.minutes),
        *more_commands(runs_root, args.tasks, args.minutes),
        "```",
        END,
    ]
    write_section(page, BEGIN, END, section)
    print(f"wrote {page}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and test the models on one task")
    p.add_argument("--tasks-dir", required=True, help="the folder camvid_tasks.py wrote")
    p.add_argument("--task", required=True)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--models", nargs="+", default=list(PAIR), choices=sorted(MODELS))
    p.add_argument("--seed", type=int, default=0, help="the training seed (train.seed; folder TASK-MINm-seedN "
                                                       "unless 0, the presets')")
    p.add_argument("--runs", default="runs/own-data", help="where the run folders (with weights) go")
    p.add_argument("--records", default=str(RECORDS), help="where their RECORD_FILES are kept")
    p.set_defaults(func=run)
    p = sub.add_parser("screen", help="train one variant for a short budget and score it on the validation split")
    p.add_argument("--tasks-dir", required=True, help="the folder camvid_tasks.py wrote")
    p.add_argument("--task", default="car")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--name", required=True, help="the run's folder name")
    p.add_argument("--kind", choices=PAIR, default="segdiff")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override of the preset")
    p.add_argument("--runs", default="runs/own-data", help="the run folder goes to RUNS/screens/TASK-MINm/NAME")
    p.add_argument("--records", default=str(RECORDS), help="its RECORD_FILES to RECORDS/screens/TASK-MINm/NAME")
    p.set_defaults(func=screen)
    p = sub.add_parser("errors", help="split evaluations' errors into false positives and false negatives")
    p.add_argument("evaluations", nargs="+", help="evaluation folders (with per_image.csv), e.g. RUN/test")
    p.set_defaults(func=errors)
    p = sub.add_parser("compare", help="picture the test images where the U-Net beats SegDiff most")
    p.add_argument("--segdiff", required=True, help="SegDiff's run folder, with test/ from `run`")
    p.add_argument("--unet", required=True, help="the U-Net's run folder, with test/")
    p.add_argument("--data", required=True, help="the task folder both were tested on")
    p.add_argument("--images", type=int, default=3, help="how many images")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.set_defaults(func=compare)
    p = sub.add_parser("report", help="write the 'Your own data' section of docs/results.md")
    p.add_argument("--tasks", nargs="+", default=["car", "road", "pedestrian"])
    p.add_argument("--minutes", nargs="+", type=float, default=[20.0])
    p.add_argument("--models", nargs="+", default=list(PAIR), choices=sorted(MODELS))
    p.add_argument("--runs", default=str(RECORDS), help="the kept records (or run folders) to read")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--screens", nargs="*", default=[], metavar="LABEL=FOLDER",
                   help="screening runs to tabulate, FOLDER under RUNS/screens (e.g. car-8m/preset)")
    p.set_defaults(func=report)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
