"""Datasets for SegDiff: Vaihingen buildings, MoNuSeg nuclei, Cityscapes instance crops, folders.

Here: file reading, resizing, splits, the dataset base class, Vaihingen, user folders and the
registry. MoNuSeg is in :mod:`segdiff.monuseg`, Cityscapes in :mod:`segdiff.cityscapes`; both
build on the helpers here. docs/datasets.md gives each dataset's layout and rules.

Conventions (other modules depend on them):
- Every dataset is a ``torch.utils.data.Dataset`` whose ``__getitem__`` returns ``(image, mask)``:
  image float32 (3, H, W) in [0, 1]; mask float32 (1, H, W) with values exactly {0., 1.}; both
  square at ``image_size`` unless a test protocol says otherwise (MoNuSeg test/val: the full
  2 * image_size image, see :class:`segdiff.monuseg.MoNuSeg`). ``.names`` lists the sample ids
  in item order.
- One entry point, :func:`build_dataset`; ``DATASETS`` holds the valid names.
- Splits: ``train`` and ``test`` are the benchmark's own; ``val`` is carved from the training
  data by :func:`carve_validation` (fixed seed, deterministic, disjoint from the train
  remainder). The test split is never used for validation (the reference code's flaw).
- Resizing ("clean", the default): image bilinear with antialiasing; mask bilinear with
  antialiasing, then >= 0.5, i.e. a pixel is foreground when at least half of its footprint
  was. Vaihingen also offers the authors' "reference" preprocessing (see :class:`Vaihingen`).
- Augmentation (``augment=True``, training splits only) uses :mod:`segdiff.augment`; every
  random draw (augmentation, crop position, crop expansion) comes from a generator derived from
  (seed, k, index) for the k-th fetch of the item (see :class:`SegmentationDataset`): new draws
  each epoch, reproducible under the seed, identical with or without DataLoader workers.
- Bad input raises :class:`DataError` (a ``ValueError``) naming the file and the problem.
- Nothing is ever written into a data folder. Decoding happens in ``__getitem__``; no file
  handle stays open. Decoded arrays are cached per dataset object where the data is small
  (Vaihingen, MoNuSeg), so each DataLoader worker decodes each file once.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .augment import FOLDER_AUGMENT, VAIHINGEN_AUGMENT, AugmentSpec, augment_pair, item_generator

if TYPE_CHECKING:  # re-exported lazily at the end of this module
    from .monuseg import MoNuSeg, quadrants, read_monuseg_xml, stitch_quadrants

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")


class DataError(ValueError):
    """A data file or folder is missing, unreadable or not what the loader expects."""


# ----------------------------------------------------------------------------------------------
# Reading files


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def _read_tiff(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first page of a TIFF as (H, W) or (H, W, S) and return it with its
    photometric interpretation (tifffile returns 1-bit data raw, without applying it)."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            array = page.asarray()
            photometric = int(page.photometric)
            planar_separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except Exception as exc:  # tifffile/imagecodecs raise many types for broken files
        raise DataError(f"{path}: cannot decode TIFF ({type(exc).__name__}: {exc})") from exc
    if planar_separate and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)  # (S, H, W) -> (H, W, S)
    return array, photometric


def _read_pil(path: Path, *, for_image: bool) -> tuple[np.ndarray, str]:
    """Decode with Pillow. For images, palette and other colour spaces (CMYK, YCbCr, ...)
    become RGB; for masks palette indices are kept (a two-colour palette mask is then
    binarised by index)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            convert = for_image and mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
            array = np.array(im.convert("RGB") if convert else im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    return array, mode


def read_image(path: str | Path, *, allow_gray: bool = False) -> np.ndarray:
    """Decode an 8-bit RGB image to a uint8 array (H, W, 3).

    TIFFs are read with tifffile (LZW, PackBits, deflate via imagecodecs), everything else with
    Pillow. An alpha band is dropped. Greyscale is replicated to three channels only when
    ``allow_gray`` (users' folders); the benchmarks must be RGB. Other bit depths are refused
    rather than guessed at (is 16-bit data 12- or 16-bit full scale?).
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        array, _ = _read_tiff(path)
    else:
        array, _ = _read_pil(path, for_image=True)
    if array.dtype != np.uint8:
        bits = "1" if array.dtype == bool else str(array.dtype.itemsize * 8)
        raise DataError(
            f"{path}: expected an 8-bit image, found {bits}-bit samples ({array.dtype}); "
            "convert it to 8-bit RGB"
        )
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, :3])
    if allow_gray and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 2))):
        gray = array if array.ndim == 2 else array[:, :, 0]
        return np.repeat(gray[:, :, None], 3, axis=2)
    bands = 1 if array.ndim == 2 else array.shape[2]
    raise DataError(
        f"{path}: expected an RGB image (3 bands, optionally alpha), found {bands} band(s) "
        f"with shape {array.shape}"
    )


def binarise_mask(values: np.ndarray, path: str | Path) -> np.ndarray:
    """Turn a single-channel mask array into bool, or raise naming ``path``.

    Rule: bool arrays are taken as they are. Otherwise the distinct values decide: {0, 1} or
    {0, 255} are background/foreground; any other pair of values means the larger one is
    foreground; a single value is all background if it is 0 and all foreground if it is 1 or
    255 (anything else is ambiguous); three or more values are an error (e.g. a JPEG mask, a
    label map or a soft mask), as guessing would silently corrupt the ground truth.
    """
    if values.dtype == bool:
        return values
    distinct = np.unique(values)
    if distinct.size == 2:
        return values == distinct[1]
    if distinct.size == 1:
        v = distinct[0]
        if v == 0:
            return np.zeros(values.shape, dtype=bool)
        if v in (1, 255):
            return np.ones(values.shape, dtype=bool)
        raise DataError(f"{path}: mask has the single value {v}; cannot tell background from foreground")
    shown = ", ".join(str(v) for v in distinct[:6]) + (", ..." if distinct.size > 6 else "")
    raise DataError(
        f"{path}: expected a binary mask (two distinct values), found {distinct.size} distinct "
        f"values ({shown})"
    )


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a binary mask to a bool array (H, W), getting TIFF polarity right.

    1-bit TIFFs with photometric MinIsWhite (the Vaihingen masks) store 0 for white, and
    tifffile returns the raw bits, so they are inverted here; Pillow applies it itself. A
    multi-band mask must have identical bands (an alpha band, as in MoNuSeg's 'LA' PNGs, is
    ignored); then :func:`binarise_mask` decides.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        array, photometric = _read_tiff(path)
        if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
            array = ~array if array.dtype == bool else np.iinfo(array.dtype).max - array
        alpha = array.ndim == 3 and array.shape[2] in (2, 4)
    else:
        array, mode = _read_pil(path, for_image=False)
        alpha = mode in ("LA", "RGBA", "PA", "La", "RGBa")
    if array.ndim == 3:
        bands = array[:, :, :-1] if alpha else array
        if not all(np.array_equal(bands[:, :, 0], bands[:, :, k]) for k in range(1, bands.shape[2])):
            raise DataError(
                f"{path}: expected a single-channel mask, found {bands.shape[2]} channels that differ"
            )
        array = bands[:, :, 0]
    return binarise_mask(array, path)


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding pixels: cheap up-front checks."""
    path = Path(path)
    _check_file(path)
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as exc:
        raise DataError(f"{path}: cannot read image header ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------------------------
# Arrays to tensors, resizing


def image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


def mask_to_tensor(array: np.ndarray) -> torch.Tensor:
    """bool (H, W) -> float32 (1, H, W) in {0, 1}."""
    return torch.from_numpy(np.ascontiguousarray(array)).float().unsqueeze(0)


def resize_image(image: torch.Tensor, size: int | tuple[int, int], *, mode: str = "bilinear") -> torch.Tensor:
    """Resize (C, H, W); bilinear is antialiased (averages when shrinking, like PIL)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == size:
        return image
    if mode == "nearest":
        return F.interpolate(image[None], size=size, mode="nearest")[0]
    out = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0].clamp_(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a {0, 1} mask (1, H, W): antialiased bilinear, then >= 0.5 (area-faithful)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(mask.shape[-2:]) == size:
        return mask
    soft = F.interpolate(mask[None], size=size, mode="bilinear", antialias=True, align_corners=False)
    return (soft[0] >= 0.5).float()


# ----------------------------------------------------------------------------------------------
# Splits and the common dataset base


def carve_validation(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split training ids into (train, val), deterministically.

    Each id is ranked by SHA-256 of "seed:id" and the round(val_fraction * n) lowest (at least
    one when the fraction is > 0 and n >= 2) form val. The result depends only on the ids and
    the seed, not on library versions or listing order; both parts keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(names)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    ranked = sorted(names, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    val = set(ranked[:n_val])
    return [s for s in names if s not in val], [s for s in names if s in val]


def select_split(
    train_ids: Sequence[str], split: str, val_fraction: float, seed: int, where: Path
) -> list[str]:
    """The ids for ``split`` ("train" or "val") out of the training ids."""
    train, val = carve_validation(train_ids, val_fraction, seed)
    chosen = train if split == "train" else val
    if not chosen:
        raise DataError(f"{where}: the {split} split is empty ({len(train_ids)} training samples, "
                        f"val_fraction={val_fraction})")
    return chosen


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


class SegmentationDataset(Dataset):
    """Shared state: sample ids and reproducible per-item randomness.

    Item ``i``'s k-th fetch draws from ``item_generator(seed, k, i)``. The fetch counts live in
    a shared-memory tensor, so they advance the same way whether items are decoded in the main
    process or in DataLoader workers (persistent ones included): every epoch gets new draws
    without any call, and a fresh dataset with the same seed replays the same sequence.
    :meth:`set_epoch` sets every count, e.g. to resume a run at epoch ``e``.
    """

    names: list[str]

    def __init__(self, *, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)

    def _set_names(self, names: list[str]) -> None:
        """Set the sample ids; creates the draw counters, so it must run in the main process."""
        self.names = names
        self._draws = torch.zeros(len(names), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Make the next fetch of every item use the draws of epoch ``epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._draws.fill_(int(epoch))

    def generator(self, index: int) -> torch.Generator:
        """The generator the next fetch of item ``index`` will use (does not advance)."""
        index = range(len(self))[index]  # negative indices count from the end, as for lists
        return item_generator(self.seed, int(self._draws[index]), index)

    def _next_generator(self, index: int) -> torch.Generator:
        """The generator for this fetch of item ``index``; advances its count."""
        generator = self.generator(index)
        self._draws[range(len(self))[index]] += 1
        return generator

    def __len__(self) -> int:
        return len(self.names)


# ----------------------------------------------------------------------------------------------
# Vaihingen buildings (DSAC layout)

_VAIHINGEN_RE = re.compile(r"^building_(\d{3})\.tif$")
VAIHINGEN_TRAIN_LAST = 100  # 001-100 train, 101-168 test (DSAC, DarNet, SegDiff)


def _find_vaihingen_dir(root: Path) -> Path:
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    for candidate in (root / "vaihingen" / "buildings", root / "buildings", root):
        if candidate.is_dir() and any(candidate.glob("building_[0-9][0-9][0-9].tif")):
            return candidate
    raise DataError(
        f"{root}: no Vaihingen files found; expected ROOT/vaihingen/buildings/building_NNN.tif "
        "and building_mask_NNN.tif, with ROOT the data root, its vaihingen/ or buildings/ folder"
    )


class Vaihingen(SegmentationDataset):
    """Vaihingen buildings: 168 tiles of 512x512 IR-R-G, one central building mask each.

    Split by file number: 001-100 train (``val`` carved from it), 101-168 test.
    ``preprocessing="clean"`` resizes as the module docstring says. ``"reference"`` is the
    authors' code: image nearest neighbour, mask bilinear without antialiasing, then every
    non-zero pixel set to 1, which slightly enlarges the ground truth their test scores use;
    offered only to reproduce those numbers.
    """

    def __init__(
        self,
        root: str | Path,
        split: Split,
        image_size: int = 256,
        *,
        augment: bool = False,
        val_fraction: float = 0.1,
        seed: int = 0,
        preprocessing: Literal["clean", "reference"] = "clean",
        augment_spec: AugmentSpec = VAIHINGEN_AUGMENT,
    ) -> None:
        super().__init__(seed=seed)
        _check_split(split)
        if preprocessing not in ("clean", "reference"):
            raise ValueError(f"preprocessing must be 'clean' or 'reference', got {preprocessing!r}")
        self.directory = _find_vaihingen_dir(Path(root))
        self.image_size, self.split, self.preprocessing = image_size, split, preprocessing
        self.augment_spec = augment_spec if augment and split == "train" else None
        numbers = sorted(int(m.group(1)) for p in self.directory.iterdir()
                         if (m := _VAIHINGEN_RE.match(p.name)))
        for n in numbers:
            _check_file(self.directory / f"building_mask_{n:03d}.tif")
        if split == "test":
            names = [f"building_{n:03d}" for n in numbers if n > VAIHINGEN_TRAIN_LAST]
        else:
            train = [f"building_{n:03d}" for n in numbers if n <= VAIHINGEN_TRAIN_LAST]
            names = select_split(train, split, val_fraction, seed, self.directory)
        if not names:
            raise DataError(f"{self.directory}: no Vaihingen files for the {split} split")
        self._set_names(names)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:  # 168 x 512^2 RGB is small: decode each file once
            name = self.names[index]
            image = read_image(self.directory / f"{name}.tif")
            mask = read_mask(self.directory / f"building_mask_{name.removeprefix('building_')}.tif")
            if image.shape[:2] != mask.shape:
                raise DataError(f"{self.directory / name}.tif: image {image.shape[:2]} and mask "
                                f"{mask.shape} differ in size")
            self._cache[index] = (image, mask)
        return self._cache[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_np, mask_np = self._decoded(index)
        image, mask = image_to_tensor(image_np), mask_to_tensor(mask_np)
        if self.preprocessing == "reference":
            image = resize_image(image, self.image_size, mode="nearest")
            if tuple(mask.shape[-2:]) != (self.image_size, self.image_size):
                soft = F.interpolate(mask[None], size=(self.image_size,) * 2, mode="bilinear",
                                     align_corners=False)[0]
                mask = (soft > 0).float()
        else:
            image, mask = resize_image(image, self.image_size), resize_mask(mask, self.image_size)
        if self.augment_spec is not None:
            image, mask = augment_pair(image, mask, self.augment_spec, self._next_generator(index))
        return image, mask


# ----------------------------------------------------------------------------------------------
# A folder of the user's own images and masks


def _list_images(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in found:
                raise DataError(f"{p}: two files share the stem {p.stem!r} ({found[p.stem].name}); "
                                "images and masks are paired by stem, so stems must be unique")
            found[p.stem] = p
    return found


class FolderDataset(SegmentationDataset):
    """Your own data: ``ROOT/images/`` and ``ROOT/masks/`` paired by file stem.

    Formats: PNG, JPEG, TIFF, BMP; images 8-bit RGB or greyscale (replicated to RGB); masks
    binarised by :func:`read_mask` / :func:`binarise_mask` (so save masks losslessly, not as
    JPEG). Layout: either ``ROOT/images`` + ``ROOT/masks`` (all of it is training data; a
    ``test`` split must then be given explicitly as its own folder) or ``ROOT/train/`` and
    ``ROOT/test/`` each holding ``images/`` + ``masks/``. ``val`` is carved from train.

    The whole folder is checked when the dataset is built, from file headers only: every
    image has a mask and vice versa, both are readable and the same size. Pixel values are
    checked when an item is decoded; call :meth:`verify` to decode everything up front.
    """

    def __init__(
        self,
        root: str | Path,
        split: Split,
        image_size: int = 256,
        *,
        augment: bool = False,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment_spec: AugmentSpec = FOLDER_AUGMENT,
    ) -> None:
        super().__init__(seed=seed)
        _check_split(split)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: folder does not exist")
        self.image_size, self.split = image_size, split
        self.augment_spec = augment_spec if augment and split == "train" else None
        has_split_dirs = (root / "train").is_dir() or (root / "test").is_dir()
        if has_split_dirs:
            self.directory = root / ("test" if split == "test" else "train")
            if not self.directory.is_dir():
                raise DataError(f"{self.directory}: folder not found; a folder with train/ or "
                                "test/ subfolders needs both for those splits")
        elif split == "test":
            raise DataError(f"{root}: has images/ and masks/ but no test/ folder; without "
                            "train/ and test/ subfolders everything is training data, so pass "
                            "your test folder as its own root")
        else:
            self.directory = root
        pairs = self._pair(self.directory)
        ids = sorted(pairs)
        self._set_names(ids if split == "test"
                        else select_split(ids, split, val_fraction, seed, self.directory))
        self._pairs = [pairs[n] for n in self.names]

    @staticmethod
    def _pair(directory: Path) -> dict[str, tuple[Path, Path]]:
        image_dir, mask_dir = directory / "images", directory / "masks"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise DataError(f"{d}: folder not found; expected {directory}/images/ and "
                                f"{directory}/masks/ with files paired by stem")
        images, masks = _list_images(image_dir), _list_images(mask_dir)
        if not images:
            raise DataError(f"{image_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        for stem, path in images.items():
            if stem not in masks:
                raise DataError(f"{path}: no mask with the same stem in {mask_dir}")
        for stem, path in masks.items():
            if stem not in images:
                raise DataError(f"{path}: no image with the same stem in {image_dir}")
        for stem, image_path in images.items():
            image_hw, mask_hw = read_size(image_path), read_size(masks[stem])
            if image_hw != mask_hw:
                raise DataError(f"{masks[stem]}: mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but its "
                                f"image {image_path.name} is {image_hw[1]}x{image_hw[0]}")
        return {stem: (images[stem], masks[stem]) for stem in images}

    def verify(self) -> None:
        """Decode every image and mask of this split now, raising the first problem found."""
        for index in range(len(self)):
            self._decode(index)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self._pairs[index]
        return read_image(image_path, allow_gray=True), read_mask(mask_path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_np, mask_np = self._decode(index)
        image = resize_image(image_to_tensor(image_np), self.image_size)
        mask = resize_mask(mask_to_tensor(mask_np), self.image_size)
        if self.augment_spec is not None:
            image, mask = augment_pair(image, mask, self.augment_spec, self._next_generator(index))
        return image, mask


# ----------------------------------------------------------------------------------------------
# Registry and entry point


def _build_monuseg(root: Path, split: Split, image_size: int, **kwargs: Any) -> Dataset:
    from .monuseg import MoNuSeg  # monuseg.py imports helpers from here

    return MoNuSeg(root, split, image_size, **kwargs)


def _build_cityscapes(root: Path, split: Split, image_size: int, **kwargs: Any) -> Dataset:
    from .cityscapes import CityscapesInstances  # cityscapes.py imports helpers from here

    return CityscapesInstances(root, split, image_size, **kwargs)


def _build_synthetic(root: Path, split: Split, image_size: int, *, num_train: int = 2000, num_test: int = 64,
                     val_fraction: float = 0.1, **_: Any) -> Dataset:
    """The built-in generated dataset (synthetic.py); `root` is unused. It needs no augmentation:
    every image is new. Each split has its own generator seed, so the splits are disjoint."""
    from .synthetic import SPLIT_SEEDS, SyntheticShapes

    length = {"train": num_train, "val": max(16, round(num_train * val_fraction)), "test": num_test}[split]
    return SyntheticShapes(length, image_size, SPLIT_SEEDS[split])


_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "vaihingen": Vaihingen,
    "monuseg": _build_monuseg,
    "cityscapes": _build_cityscapes,
    "folder": FolderDataset,
    "synthetic": _build_synthetic,
}
DATASETS: tuple[str, ...] = tuple(_REGISTRY)


def build_dataset(
    name: str,
    root: str | Path,
    split: Split,
    image_size: int,
    *,
    augment: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Build dataset ``name``'s ``split`` at ``image_size``; the one entry point.

    ``options`` go to the dataset class: ``setting="tight"|"expansion"`` and ``classes`` for
    Cityscapes, ``preprocessing`` for Vaihingen, ``mask_source`` for MoNuSeg, ``augment_spec``
    for all. Example::

        train = build_dataset("vaihingen", "DATA", "train", 256, augment=True)  # DATA holds vaihingen/
        image, mask = train[0]  # (3, 256, 256) in [0, 1], (1, 256, 256) in {0, 1}
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    _check_split(split)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return _REGISTRY[name](Path(root), split, image_size, augment=augment,
                           val_fraction=val_fraction, seed=seed, **options)


# MoNuSeg lives in monuseg.py, which imports this module's helpers; its names stay importable
# from here (``from segdiff.data import MoNuSeg``) through a lazy module attribute (PEP 562),
# so neither module has to be imported first.
_MONUSEG_NAMES = frozenset({"MoNuSeg", "quadrants", "read_monuseg_xml", "stitch_quadrants"})


def __getattr__(name: str) -> Any:
    if name in _MONUSEG_NAMES:
        from . import monuseg

        return getattr(monuseg, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
