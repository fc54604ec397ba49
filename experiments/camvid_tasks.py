"""Binary segmentation tasks cut from CamVid, as segdiff folder datasets: data no preset was tuned on.

    python experiments/camvid_tasks.py --data DATA --out TASKS [--tasks car pedestrian road]

DATA holds `camvid/` (default: $SEGDIFF_DATA): the SegNet split, 480x360 JPEG images and 8-bit
label PNGs (0 Sky, 1 Building, 2 Pole, 3 Road, 4 Pavement, 5 Tree, 6 SignSymbol, 7 Fence, 8 Car,
9 Pedestrian, 10 Bicyclist, 11 void). Each task is one class against the rest, void ignored:

    TASKS/camvid-car/classes.json          {"names": ["rest", "car"], "ignore_index": 255}
    TASKS/camvid-car/train/images/*.jpg    CamVid's train and val images (367 + 101), linked, not copied
    TASKS/camvid-car/train/masks/*.png     0 rest, 1 car, 255 void
    TASKS/camvid-car/test/...              CamVid's 233 test images and their masks

segdiff carves its validation images from train/ (`data.val_fraction`); the test split is CamVid's.
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


def make_task(camvid: Path, out: Path, name: str) -> dict[str, float]:
    """Write one task folder; return the class's share of labelled pixels in each split."""
    class_index = CLASSES.index(name)
    root = out / f"camvid-{name}"
    if root.exists():
        shutil.rmtree(root)
    (root / "classes.json").parent.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"names": ["rest", name], "ignore_index": IGNORE_INDEX}) + "\n")
    shares = {}
    for split, listings in SPLITS.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        positive = labelled = 0
        for listing in listings:
            for image, label in read_pairs(camvid, listing):
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
    args = parser.parse_args()
    camvid = Path(args.data) / "camvid"
    if not (camvid / "train.txt").is_file():
        print(f"{camvid}: no CamVid here (train.txt missing); pass --data or set SEGDIFF_DATA", file=sys.stderr)
        return 2
    for name in args.tasks:
        shares = make_task(camvid, Path(args.out), name)
        print(f"{Path(args.out) / f'camvid-{name}'}: {name} is "
              + ", ".join(f"{100 * v:.1f} % of the labelled {k} pixels" for k, v in shares.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
