import os
from pathlib import Path

import pytest
import torch

torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data, the folder $SEGDIFF_DATA names (vaihingen/, monuseg/, ...); skips when it is not set."""
    if not os.environ.get("SEGDIFF_DATA"):
        pytest.skip("real data: set SEGDIFF_DATA to the folder holding vaihingen/, monuseg/, ...")
    root = Path(os.environ["SEGDIFF_DATA"])
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set SEGDIFF_DATA)")
    return root.resolve()


@pytest.fixture
def bomb_png(tmp_path) -> Path:
    """An 8x8 PNG whose header claims 20000x20000 (4e8 pixels, over Pillow's decompression-bomb limit)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"  # the first chunk: length (4), type (4), width, height, ..., CRC
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    return path
