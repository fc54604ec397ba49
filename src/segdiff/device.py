"""Devices and the machine: which torch device to run on, and how to name the hardware.

Training, evaluation, the baseline, the demo and the benchmarks all resolve `--device auto` the
same way and record the same machine description beside their figures, so both live here, below
all of them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["describe_machine", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`: "auto" picks CUDA, then Apple's MPS, then the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_machine(device: torch.device | str | None = None) -> str:
    """CPU model, cores, GPU, torch and thread count: what every recorded figure must name."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.device(device) if device is not None else None
    gpu = (torch.cuda.get_device_name(device) if device is not None and device.type == "cuda"
           else torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    return (f"{cpu} ({platform.machine()}), {os.cpu_count()} CPU cores, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
