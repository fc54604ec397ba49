"""nnU-Net v2 raw datasets (``DatasetNNN_Name/``) read as they are, and conversion to and from folders.

nnU-Net's raw layout is how much medical and natural-image segmentation data is shared; reading it
directly lets SegDiff train on the very cases nnU-Net is compared on, without a copy. 2D only:

    ROOT/dataset.json                  channel_names, labels, numTraining, file_ending
    ROOT/imagesTr/CASE_0000.png ...    one file per channel index; one file may hold several channels
                                       (nnU-Net reads an RGB PNG as the channels R, G, B)
    ROOT/labelsTr/CASE.png             integer labels, one per pixel
    ROOT/imagesTs/, ROOT/labelsTs/     optional: the test split (it needs its labels to be scored)

- Channels: a case's files, stacked in channel-index order, must hold len(channel_names) channels.
  segdiff models read RGB, so 3 channels, or 1 (replicated to RGB as the folder dataset does).
- Labels: ``{"background": 0, "polyp": 1, "ignore": 2}``. Class values must be 0..C-1 with
  ``background`` at 0 (nnU-Net's rules); the optional label named ``ignore`` (the highest value)
  becomes `labels.IGNORE`, never trained on or scored. Two or more classes (more than two: label
  maps, resized with nearest neighbour); region-based
  labels (lists of values) are refused.
- Layout, names, channel counts and sizes are checked from file headers when the dataset is built;
  label values when a label file is decoded (`NNUNetRaw.verify` decodes everything up front).

`folder_to_nnunet` and `nnunet_to_folder` convert both ways, also from the shell::

    segdiff convert to-nnunet my_data/ nnUNet_raw/ --name Dataset501_Mine
    segdiff convert to-folder nnUNet_raw/Dataset501_Mine/ my_copy/
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

from ..labels import ClassFileError, ClassList, find_class_file, read_class_file
from .augment import FOLDER_AUGMENT, AugmentSpec, augment_pair
from .base import SegmentationDataset, Split, select_split
from .folder import pair_folder
from .reading import (IMAGE_SUFFIXES, DataError, image_to_tensor, labels_to_mask, read_image, read_label_mask,
                      read_mask, read_size, resize_image, resize_labels, resize_mask)

__all__ = ["DATASET_JSON", "Converted", "NNUNetCase", "NNUNetRaw", "NNUNetSpec", "folder_to_nnunet",
           "nnunet_to_folder", "read_cases", "read_case_image", "read_dataset_json"]

DATASET_JSON = "dataset.json"
IGNORE_NAME = "ignore"  # nnU-Net's name for the label never trained on
_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})$")  # CASE_0000: case id, channel index
_DATASET_NAME = re.compile(r"^Dataset\d{3}_\S+$")  # how nnU-Net finds a dataset folder


# ----------------------------------------------------------------------------------------------
# dataset.json


@dataclass(frozen=True)
class NNUNetSpec:
    """What a dataset.json says, checked: the channels, the classes (with the ignore label as the
    ignore index), the number of training cases and the file ending."""

    path: Path
    channel_names: tuple[str, ...]
    classes: ClassList
    num_training: int
    file_ending: str


def _json_error(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def _read_labels(path: Path, labels: object, data: dict) -> ClassList:
    """nnU-Net's `labels` (name -> value) as a ClassList: names ordered by value, "ignore" the ignore index."""
    if not isinstance(labels, dict) or not labels:
        raise _json_error(path, f"'labels' must map label names to integer values, found {labels!r}")
    regions = [name for name, value in labels.items() if isinstance(value, (list, tuple))]
    if regions or "regions_class_order" in data:
        raise _json_error(path, f"region-based labels ({', '.join(regions) or 'regions_class_order'}) are not "
                          "supported: segdiff reads one class per pixel, give each label a single integer value")
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise _json_error(path, f"label {name!r} has the value {value!r}; label values must be integers 0..255 "
                              "(8-bit label files)")
    if labels.get("background") != 0:
        raise _json_error(path, "nnU-Net needs the label 'background' with the value 0, found "
                          f"{labels.get('background', 'none')!r}")
    classes = sorted((value, name) for name, value in labels.items() if name != IGNORE_NAME)
    values = [value for value, _ in classes]
    if values != list(range(len(values))):
        raise _json_error(path, f"label values must be consecutive 0, 1, 2, ... (besides 'ignore'), found "
                          f"{', '.join(map(str, values))}")
    ignore = labels.get(IGNORE_NAME)
    if ignore is not None and ignore <= values[-1]:
        raise _json_error(path, f"the 'ignore' label ({ignore}) must have the highest value, above every class "
                          f"(0..{values[-1]})")
    if len(classes) < 2:
        raise _json_error(path, "at least two labels are needed (background and a class)")
    return ClassList(tuple(name for _, name in classes), ignore)


def read_dataset_json(root: str | Path) -> NNUNetSpec:
    """Read and check ROOT/dataset.json (see the module docstring); raise DataError naming the field."""
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        raise DataError(f"{path}: not found; an nnU-Net raw dataset folder holds dataset.json, imagesTr/ and "
                        "labelsTr/")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _json_error(path, f"cannot read it ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise _json_error(path, "expected a JSON object with channel_names, labels, numTraining, file_ending")
    missing = [k for k in ("channel_names", "labels", "numTraining", "file_ending") if k not in data]
    if missing:
        v1 = (" (this looks like an nnU-Net v1 dataset.json: convert it with nnU-Net v2 first)"
              if "modality" in data else "")
        raise _json_error(path, f"missing key(s) {', '.join(missing)}{v1}")

    channels = data["channel_names"]
    if not isinstance(channels, dict) or set(channels) != {str(i) for i in range(len(channels))}:
        raise _json_error(path, f"'channel_names' must map \"0\", \"1\", ... to names, found {channels!r}")
    names = tuple(str(channels[str(i)]) for i in range(len(channels)))
    if len(names) not in (1, 3):
        raise _json_error(path, f"{len(names)} channels ({', '.join(names)}); segdiff models read RGB images: "
                          "3 channels, or 1 (replicated to RGB)")

    count = data["numTraining"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise _json_error(path, f"'numTraining' must be a count of cases, found {count!r}")
    ending = data["file_ending"]
    if not isinstance(ending, str) or ending.lower() not in IMAGE_SUFFIXES:
        raise _json_error(path, f"file_ending {ending!r}: segdiff reads 2D image files only "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    return NNUNetSpec(path, names, _read_labels(path, data["labels"], data), count, ending)


# ----------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class NNUNetCase:
    """One case: its channel files in channel-index order, the channels each holds, its label file."""

    name: str
    images: tuple[Path, ...]
    channels: tuple[int, ...]
    label: Path


def _file_channels(path: Path) -> int:
    """The channels nnU-Net reads from an image file, from its header: 1 (greyscale) or 3 (RGB)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                bands, what = int(tif.pages[0].samplesperpixel), "samples per pixel"
        else:
            with Image.open(path) as im:
                bands, what = (3 if im.mode == "P" else len(im.getbands())), f"mode {im.mode}"
    except Exception as exc:
        raise DataError(f"{path}: cannot read image header ({type(exc).__name__}: {exc})") from exc
    if bands not in (1, 3):
        raise DataError(f"{path}: {bands} bands ({what}); a channel file must be greyscale or RGB (nnU-Net would "
                        "read an alpha band as a channel of its own: save the image without alpha)")
    return bands


def _list_files(directory: Path, ending: str, spec: NNUNetSpec) -> list[Path]:
    """The visible files of `directory`, each checked to end with dataset.json's file_ending."""
    if not directory.is_dir():
        raise DataError(f"{directory}: folder not found")
    files = [p for p in sorted(directory.iterdir()) if p.is_file() and not p.name.startswith(".")]
    for p in files:
        if not p.name.endswith(ending):
            raise DataError(f"{p}: file ending differs from file_ending {ending!r} in {spec.path}; every file "
                            f"in {directory.name}/ must end with it")
    return files


def read_cases(root: str | Path, spec: NNUNetSpec, part: str = "Tr") -> dict[str, NNUNetCase]:
    """The cases of imagesTr/labelsTr (`part` "Tr") or imagesTs/labelsTs ("Ts"), checked from file headers:
    every channel file present, channel counts adding up to the channel_names, a label for every case and a
    case for every label, label and channel files of one size, and (Tr) as many cases as numTraining."""
    root = Path(root)
    image_dir, label_dir = root / f"images{part}", root / f"labels{part}"
    ending = spec.file_ending
    if part == "Ts" and not image_dir.is_dir():
        raise DataError(f"{image_dir}: folder not found, so {root} has no test split")
    if part == "Ts" and not label_dir.is_dir():
        raise DataError(f"{label_dir}: folder not found; the test split needs the labels of imagesTs/ to be scored")
    files: dict[str, dict[int, Path]] = {}
    for p in _list_files(image_dir, ending, spec):
        match = _CHANNEL_FILE.match(p.name[:-len(ending)])
        if not match:
            raise DataError(f"{p}: not named CASE_XXXX{ending} (the case id, '_', a 4-digit channel index)")
        files.setdefault(match.group(1), {})[int(match.group(2))] = p
    if not files:
        raise DataError(f"{image_dir}: no images found (CASE_0000{ending}, ...)")
    labels = {p.name[:-len(ending)]: p for p in _list_files(label_dir, ending, spec)}
    for case, path in labels.items():
        if case not in files:
            raise DataError(f"{path}: a label without images: no {case}_0000{ending} in {image_dir}")
    for case, channel_files in files.items():
        if case not in labels:
            first = channel_files[min(channel_files)]
            raise DataError(f"{first}: images without a label: no {case}{ending} in {label_dir}")
    if part == "Tr" and len(files) != spec.num_training:
        raise DataError(f"{spec.path}: numTraining is {spec.num_training} but {image_dir} holds {len(files)} "
                        "cases; set numTraining to the number of training cases")
    return {case: _check_case(case, files[case], labels[case], image_dir, spec) for case in sorted(files)}


def _check_case(case: str, files: dict[int, Path], label: Path, image_dir: Path, spec: NNUNetSpec) -> NNUNetCase:
    wanted, ending = len(spec.channel_names), spec.file_ending
    indices = sorted(files)
    for expected, found in enumerate(indices):
        if expected != found:
            raise DataError(f"{image_dir / f'{case}_{expected:04d}{ending}'}: channel file missing (found "
                            f"{', '.join(files[i].name for i in indices)})")
    images = tuple(files[i] for i in indices)
    channels = tuple(_file_channels(p) for p in images)
    if sum(channels) < wanted:
        raise DataError(f"{image_dir / f'{case}_{len(images):04d}{ending}'}: channel file missing: dataset.json "
                        f"names {wanted} channels ({', '.join(spec.channel_names)}) and {case}'s files hold "
                        f"{sum(channels)}")
    if sum(channels) > wanted:
        raise DataError(f"{images[-1]}: {case}'s files hold {sum(channels)} channels but dataset.json names "
                        f"{wanted} ({', '.join(spec.channel_names)})")
    label_hw = read_size(label)
    for p in images:
        hw = read_size(p)
        if hw != label_hw:
            raise DataError(f"{label}: label is {label_hw[1]}x{label_hw[0]} (WxH) but its image {p.name} is "
                            f"{hw[1]}x{hw[0]}")
    return NNUNetCase(case, images, channels, label)


def read_case_image(case: NNUNetCase) -> np.ndarray:
    """Decode a case's channel files to uint8 (H, W, 3): its channels stacked, one channel replicated to RGB."""
    parts = []
    for path, channels in zip(case.images, case.channels):
        array = read_image(path, allow_gray=True)  # (H, W, 3); greyscale replicated
        parts.append(array if channels == 3 else array[:, :, :1])
        if array.shape[:2] != parts[0].shape[:2]:
            raise DataError(f"{path}: {array.shape[1]}x{array.shape[0]} (WxH), other channels "
                            f"{parts[0].shape[1]}x{parts[0].shape[0]}")
    image = np.concatenate(parts, axis=2)
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


# ----------------------------------------------------------------------------------------------
# The dataset


class NNUNetRaw(SegmentationDataset):
    """An nnU-Net v2 raw dataset folder (``DatasetNNN_Name/``, see the module docstring).

    ``train`` and ``val`` are carved from imagesTr (``val_fraction``, ``seed``), ``test`` is
    imagesTs with labelsTs. ``classes`` is the ClassList of dataset.json's labels. The folder is
    checked from file headers when the dataset is built; label values when a file is decoded, or
    all at once by :meth:`verify`.
    """

    def __init__(self, root: str | Path, split: Split, image_size: int = 256, *, augment: bool = False,
                 val_fraction: float = 0.1, seed: int = 0, augment_spec: AugmentSpec = FOLDER_AUGMENT) -> None:
        super().__init__(split, seed=seed)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: folder does not exist")
        self.root = root
        self.image_size = image_size
        self.spec = read_dataset_json(root)
        self.classes: ClassList = self.spec.classes
        self._set_augmentation(augment_spec, augment, self.classes)  # more than two classes: label maps
        cases = read_cases(root, self.spec, "Ts" if split == "test" else "Tr")
        ids = sorted(cases)
        self._set_names(ids if split == "test" else select_split(ids, split, val_fraction, seed, root / "imagesTr"))
        self._cases = [cases[n] for n in self.names]

    def verify(self) -> None:
        """Decode every image and label of this split now, raising the first problem found."""
        for index in range(len(self)):
            self._decode(index)

    def _decode(self, index: int) -> tuple[np.ndarray, torch.Tensor]:
        """(image (H, W, 3) uint8, mask (1, H, W) float with IGNORE, at the files' size)."""
        case = self._cases[index]
        image = read_case_image(case)
        labels = read_label_mask(case.label, self.classes)
        if labels.shape != image.shape[:2]:
            raise DataError(f"{case.label}: label {labels.shape} and image {image.shape[:2]} differ in size")
        return image, labels_to_mask(labels, self.classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_np, mask = self._decode(index)
        image = resize_image(image_to_tensor(image_np), self.image_size)
        mask = resize_labels(mask, self.image_size) if self.multiclass else resize_mask(mask, self.image_size)
        if self.augment_spec is not None:
            image, mask = augment_pair(image, mask, self.augment_spec, self._next_generator(index))
        return image, mask


# ----------------------------------------------------------------------------------------------
# Conversion


@dataclass
class Converted:
    """What a conversion wrote: the folder, the number of cases per split, and notes for the user."""

    path: Path
    splits: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        counts = ", ".join(f"{split} {n} case{'s' * (n != 1)}" for split, n in self.splits.items())
        return "\n".join([f"wrote {self.path} ({counts})", *self.notes])


def _check_destination(dest: Path, source: Path) -> None:
    """Never write into the source, never overwrite: the destination must be new or an empty folder."""
    src, out = source.resolve(), dest.resolve()
    if out == src or src in out.parents:
        raise DataError(f"{dest}: inside the source {source}; nothing is written into a data folder, pick a "
                        "destination outside it")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"{dest}: exists and is not empty; pick a new folder (nothing is overwritten)")


def _write_atomically(dest: Path, write) -> None:
    """Run `write(folder)` on a hidden sibling of `dest`, then rename it to `dest`: an interrupted or failed
    conversion leaves no half-written dataset under the real name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write(staging)
        if dest.exists():
            dest.rmdir()  # empty, checked before
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def folder_to_nnunet(folder_root: str | Path, out_dir: str | Path, name: str = "Dataset001_Mine") -> Converted:
    """Write the segdiff folder dataset `folder_root` as the nnU-Net raw dataset `out_dir`/`name`.

    ROOT/images + ROOT/masks become imagesTr/labelsTr; ROOT/train and ROOT/test become Tr and Ts. Images
    are written as RGB PNGs, one ``CASE_0000.png`` each (channel_names R, G, B); binary masks as labels
    0/1; label masks (a class file) keep their classes, and their ignore index becomes the label "ignore"
    with the highest value. Label 0 is named "background", as nnU-Net requires.
    """
    source = Path(folder_root)
    if not source.is_dir():
        raise DataError(f"{source}: folder does not exist")
    if not _DATASET_NAME.match(name):
        raise DataError(f"{name!r}: nnU-Net finds datasets by a folder name DatasetNNN_Name (three digits), "
                        "e.g. Dataset001_Mine")
    dest = Path(out_dir) / name
    _check_destination(dest, source)
    if (source / "train").is_dir() or (source / "test").is_dir():
        if not (source / "train").is_dir():
            raise DataError(f"{source / 'train'}: folder not found; nnU-Net needs training cases")
        parts = {"Tr": source / "train", **({"Ts": source / "test"} if (source / "test").is_dir() else {})}
    else:
        parts = {"Tr": source}
    try:
        class_file = find_class_file(source)
        classes = read_class_file(class_file) if class_file else None
    except ClassFileError as exc:
        raise DataError(str(exc)) from None
    names = list(classes.names[1:]) if classes is not None else ["foreground"]
    for reserved in set(names) & {"background", IGNORE_NAME}:
        raise DataError(f"{class_file}: a class is named {reserved!r}, a name nnU-Net reserves for another label; "
                        "rename it")
    pairs = {part: pair_folder(directory) for part, directory in parts.items()}  # checks before writing
    labels = {"background": 0, **{class_name: value for value, class_name in enumerate(names, 1)}}
    ignore_value = len(names) + 1  # nnU-Net: the ignore label is the highest
    if classes is not None and classes.ignore_index is not None:
        labels[IGNORE_NAME] = ignore_value

    def write(folder: Path) -> None:
        for part, cases in pairs.items():
            for case, (image_path, mask_path) in cases.items():
                _save_png(read_image(image_path, allow_gray=True), folder / f"images{part}" / f"{case}_0000.png")
                if classes is None:
                    label = read_mask(mask_path).astype(np.uint8)
                else:
                    label = read_label_mask(mask_path, classes)
                    if classes.ignore_index is not None:
                        label = np.where(label == classes.ignore_index, ignore_value, label).astype(np.uint8)
                _save_png(label, folder / f"labels{part}" / f"{case}.png")
        dataset = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": labels,
                   "numTraining": len(pairs["Tr"]), "file_ending": ".png", "name": name.split("_", 1)[1],
                   "description": f"converted by segdiff from the folder dataset {source.resolve().name}"}
        (folder / DATASET_JSON).write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")

    _write_atomically(dest, write)
    notes = [] if classes is None or classes.names[0] == "background" else [
        f"class 0 {classes.names[0]!r} is named 'background' in dataset.json, as nnU-Net requires"]
    return Converted(dest, {{"Tr": "train", "Ts": "test"}[p]: len(c) for p, c in pairs.items()}, notes)


def nnunet_to_folder(nnunet_root: str | Path, out_dir: str | Path) -> Converted:
    """Write the nnU-Net raw dataset `nnunet_root` as a segdiff folder dataset in `out_dir`.

    imagesTr/labelsTr become ``images/`` + ``masks/`` (or ``train/`` when there is a test split:
    imagesTs with labelsTs become ``test/``). Images are RGB PNGs; masks are 0/255 PNGs, or, with an
    "ignore" label, label masks (0, 1, 255 ignored) with a classes.json naming the classes.
    """
    source, dest = Path(nnunet_root), Path(out_dir)
    if not source.is_dir():
        raise DataError(f"{source}: folder does not exist")
    _check_destination(dest, source)
    spec = read_dataset_json(source)
    parts = {"train": read_cases(source, spec, "Tr")}
    notes = []
    if (source / "imagesTs").is_dir():
        if (source / "labelsTs").is_dir():
            parts["test"] = read_cases(source, spec, "Ts")
        else:
            notes.append(f"skipped {source / 'imagesTs'}: no labelsTs/ beside it, so no test split")
    classes = spec.classes

    def write(folder: Path) -> None:
        for split, cases in parts.items():
            base = folder / split if "test" in parts else folder
            for case in cases.values():
                _save_png(read_case_image(case), base / "images" / f"{case.name}.png")
                raw = read_label_mask(case.label, classes)
                if classes.ignore_index is None and classes.num_classes == 2:
                    mask = np.where(raw == 1, 255, 0).astype(np.uint8)
                elif classes.ignore_index is None:
                    mask = raw
                else:
                    mask = np.where(raw == classes.ignore_index, 255, raw).astype(np.uint8)
                _save_png(mask, base / "masks" / f"{case.name}.png")
        if classes.ignore_index is not None or classes.num_classes > 2:
            found = {"names": list(classes.names), **({"ignore_index": 255} if classes.ignore_index is not None else {})}
            (folder / "classes.json").write_text(json.dumps(found) + "\n", encoding="utf-8")

    _write_atomically(dest, write)
    return Converted(dest, {split: len(cases) for split, cases in parts.items()}, notes)
