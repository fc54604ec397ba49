"""TensorBoard event files for a training run (`train.tensorboard`; the optional extra `tensorboard`).

Rank 0 writes RUN/tensorboard/ with torch's `SummaryWriter`, beside log.jsonl and from the same
records: train/loss, train/lr, train/grad_norm and train/samples_per_s at each logged step, val/iou
at each validation, and at each validation a picture of the first few validation items (input |
ground truth | probability | uncertainty as std x2), predicted with the validation's protocol,
sample settings and seeds. Watch a run, or all of them, with `tensorboard --logdir runs/`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .config import ConfigError
from .evaluation import label_panels, panels
from .protocol import item_names, resize_probabilities

__all__ = ["SCALAR_TAGS", "summary_writer_class", "open_writer", "write_scalars", "ValidationExamples",
           "write_examples"]

# log.jsonl record event -> {record key: TensorBoard tag}
SCALAR_TAGS: dict[str, dict[str, str]] = {
    "train": {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
              "samples_per_s": "train/samples_per_s"},
    "val": {"val_iou": "val/iou"},
}
NUM_EXAMPLES = 4  # validation items pictured at each validation


def summary_writer_class(setting: bool | None):
    """torch's SummaryWriter class, or None when `train.tensorboard` (`setting`) is off.

    None: on when the tensorboard package is installed; True: required (ConfigError naming the
    extra to install when it is missing); False: off.
    """
    if setting is False:
        return None
    try:  # an optional extra: the base install has no tensorboard, which torch.utils.tensorboard needs
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        if setting:
            raise ConfigError(f"train.tensorboard=true needs the tensorboard package ({exc}); install it with "
                             "`pip install 'segdiff[tensorboard]'` (or `pip install tensorboard`), or set "
                             "train.tensorboard=false") from None
        return None
    return SummaryWriter


def open_writer(writer_class, out_dir: Path, step: int):
    """A writer for OUT_DIR/tensorboard; a resumed run (`step` > 0) drops the events after `step`, as
    the logs are rewound, so the curves hold no steps of the abandoned continuation."""
    return writer_class(log_dir=str(Path(out_dir) / "tensorboard"), purge_step=step or None, flush_secs=30)


def write_scalars(writer, record: dict) -> None:
    """The scalars of one log.jsonl record (its values as logged; None, a non-finite value, is left out)."""
    for key, tag in SCALAR_TAGS.get(record.get("event"), {}).items():
        if record.get(key) is not None:
            writer.add_scalar(tag, record[key], record["step"])


class ValidationExamples:
    """Pictures of the first `count` validation items, made while validation predicts them.

    Pass it as `training.validation_iou(..., on_item=)`: each item is pictured from the very
    prediction validation scores (its protocol, sample settings and seeds), so nothing is sampled
    twice. `pictures` holds (name, picture (3, h, 4w) in [0, 1]): input, ground truth, probability
    (the mean of the K generations) and uncertainty (std x2, coloured), side by side.
    """

    def __init__(self, dataset, count: int = NUM_EXAMPLES, palette=None) -> None:
        self.names, self.count = item_names(dataset), count
        self.palette = palette  # a multi-class model's class colours: label maps, prediction and entropy
        self.pictures: list[tuple[str, Tensor]] = []

    def __call__(self, index: int, image: Tensor, target: Tensor, means: Tensor, uncertainty: Tensor) -> None:
        if index >= self.count:
            return
        size = tuple(target.shape[-2:])
        image = resize_probabilities(image.float().cpu(), size)[:3].clamp(0, 1)  # to the scoring size
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        # The binary path's one channel is the foreground (channel 0); evaluate's panels at full size,
        # without the overlay.
        shown = (label_panels(image, target[0], means[-1], uncertainty[0], self.palette, side=max(size))
                 if self.palette is not None else panels(image, target[0], means[-1, 0], uncertainty[0],
                                                         side=max(size))[:4])
        self.pictures.append((self.names[index], torch.cat([picture for _, picture in shown], dim=2)))


def write_examples(writer, step: int, examples: list[tuple[str, Tensor]]) -> None:
    """One image per example, tagged val_examples/NAME."""
    for name, picture in examples:
        writer.add_image(f"val_examples/{name}", picture, step)
