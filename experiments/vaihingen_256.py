"""Write a 256 px copy of Vaihingen buildings in the original layout, for moving it to a GPU machine.

    python experiments/vaihingen_256.py DATA .gpudata    # DATA: the folder holding vaihingen/

The 168 tiles are 512 px uncompressed TIFFs (126 MB); the paper's protocol trains and scores at
256 px, so the copy is what the loader would compute anyway, a quarter of the size (33 MB):
- masks: `data.resize_mask` of the original (antialiased bilinear, >= 0.5), stored as 1-bit TIFFs; the
  loader reads them back bit for bit, so every score is the same as on the original files;
- images: `data.resize_image` of the original, rounded to uint8: at most 0.5/255 from the float
  image the loader makes of the 512 px file (checked below on every tile).
The loader's resize to 256 is then the identity. Do not redistribute the copy (the data's licence).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tifffile
import torch

from segdiff.data import Vaihingen, image_to_tensor, mask_to_tensor, read_image, read_mask

SIZE = 256


def shrink(source_root: Path, out_root: Path) -> int:
    out = out_root / "vaihingen" / "buildings"
    out.mkdir(parents=True, exist_ok=True)
    worst, count = 0.0, 0
    for split in ("train", "test"):  # val_fraction=0: "train" is all 100 training tiles
        source = Vaihingen(source_root, split, image_size=SIZE, val_fraction=0.0)
        for index, name in enumerate(source.names):
            image, mask = source[index]  # what the loader gives at 256 px, float image and {0, 1} mask
            number = name.removeprefix("building_")
            image_path, mask_path = out / f"{name}.tif", out / f"building_mask_{number}.tif"
            tifffile.imwrite(image_path, (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(),
                             photometric="rgb")
            tifffile.imwrite(mask_path, mask[0].numpy() > 0.5, photometric="minisblack")
            if not torch.equal(mask_to_tensor(read_mask(mask_path)), mask):
                raise SystemExit(f"{mask_path}: the mask did not read back unchanged")
            worst = max(worst, (image_to_tensor(read_image(image_path)) - image).abs().max().item())
            count += 1
        assert Vaihingen(out_root, split, val_fraction=0.0).names == source.names  # the same split on the copy
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{count} tiles written to {out} ({size / 2**20:.1f} MiB); largest image difference from the "
          f"loader's float image: {worst * 255:.3f}/255")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="data root holding vaihingen/buildings (or that folder)")
    parser.add_argument("out", type=Path, help="new data root; the copy goes to OUT/vaihingen/buildings")
    args = parser.parse_args()
    return shrink(args.source, args.out)


if __name__ == "__main__":
    sys.exit(main())
