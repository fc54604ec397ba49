"""Helpers the benchmark scripts share: timing, the machine's matmul peak, FLOP counting."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn, device: torch.device, repeats: int = 5) -> float:
    """The fastest of `repeats` calls of `fn`, after one warm-up call that is not counted."""
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """The machine's practical float32 peak: the best of `repeats` n x n matmuls, GFLOP/s.

    On CUDA the matmul runs in the precision the network's convolutions get (cuDNN's TF32
    switch), so that the fraction of peak compares like with like.
    """
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        return 2 * n**3 / best_seconds(lambda: a @ b, device, repeats) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def float32_mode(device: torch.device) -> str:
    if device.type != "cuda":
        return "float32"
    return "float32, TF32 convolutions" if torch.backends.cudnn.allow_tf32 else "float32, TF32 off"


@contextlib.contextmanager
def counting_flops() -> Iterator[FlopCounterMode]:
    """A FlopCounterMode under which attention runs as plain matmuls.

    The fused CPU attention kernel (`_scaled_dot_product_flash_attention_for_cpu`) has no entry in
    torch's FLOP registry and would count as 0; the math backend does the same products as bmm
    calls, which are counted."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter
