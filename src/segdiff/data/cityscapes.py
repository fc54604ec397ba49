"""Cityscapes instance crops (the Polygon-RNN++ / Curve-GCN / ACDRNet protocol used by SegDiff).

Input is the official layout, nothing preprocessed::

    ROOT/gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_polygons.json
    ROOT/leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png

(ROOT may also be a folder holding ``cityscapes/`` with those two.) One sample per object
instance of the eight classes bicycle, bus, person, train, truck, motorcycle, car, rider.

Which instances count, and why. SegDiff builds its crops with ACDRNet's
``generate_cityscapes_instances.py`` from Polygon-RNN++'s preprocessed annotations
("cityscapes_final_v5", not public any more). There, every instance is a list of polygon
*components*: the parts of the object left visible by the objects drawn after it (Cityscapes
polygons are stored back to front, so later objects occlude earlier ones; occlusion can split an
object into several pieces). ACDRNet keeps the components whose area is > 100 pixels
(``--min-area 100``; Curve-GCN's configs use ``min_area: 100`` and ``min_poly_len: 3``), drops
the instance when none is left or when its box has zero width or height, and uses the union of
the kept components as the instance mask. We recompute that from the raw JSON:

1. objects are rasterised in file order with Pillow (as cityscapesScripts' json2labelImg does;
   ``deleted`` objects and "license plate", which has no label id, are skipped);
2. the visible part of an instance is its polygon minus every later object's polygon;
3. it is split into 8-connected components; components of <= ``min_area`` (100) pixels go;
4. the instance is dropped if nothing is left; its box is the tight box of what is left.

Component areas are pixel counts here, where Polygon-RNN++'s files stored polygon areas of
traced components, so an instance near the 100-pixel threshold may fall on the other side;
that preprocessing code was never published, so exact agreement cannot be checked.

Splits. The official test set has no public fine annotations, so, as in Polygon-RNN(++),
Curve-GCN and SegDiff, the official ``val`` is our ``test`` and the official ``train`` is split
into ``train`` and ``val``: :func:`segdiff.data.carve_validation` over *images* (all instances
of an image land on the same side, so no scene is in both).

Crops. ``setting="tight"`` crops each instance's box. ``setting="expansion"`` grows the box by
15 % in width and height about its centre for val and test and by a random 10-20 % for training
(drawn per item and epoch; the reference draws once per run), clipped to the image (as the
reference does; no padding). Crops are resized to ``image_size`` (128 in the paper) without
keeping the aspect ratio, as in the reference. The test protocol compares the prediction
resized back to the crop's own size with :meth:`CityscapesInstances.original_mask`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from ..config import CROP_SETTINGS, CropSetting
from .augment import CITYSCAPES_AUGMENT, AugmentSpec, augment_pair
from .base import SegmentationDataset, Split, check_option, select_split
from .reading import DataError, image_to_tensor, mask_to_tensor, read_image, resize_image, resize_mask

__all__ = ["CITYSCAPES_CLASSES", "CityscapesInstances", "InstanceRecord", "index_annotation",
           "visible_instance_mask"]

# The order of the paper's Cityscapes table.
CITYSCAPES_CLASSES: tuple[str, ...] = ("bicycle", "bus", "person", "train", "truck", "motorcycle",
                                       "car", "rider")
MIN_COMPONENT_AREA = 100  # pixels; ACDRNet's --min-area default, as used by SegDiff
TEST_EXPANSION = 0.15  # box growth for val/test crops in the expansion setting
TRAIN_EXPANSION = (0.10, 0.20)  # random box growth for training crops in the expansion setting
_NOT_DRAWN = frozenset({"license plate"})  # label id -1 in cityscapesScripts: never rasterised
_INDEX_VERSION = 1

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end-exclusive


@dataclass(frozen=True)
class InstanceRecord:
    """One instance crop: where it comes from and its box (of the kept components)."""

    annotation: str  # path of the polygons JSON, relative to the Cityscapes root
    image: str  # path of the leftImg8bit PNG, relative to the Cityscapes root
    object_index: int  # position in the JSON's "objects" list
    label: str
    box: Box
    height: int  # full image size from the JSON
    width: int

    @property
    def name(self) -> str:
        frame = Path(self.annotation).name.removesuffix("_gtFine_polygons.json")
        return f"{frame}_{self.object_index:03d}_{self.label}"


def load_annotation(path: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """(imgHeight, imgWidth, objects) from a gtFine polygons JSON, checked."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        height, width, objects = int(data["imgHeight"]), int(data["imgWidth"]), data["objects"]
        missing = [i for i, obj in enumerate(objects) if "label" not in obj or "polygon" not in obj]
        if missing:
            raise KeyError(f"objects {missing[:5]} lack 'label' or 'polygon'")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a Cityscapes polygons JSON (imgHeight, imgWidth, "
                        f"objects[{{label, polygon}}]): {type(exc).__name__}: {exc}") from exc
    return height, width, objects


def _drawn(obj: dict[str, Any]) -> bool:
    return not obj.get("deleted", 0) and obj["label"] not in _NOT_DRAWN and len(obj["polygon"]) >= 2


def _polygon_box(polygon: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    return min(xs), min(ys), max(xs) + 1, max(ys) + 1


def visible_instance_mask(objects: list[dict[str, Any]], target: int, window: Box) -> np.ndarray:
    """Bool mask (y1-y0, x1-x0) of object ``target`` inside ``window`` after occlusion.

    The target polygon is filled, then every later drawn object whose box meets the window is
    filled over it with background: the same picture as rasterising all objects in file order.
    """
    x0, y0, x1, y1 = window
    canvas = Image.new("1", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)

    def fill(polygon: Sequence[Sequence[float]], value: int) -> None:
        shifted = [(p[0] - x0, p[1] - y0) for p in polygon]
        if len(shifted) >= 2:  # fill only, as cityscapesScripts' json2labelImg draws
            draw.polygon(shifted, fill=value)

    fill(objects[target]["polygon"], 1)
    for obj in objects[target + 1:]:
        if not _drawn(obj):
            continue
        bx0, by0, bx1, by1 = _polygon_box(obj["polygon"])
        if bx0 < x1 and by0 < y1 and bx1 > x0 and by1 > y0:
            fill(obj["polygon"], 0)
    return np.asarray(canvas, dtype=bool)


def kept_components(visible: np.ndarray, min_area: int) -> np.ndarray:
    """The union of the 8-connected components of ``visible`` with more than ``min_area`` pixels."""
    labels, count = ndimage.label(visible, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return visible
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas > min_area
    keep[0] = False
    return keep[labels]


def _frame_window(obj: dict[str, Any], height: int, width: int) -> Box | None:
    bx0, by0, bx1, by1 = _polygon_box(obj["polygon"])
    x0, y0 = max(0, int(np.floor(bx0))), max(0, int(np.floor(by0)))
    x1, y1 = min(width, int(np.ceil(bx1))), min(height, int(np.ceil(by1)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def index_annotation(path: Path, root: Path, classes: Sequence[str], min_area: int) -> list[InstanceRecord]:
    """The instance records of one polygons JSON (see the module docstring for the rule)."""
    height, width, objects = load_annotation(path)
    relative = path.relative_to(root)
    split_city = relative.parent.relative_to("gtFine")
    frame = path.name.removesuffix("_gtFine_polygons.json")
    image = Path("leftImg8bit") / split_city / f"{frame}_leftImg8bit.png"
    if not (root / image).is_file():
        raise DataError(f"{root / image}: image for {path.name} not found")
    records = []
    for index, obj in enumerate(objects):
        if obj["label"] not in classes or not _drawn(obj):
            continue
        window = _frame_window(obj, height, width)
        if window is None:
            continue
        kept = kept_components(visible_instance_mask(objects, index, window), min_area)
        rows, cols = np.nonzero(kept)
        if rows.size == 0:
            continue
        box = (window[0] + int(cols.min()), window[1] + int(rows.min()),
               window[0] + int(cols.max()) + 1, window[1] + int(rows.max()) + 1)
        records.append(InstanceRecord(str(relative), str(image), index, obj["label"], box,
                                      height, width))
    return records


def expand_box(box: Box, expansion: float, height: int, width: int) -> Box:
    """Grow ``box`` by ``expansion`` (0.15 = 15 %) in width and height about its centre,
    clipped to the image and rounded to whole pixels."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * expansion / 2.0, (y1 - y0) * expansion / 2.0
    return (max(0, round(x0 - dx)), max(0, round(y0 - dy)),
            min(width, round(x1 + dx)), min(height, round(y1 + dy)))


def _find_root(root: Path) -> Path:
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    for candidate in (root, root / "cityscapes"):
        if (candidate / "gtFine").is_dir() and (candidate / "leftImg8bit").is_dir():
            return candidate
    raise DataError(f"{root}: expected the official Cityscapes layout, ROOT/gtFine/ and "
                    "ROOT/leftImg8bit/ (or ROOT/cityscapes/ holding them)")


class CityscapesInstances(SegmentationDataset):
    """Instance crops of the eight Cityscapes "thing" classes (see the module docstring).

    ``classes`` restricts the classes (the paper trains and reports per class); ``index_cache``
    names a JSON file (outside the data folder) where the instance index is stored after the
    first build, since indexing the full training split (2975 frames, tens of thousands of
    instances) takes minutes.
    """

    def __init__(
        self,
        root: str | Path,
        split: Split,
        image_size: int = 128,
        *,
        augment: bool = False,
        val_fraction: float = 0.1,
        seed: int = 0,
        setting: CropSetting = "expansion",
        classes: Sequence[str] | None = None,
        min_area: int = MIN_COMPONENT_AREA,
        augment_spec: AugmentSpec = CITYSCAPES_AUGMENT,
        index_cache: str | Path | None = None,
    ) -> None:
        super().__init__(split, seed=seed)
        check_option("setting", setting, CROP_SETTINGS)
        self.classes = tuple(CITYSCAPES_CLASSES if classes is None else classes)
        unknown = sorted(set(self.classes) - set(CITYSCAPES_CLASSES))
        if unknown:
            raise ValueError(f"unknown Cityscapes classes {unknown}; valid: {CITYSCAPES_CLASSES}")
        self.root = _find_root(Path(root))
        self.image_size, self.setting, self.min_area = image_size, setting, min_area
        self.augment_spec = augment_spec if augment and split == "train" else None
        official = "val" if split == "test" else "train"
        records = self._index(official, Path(index_cache) if index_cache else None)
        if split != "test":
            frames = sorted({Path(r.annotation).name for r in records})
            chosen = set(select_split(frames, split, val_fraction, seed, self.root / "gtFine" / official))
            records = [r for r in records if Path(r.annotation).name in chosen]
        if not records:
            raise DataError(f"{self.root / 'gtFine' / official}: no instances of {self.classes} "
                            f"for the {split} split")
        self.records = records
        self._set_names([r.name for r in records])
        self._last_image: tuple[str, np.ndarray] | None = None

    def _index(self, official: str, cache: Path | None) -> list[InstanceRecord]:
        key = {"version": _INDEX_VERSION, "root": str(self.root.resolve()), "split": official,
               "classes": list(self.classes), "min_area": self.min_area}
        if cache is not None and cache.is_file():
            stored = json.loads(cache.read_text())
            if stored.get("key") == key:
                return [InstanceRecord(**{**r, "box": tuple(r["box"])}) for r in stored["records"]]
        directory = self.root / "gtFine" / official
        files = sorted(directory.glob("*/*_gtFine_polygons.json"))
        if not files:
            raise DataError(f"{directory}: no CITY/*_gtFine_polygons.json files found")
        records = [r for f in files for r in index_annotation(f, self.root, self.classes, self.min_area)]
        if cache is not None:
            if self.root.resolve() in cache.resolve().parents:
                raise DataError(f"{cache}: the index cache must not be written inside the data folder")
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "records": [asdict(r) for r in records]}))
        return records

    def crop_box(self, index: int, generator: torch.Generator | None = None) -> Box:
        """The crop of item ``index``: the instance box, grown per the setting and split
        (for training in the expansion setting, the crop its next fetch will use)."""
        record = self.records[index]
        if self.setting == "tight":
            expansion = 0.0
        elif self.split == "train":
            low, high = TRAIN_EXPANSION
            generator = generator if generator is not None else self.generator(index)
            expansion = low + (high - low) * float(torch.rand((), generator=generator))
        else:
            expansion = TEST_EXPANSION
        return expand_box(record.box, expansion, record.height, record.width)

    def _crop_mask(self, index: int, box: Box) -> np.ndarray:
        record = self.records[index]
        _, _, objects = load_annotation(self.root / record.annotation)
        visible = visible_instance_mask(objects, record.object_index, box)
        return kept_components(visible, self.min_area)

    def original_mask(self, index: int) -> torch.Tensor:
        """The ground-truth mask (1, h, w) at the crop's own resolution (test protocol)."""
        return mask_to_tensor(self._crop_mask(index, self.crop_box(index)))

    def _image(self, record: InstanceRecord) -> np.ndarray:
        # Instances of one frame are adjacent: keep the last decoded frame (2048x1024 PNG).
        if self._last_image is None or self._last_image[0] != record.image:
            array = read_image(self.root / record.image)
            if array.shape[:2] != (record.height, record.width):
                raise DataError(f"{self.root / record.image}: image is {array.shape[1]}x"
                                f"{array.shape[0]} but its JSON says {record.width}x{record.height}")
            self._last_image = (record.image, array)
        return self._last_image[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        generator = self._next_generator(index)
        x0, y0, x1, y1 = box = self.crop_box(index, generator)
        image = image_to_tensor(self._image(record)[y0:y1, x0:x1])
        mask = mask_to_tensor(self._crop_mask(index, box))
        image, mask = resize_image(image, self.image_size), resize_mask(mask, self.image_size)
        if self.augment_spec is not None:
            image, mask = augment_pair(image, mask, self.augment_spec, generator)
        return image, mask
