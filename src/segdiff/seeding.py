"""Seeds: the one way segdiff derives a seed from several values.

Every random stream that must be reproducible is seeded with `derive_seed(tag, ...)`: the
generations of an image, augmentation draws, the order of an epoch's batches, the validation
split, the synthetic images, the draws of a resumed run. The parts are hashed as text (SHA-256,
not Python's `hash()`), so a seed depends on its parts alone: the same in every process, Python
run and machine, and unrelated for neighbouring parts (seed s, item i+1 shares nothing with seed
s+1, item i).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 62-bit seed that depends only on `parts` (e.g. (seed, image name, tile, generation))."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded with `derive_seed(*parts)`."""
    return torch.Generator().manual_seed(derive_seed(*parts))
