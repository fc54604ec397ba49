"""Class lists and ignored pixels: what a mask's values mean.

- A mask tensor is (C, H, W) float with 1 for the class and 0 for the rest; pixels whose truth is
  unknown or unlabelled (CamVid's "void", an annotator's "don't care") carry `IGNORE` (-1) in
  every channel. No loss and no score counts them (`valid_pixels`).
- A folder dataset's class file (`classes.yaml`, `classes.yml` or `classes.json` beside
  `images/` and `masks/`) names the classes and the ignore index of its label masks, whose pixels
  are class indices:

      names: [background, car]     # index 0, 1, ...
      ignore_index: 255            # optional: pixels never trained on or scored

  Without a class file a folder's masks are binary images (`data.reading.binarise_mask`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from torch import Tensor

__all__ = ["CLASS_FILES", "IGNORE", "ClassList", "find_class_file", "read_class_file", "valid_pixels"]

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
    unknown = sorted(set(data) - {"names", "ignore_index"})
    if unknown:
        raise ClassFileError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: names, ignore_index")
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
    return ClassList(tuple(names), ignore)
