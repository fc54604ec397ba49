"""Write a 256 px copy of Vaihingen buildings in the original layout, for moving it to a GPU machine.

    python experiments/vaihingen_256.py ../shared/data .gpudata

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

from segdiff.data import (Vaihingen, _find_vaihingen_dir, image_to_tensor, mask_to_tensor, read_image, read_mask,
                          resize_image, resize_mask)

SIZE = 256


def shrink(source_root: Path, out_root: Path) -> int:
    source = _find_vaihingen_dir(source_root)
    out = out_root / "vaihingen" / "buildings"
    out.mkdir(parents=True, exist_ok=True)
    worst = 0.0
    names = sorted(p.name for p in source.glob("building_[0-9][0-9][0-9].tif"))
    for name in names:
        number = name.removeprefix("building_").removesuffix(".tif")
        image = resize_image(image_to_tensor(read_image(source / name)), SIZE)
        mask = resize_mask(mask_to_tensor(read_mask(source / f"building_mask_{number}.tif")), SIZE)
        image_u8 = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        tifffile.imwrite(out / name, image_u8, photometric="rgb")
        tifffile.imwrite(out / f"building_mask_{number}.tif", mask[0].numpy() > 0.5, photometric="minisblack")
        back_image, back_mask = image_to_tensor(read_image(out / name)), mask_to_tensor(
            read_mask(out / f"building_mask_{number}.tif"))
        if not torch.equal(back_mask, mask):
            raise SystemExit(f"{out / name}: the mask did not read back unchanged")
        worst = max(worst, (back_image - image).abs().max().item())
    for split in ("train", "test"):  # the loader on the copy gives the split it gives on the original
        assert Vaihingen(out_root, split).names == Vaihingen(source_root, split).names
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{len(names)} tiles written to {out} ({size / 2**20:.1f} MiB); largest image difference from the "
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
