"""Class lists and ignored pixels: what a mask's values mean.

- A mask tensor is (C, H, W) float with 1 for the class and 0 for the rest; pixels whose truth is
  unknown or unlabelled (CamVid's "void", an annotator's "don't care") carry `IGNORE` (-1) in
  every channel. No loss and no score counts them (`valid_pixels`).
- A folder dataset's class file (`classes.yaml`, `classes.yml` or `classes.json` beside
  `images/` and `masks/`) names the classes and the ignore index of its label masks, whose pixels
  are class indices:

      names: [background, car]     # index 0, 1, ...
      ignore_index: 255            # optional: pixels never trained on or scored
      colours: [[0, 0, 0], [64, 0, 128]]   # optional: RGB per class, for colour-coded masks and pictures
      ignore_colour: [255, 255, 255]       # optional, with ignore_index: the colour of ignored pixels

  Without a class file a folder's masks are binary images (`data.reading.binarise_mask`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from torch import Tensor

__all__ = ["CLASS_FILES", "IGNORE", "ClassList", "default_palette", "find_class_file", "read_class_file",
           "valid_pixels"]

IGNORE = -1.0  # the mask value of an ignored pixel
CLASS_FILES: tuple[str, ...] = ("classes.yaml", "classes.yml", "classes.json")


def valid_pixels(target: Tensor) -> Tensor:
    """Bool map of the pixels that count: those not marked `IGNORE` (same shape as `target`)."""
    return target >= 0


class ClassFileError(ValueError):
    """A class file that cannot be used, named with its problem."""


@dataclass(frozen=True)
class ClassList:
    """The classes of a label mask: their names (index = position) and the ignore index, if any."""

    names: tuple[str, ...]
    ignore_index: int | None = None
    colours: tuple[tuple[int, int, int], ...] = ()  # RGB per class (empty: none given)
    ignore_colour: tuple[int, int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def check_labels(self, labels: np.ndarray, path: Path) -> None:
        """Raise ClassFileError naming `path` and the values that are neither a class nor ignored."""
        allowed = set(range(self.num_classes)) | ({self.ignore_index} if self.ignore_index is not None else set())
        found = np.unique(labels)
        bad = [int(v) for v in found if int(v) not in allowed]
        if bad:
            shown = ", ".join(map(str, bad[:8])) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
            ignore = f", ignore index {self.ignore_index}" if self.ignore_index is not None else ""
            raise ClassFileError(f"{path}: label value(s) {shown} not in the class list "
                                 f"(classes 0..{self.num_classes - 1}{ignore})")


def find_class_file(root: Path) -> Path | None:
    """The class file in folder `root`, if it has one (two are an error: which one counts?)."""
    found = [root / name for name in CLASS_FILES if (root / name).is_file()]
    if len(found) > 1:
        raise ClassFileError(f"{root}: several class files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def read_class_file(path: Path) -> ClassList:
    """Parse a class file (YAML or JSON, see the module docstring), checking every field."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ClassFileError(f"{path}: cannot read the class file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ClassFileError(f"{path}: expected a mapping with 'names' (and optionally 'ignore_index')")
    keys = ("names", "ignore_index", "colours", "ignore_colour")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ClassFileError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(keys)}")
    names = data.get("names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise ClassFileError(f"{path}: 'names' must list at least two class names (strings), found {names!r}")
    if len(set(names)) != len(names):
        raise ClassFileError(f"{path}: class names repeat: {names}")
    ignore = data.get("ignore_index")
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int) or not 0 <= ignore <= 255
                               or ignore < len(names)):
        raise ClassFileError(f"{path}: ignore_index must be an integer in {len(names)}..255 (not a class index), "
                             f"found {ignore!r}")
    colours = tuple(_colour(path, "colours", c) for c in data.get("colours") or [])
    if colours and len(colours) != len(names):
        raise ClassFileError(f"{path}: {len(colours)} colours for {len(names)} names; give one [r, g, b] per class")
    if len(set(colours)) != len(colours):
        raise ClassFileError(f"{path}: two classes share a colour")
    ignore_colour = data.get("ignore_colour")
    if ignore_colour is not None:
        if ignore is None:
            raise ClassFileError(f"{path}: ignore_colour needs an ignore_index")
        ignore_colour = _colour(path, "ignore_colour", ignore_colour)
        if ignore_colour in colours:
            raise ClassFileError(f"{path}: ignore_colour {list(ignore_colour)} is also a class's colour")
    return ClassList(tuple(names), ignore, colours, ignore_colour)


def _colour(path: Path, key: str, value) -> tuple[int, int, int]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise ClassFileError(f"{path}: {key}: expected [r, g, b] with integers 0..255, found {value!r}")
    return tuple(value)


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct RGB colours for classes without their own (class 0 black, as masks usually draw it):
    the PASCAL VOC colour map, bits of the index spread over the three channels."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r, g, b = r | ((c >> 0) & 1) << shift, g | ((c >> 1) & 1) << shift, b | ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return tuple(palette)
