import os
from pathlib import Path

import pytest
import torch

torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real data (SEGDIFF_DATA or ../shared/data beside the repo); skips when absent."""
    root = Path(os.environ.get("SEGDIFF_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set SEGDIFF_DATA)")
    return root.resolve()
