"""The demo's sampler: held-out IoU and seconds of each sampler on a trained demo run, side by side.

    python benchmarks/demo_sampling.py segdiff-demo/run      # the run folder `segdiff demo` wrote

Samples the demo's 32 held-out images with K = 8 and the same seeds under each sampler in turn
(the paper's DDPM over all T steps, SDE-DPM-Solver++ at 2, 5, 10 and 20 steps, DDIM at 10), on
the threads the environment gives, and prints the IoU of the mean's 0.5 mask (a multi-class demo,
`segdiff demo --classes N`: the mIoU of the label maps, one confusion matrix over the images) and
the seconds each took, with the time as a ratio to DDPM's. `segdiff demo` samples with the setting it names
(`demo.DEMO_SAMPLING`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from segdiff.data import make_dataset  # noqa: E402
from segdiff.metrics import confusion_matrix, confusion_scores, iou  # noqa: E402
from segdiff.models import load_model  # noqa: E402
from segdiff.sampling import Prediction, draw_seeds  # noqa: E402

SETTINGS = (("ddpm", 0), ("sde-dpm-solver++", 2), ("sde-dpm-solver++", 5), ("sde-dpm-solver++", 10),
            ("sde-dpm-solver++", 20), ("ddim", 10))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the demo's run folder (segdiff-demo/run)")
    parser.add_argument("--generations", type=int, default=8)
    args = parser.parse_args()
    model = load_model(Path(args.run) / "last.safetensors")
    test_set = make_dataset(model.config, "test")
    images, masks = (torch.stack(x) for x in zip(*(test_set[i] for i in range(len(test_set)))))
    seeds = draw_seeds(len(images) * args.generations, torch.Generator().manual_seed(0))
    classes = model.config.model.num_classes
    name = "IoU" if classes == 2 else "mIoU"

    def score(pred: Prediction) -> float:
        if classes == 2:
            return iou(pred.mask[:, 0], masks[:, 0]).mean().item()
        return float(confusion_scores(confusion_matrix(pred.labels[:, 0], masks[:, 0].long(), classes))["miou"])

    first = None
    print(f"{len(images)} held-out images, K = {args.generations}, {torch.get_num_threads()} threads")
    for sampler, steps in SETTINGS:
        sample = replace(model.config.sample, num_generations=args.generations, max_batch=256, sampler=sampler,
                         num_sampling_steps=steps)
        start = time.perf_counter()
        pred = Prediction.from_generations(model.generations(images, seeds, sample))
        seconds = time.perf_counter() - start
        first = first or seconds
        print(f"{sampler:17s} {steps or model.config.diffusion.num_steps:4d} steps: {name} "
              f"{score(pred):.4f}, {seconds:6.1f} s ({seconds / first:.2f}x DDPM's)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
