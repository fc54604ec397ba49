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

from .config import ConfigError, SampleConfig
from .io import colormap
from .protocol import Protocol, item_names, resize_probabilities
from .seeding import derive_seed

__all__ = ["SCALAR_TAGS", "summary_writer_class", "open_writer", "write_scalars", "validation_examples",
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


def validation_examples(model, dataset, protocol: Protocol, sample: SampleConfig, *, seed: int,
                        count: int = NUM_EXAMPLES) -> list[tuple[str, Tensor]]:
    """(name, picture (3, h, 4w) in [0, 1]) for the first `count` items of `dataset`: input, ground truth,
    probability (the mean of the K generations) and uncertainty (std x2, coloured), side by side.

    Each item is predicted as validation predicts it: `protocol`, `sample`, seeds from (seed, name).
    """
    n = min(count, len(dataset))
    names = item_names(dataset)
    items = [dataset[i] for i in range(n)]
    targets = [protocol.target(dataset, i, mask) for i, (_, mask) in enumerate(items)]  # (C, h, w)
    sizes = [tuple(t.shape[-2:]) for t in targets]
    results = protocol.predict_items(model, [image for image, _ in items], sample,
                                     [derive_seed(seed, names[i]) for i in range(n)], sizes)
    def grey(x: Tensor) -> Tensor:  # (h, w) -> (3, h, w)
        return x.float().cpu()[None].expand(3, -1, -1)

    examples = []
    for i, ((image, _), target, (means, uncertainty), size) in enumerate(zip(items, targets, results, sizes)):
        image = resize_probabilities(image.float().cpu(), size)[:3].clamp(0, 1)  # to the scoring size
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        # The binary path's one channel is the foreground (channel 0).
        panels = [image, grey(target[0]), grey(means[-1, 0]), colormap(2 * uncertainty[0].float().cpu())]
        examples.append((names[i], torch.cat(panels, dim=2)))
    return examples


def write_examples(writer, step: int, examples: list[tuple[str, Tensor]]) -> None:
    """One image per example, tagged val_examples/NAME."""
    for name, picture in examples:
        writer.add_image(f"val_examples/{name}", picture, step)
