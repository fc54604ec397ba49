"""Reading image and mask files, and turning them into tensors at a given size.

Conventions (every dataset module and ``segdiff predict`` rely on them):
- Images decode to uint8 (H, W, 3); masks to bool (H, W). As tensors: image float32 (3, H, W) in
  [0, 1], mask float32 (1, H, W) with values exactly {0., 1.}, and `labels.IGNORE` (-1) on
  ignored pixels when the mask came with a class file (`read_label_mask`, `labels_to_mask`); with
  more than two classes the mask holds each pixel's class index (a label map).
- TIFFs are read with tifffile (1-bit MinIsWhite polarity applied here), everything else with
  Pillow. Other bit depths and ambiguous masks are refused, not guessed at.
- Resizing ("clean"): image bilinear with antialiasing; mask bilinear with antialiasing, then
  >= 0.5, i.e. a pixel is foreground when at least half of its footprint was (ignored pixels
  likewise: ignored when at least half of the footprint was). Label maps of more than two
  classes: nearest neighbour (`resize_labels`).
- Bad input raises :class:`DataError` (a ``ValueError``) naming the file and the problem. No file
  handle stays open.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..labels import IGNORE, ClassList

__all__ = ["DataError", "IMAGE_SUFFIXES", "binarise_mask", "check_file", "image_to_tensor", "labels_to_mask",
           "mask_to_tensor", "read_image", "read_label_mask", "read_mask", "read_size", "resize_image", "resize_labels",
           "resize_mask"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")


class DataError(ValueError):
    """A data file or folder is missing, unreadable or not what the loader expects."""


# ----------------------------------------------------------------------------------------------
# Reading files


def check_file(path: Path) -> None:
    """Raise :class:`DataError` unless ``path`` is an existing file."""
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


def _bomb_error(path: Path, exc: Image.DecompressionBombError) -> DataError:
    """The error for an image whose header declares more pixels than Pillow agrees to decode
    (twice ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 million by default): a guard against files
    that would take all memory, or a genuine but huge image that must be cut up first."""
    declared = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) exceeds limit of ..."
    size = f"declares {int(declared.group(1)):,} pixels, which " if declared else ""
    return DataError(
        f"{path}: the image {size}exceeds Pillow's decompression-bomb limit of "
        f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels; if the file is genuine, cut it into smaller tiles or "
        "downscale it with an image tool first (from Python, raising PIL.Image.MAX_IMAGE_PIXELS lifts the limit)"
    )


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
    except Image.DecompressionBombError as exc:
        raise _bomb_error(path, exc) from exc
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
    check_file(path)
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
    check_file(path)
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


def read_label_mask(path: str | Path, classes: ClassList) -> np.ndarray:
    """Decode a label mask, one class index per pixel, to uint8 (H, W), checked against `classes`.

    8-bit single-channel PNG/TIFF or a palette PNG (its indices are the labels). A value that is
    neither a class index nor the ignore index raises DataError naming the file and the values.
    """
    path = Path(path)
    check_file(path)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        array, _ = _read_tiff(path)
        mode = "TIFF"
    else:
        array, mode = _read_pil(path, for_image=False)
    if array.ndim == 3 and mode in ("LA", "PA") and array.shape[2] == 2:
        array = array[:, :, 0]  # an alpha band carries no labels
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
        return _colours_to_labels(array[:, :, :3], classes, path)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit single-channel label mask (class indices), found shape "
                        f"{array.shape} of {array.dtype}")
    try:
        classes.check_labels(array, path)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return array


def _colours_to_labels(rgb: np.ndarray, classes: ClassList, path: Path) -> np.ndarray:
    """A colour-coded RGB mask -> uint8 labels by the class file's colours (and ignore_colour)."""
    if not classes.colours:
        raise DataError(f"{path}: an RGB mask, but the class file gives no colours; add colours: "
                        "[[r, g, b], ...] (one per class), or save masks as class indices")
    table = {c: i for i, c in enumerate(classes.colours)}
    if classes.ignore_colour is not None:
        table[classes.ignore_colour] = classes.ignore_index
    codes = (rgb[:, :, 0].astype(np.int32) << 16) | (rgb[:, :, 1].astype(np.int32) << 8) | rgb[:, :, 2]
    found, inverse = np.unique(codes, return_inverse=True)
    lookup = np.zeros(found.size, dtype=np.uint8)
    unknown = []
    for n, code in enumerate(found.tolist()):
        colour = (code >> 16, (code >> 8) & 255, code & 255)
        if colour in table:
            lookup[n] = table[colour]
        else:
            unknown.append(list(colour))
    if unknown:
        shown = ", ".join(map(str, unknown[:6])) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        raise DataError(f"{path}: colour(s) {shown} not in the class file's colours")
    return lookup[inverse.reshape(codes.shape)]


def labels_to_mask(labels: np.ndarray, classes: ClassList) -> torch.Tensor:
    """Label masks (H, W) -> float32 (1, H, W): the class index of each pixel (binary: 1 foreground,
    0 background), IGNORE where the label is the ignore index."""
    mask = torch.from_numpy(labels.astype(np.float32))[None]
    if classes.ignore_index is not None:
        mask[0][torch.from_numpy(labels == classes.ignore_index)] = IGNORE
    return mask


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding pixels: cheap up-front checks."""
    path = Path(path)
    check_file(path)
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        with Image.open(path) as im:
            return im.height, im.width
    except Image.DecompressionBombError as exc:
        raise _bomb_error(path, exc) from exc
    except Exception as exc:
        raise DataError(f"{path}: cannot read image header ({type(exc).__name__}: {exc})") from exc


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


def resize_labels(labels: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a label map (1, H, W) of class indices (and IGNORE) with nearest neighbour: every
    pixel keeps a label that was there, never a blend or a threshold of two."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels[None], size=size, mode="nearest-exact")[0]


def resize_mask(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a {0, 1} mask (1, H, W): antialiased bilinear, then >= 0.5 (area-faithful). Ignored
    pixels (IGNORE) are resized the same way as a map of their own: a pixel is ignored when at
    least half of its footprint was, otherwise foreground or background as the rest decides."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(mask.shape[-2:]) == size:
        return mask
    ignored = mask < 0
    if not ignored.any():
        soft = F.interpolate(mask[None], size=size, mode="bilinear", antialias=True, align_corners=False)
        return (soft[0] >= 0.5).float()
    maps = torch.cat([mask.clamp(min=0), ignored.float()])[None]  # (1, 2C, H, W)
    soft = F.interpolate(maps, size=size, mode="bilinear", antialias=True, align_corners=False)[0] >= 0.5
    channels = mask.shape[0]
    return torch.where(soft[channels:], IGNORE, soft[:channels].float())
