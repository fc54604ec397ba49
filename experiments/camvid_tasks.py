"""Binary segmentation tasks cut from CamVid, as segdiff folder datasets: data no preset was tuned on.

    python experiments/camvid_tasks.py --data DATA --out TASKS [--tasks car pedestrian road] [--hold-out VIDEO]

DATA holds `camvid/` (default: $SEGDIFF_DATA): the SegNet split, 480x360 JPEG images and 8-bit
label PNGs (0 Sky, 1 Building, 2 Pole, 3 Road, 4 Pavement, 5 Tree, 6 SignSymbol, 7 Fence, 8 Car,
9 Pedestrian, 10 Bicyclist, 11 void). Each task is one class against the rest, void ignored:

    TASKS/camvid-car/classes.json          {"names": ["rest", "car"], "ignore_index": 255}
    TASKS/camvid-car/train/images/*.jpg    CamVid's train and val images (367 + 101), linked, not copied
    TASKS/camvid-car/train/masks/*.png     0 rest, 1 car, 255 void
    TASKS/camvid-car/test/...              CamVid's 233 test images and their masks

segdiff carves its validation images from train/ (`data.val_fraction`); the test split is CamVid's.
Those validation images are frames of the training videos, often a second from a training frame, while
most of the test split is a video training never sees (Seq05VD), so validation rewards memory more than
the test split does. `--hold-out VIDEO` (0001TP, 0006R0 or 0016E5) writes a tuning task instead,
TASKS/camvid-car-VIDEO: train/ is CamVid's train and val images less that video's, test/ is that
video's frames, and CamVid's test images are left out, to choose settings on an unseen video without
looking at the test split.
The images are symbolic links to DATA (the shared data is not to be copied or redistributed); only
the masks are new files. Existing task folders are rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist")
VOID = 11  # CamVid's unlabelled pixels
IGNORE_INDEX = 255  # their value in the task masks
DEFAULT_TASKS = ("car", "pedestrian", "road")
SPLITS = {"train": ("train", "val"), "test": ("test",)}  # task split <- CamVid lists
TRAINING_VIDEOS = ("0001TP", "0006R0", "0016E5")  # the videos of CamVid's train and val lists


def video_of(image: Path) -> str:
    """The CamVid video a frame belongs to, from its name: 0006R0_f01200.png -> 0006R0."""
    return image.name.split("_")[0]


def read_pairs(camvid: Path, listing: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of one CamVid list file, e.g. train.txt."""
    pairs = []
    for line in (camvid / f"{listing}.txt").read_text().split("\n"):
        if line.strip():
            image, label = line.split()
            pairs.append((camvid / image, camvid / label))
    if not pairs:
        raise SystemExit(f"{camvid / listing}.txt lists no pairs")
    return pairs


def task_mask(labels: np.ndarray, class_index: int, path: Path) -> np.ndarray:
    """CamVid labels (H, W) -> uint8 task mask: 1 for the class, 0 for the rest, IGNORE_INDEX for void."""
    if labels.ndim != 2 or labels.max() > VOID:
        raise SystemExit(f"{path}: expected single-channel CamVid labels 0..{VOID}, found shape {labels.shape} "
                         f"and maximum {labels.max()}")
    mask = (labels == class_index).astype(np.uint8)
    mask[labels == VOID] = IGNORE_INDEX
    return mask


def task_folder(name: str, hold_out: str = "") -> str:
    """The folder name of a task: camvid-NAME, or camvid-NAME-VIDEO for a tuning task holding VIDEO out."""
    return f"camvid-{name}-{hold_out}" if hold_out else f"camvid-{name}"


def task_name(folder: str) -> str:
    """The task a folder `task_folder` named holds: camvid-car-0006R0 -> car-0006R0."""
    return folder.removeprefix("camvid-")


def task_pairs(camvid: Path, hold_out: str = "") -> dict[str, list[tuple[Path, Path]]]:
    """The (image, label) pairs of each task split: CamVid's lists as SPLITS joins them, or with
    `hold_out`, train = the training lists less that video's frames and test = its frames."""
    pairs = {split: [pair for listing in listings for pair in read_pairs(camvid, listing)]
             for split, listings in SPLITS.items()}
    if not hold_out:
        return pairs
    if hold_out not in TRAINING_VIDEOS:
        raise SystemExit(f"--hold-out {hold_out}: not one of CamVid's training videos {', '.join(TRAINING_VIDEOS)}")
    held = [pair for pair in pairs["train"] if video_of(pair[0]) == hold_out]
    if not held:
        raise SystemExit(f"{camvid}: the train and val lists have no frame of video {hold_out}")
    return {"train": [pair for pair in pairs["train"] if video_of(pair[0]) != hold_out], "test": held}


def make_task(camvid: Path, out: Path, name: str, hold_out: str = "") -> dict[str, float]:
    """Write one task folder (camvid-NAME, or camvid-NAME-VIDEO holding that video out as its test
    split); return the class's share of labelled pixels in each split."""
    class_index = CLASSES.index(name)
    root = out / task_folder(name, hold_out)
    if root.exists():
        shutil.rmtree(root)
    (root / "classes.json").parent.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"names": ["rest", name], "ignore_index": IGNORE_INDEX}) + "\n")
    shares = {}
    for split, pairs in task_pairs(camvid, hold_out).items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        positive = labelled = 0
        for image, label in pairs:
            os.symlink(image.resolve(), root / split / "images" / image.name)
            mask = task_mask(np.array(Image.open(label)), class_index, label)
            Image.fromarray(mask).save(root / split / "masks" / f"{image.stem}.png")
            positive += int((mask == 1).sum())
            labelled += int((mask != IGNORE_INDEX).sum())
        shares[split] = positive / labelled
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("SEGDIFF_DATA", ""), help="folder holding camvid/")
    parser.add_argument("--out", required=True, help="where the task folders go (outside the repository)")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=CLASSES)
    parser.add_argument("--hold-out", default="", metavar="VIDEO",
                        help=f"write tuning tasks camvid-NAME-VIDEO whose test split is this training video "
                             f"({', '.join(TRAINING_VIDEOS)}), trained on the others")
    args = parser.parse_args()
    camvid = Path(args.data) / "camvid"
    if not (camvid / "train.txt").is_file():
        print(f"{camvid}: no CamVid here (train.txt missing); pass --data or set SEGDIFF_DATA", file=sys.stderr)
        return 2
    for name in args.tasks:
        shares = make_task(camvid, Path(args.out), name, args.hold_out)
        print(f"{Path(args.out) / task_folder(name, args.hold_out)}: {name} is "
              + ", ".join(f"{100 * v:.1f} % of the labelled {k} pixels" for k, v in shares.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
