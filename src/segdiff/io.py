"""Writing results: atomic file writes and the PNGs a person looks at.

Every output is written under a temporary name and renamed, so an interrupted run never leaves a
half-written file that looks complete.
"""

from __future__ import annotations

import os
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def _process_umask() -> int:
    """The process's umask, from /proc/self/status where Linux gives it.

    Elsewhere the only way to read it is to set it and set it back, which changes the mode of any
    file another thread creates meanwhile; that is done once, at import, before this package starts
    a thread, never per write.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()  # read once; a umask the process sets later is not seen by atomic_write


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, fsync, then rename onto `path`: all or nothing.

    The file gets mode 0o666 & ~_UMASK, as `open` would give it (mkstemp makes 0600), without
    touching the process umask, so a thread creating files meanwhile is unaffected.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_section(page: str | Path, begin: str, end: str, lines: list[str]) -> None:
    """Write `lines` (which start with the marker `begin` and end with `end`) into the Markdown `page`:
    in place of the text between the markers where the page has them, else appended; atomically.
    The experiment scripts keep their parts of docs/results.md this way."""
    page = Path(page)
    text = page.read_text() if page.exists() else ""
    section = "\n".join(lines)
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write(page, lambda tmp: tmp.write_text(text))


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def colormap(values: Tensor) -> Tensor:
    """(H, W) in [0, 1] -> (3, H, W) RGB, a perceptually ordered black-purple-orange-yellow ramp."""
    stops = torch.tensor([[0.0, 0.0, 0.02], [0.33, 0.06, 0.43], [0.73, 0.21, 0.33],
                          [0.98, 0.55, 0.04], [0.99, 1.0, 0.64]], device=values.device)
    pos = values.clamp(0, 1) * (len(stops) - 1)
    lo = pos.floor().long().clamp(max=len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).permute(2, 0, 1)


def colour_labels(labels: Tensor, palette: Sequence[Sequence[int]], ignored=(0, 0, 0)) -> Tensor:
    """Label map (H, W) of class indices (negative: ignored) -> (3, H, W) RGB in [0, 1] by `palette`
    (one 0..255 RGB triple per class); ignored pixels in `ignored`."""
    table = torch.tensor([*palette, ignored], dtype=torch.float32, device=labels.device) / 255
    index = torch.where(labels < 0, len(palette), labels.long().clamp(max=len(palette) - 1))
    return table[index].permute(2, 0, 1)


def overlay(image: Tensor, mask: Tensor, color=(1.0, 0.15, 0.1), alpha: float = 0.45) -> Tensor:
    """Image (3, H, W) with the mask (H, W) tinted and its one-pixel outline drawn solid."""
    mask = mask.bool()
    tint = torch.tensor(color, device=image.device)[:, None, None]
    out = torch.where(mask, image * (1 - alpha) + tint * alpha, image)
    m = mask[None, None].float()
    eroded = -torch.nn.functional.max_pool2d(-m, 3, stride=1, padding=1)
    edge = (m - eroded)[0, 0].bool()
    return torch.where(edge, tint.expand_as(out), out)


def _pil(picture: Tensor, scale: int = 1) -> Image.Image:
    array = _to_uint8(picture)
    if array.ndim == 3:
        array = array.transpose(1, 2, 0)
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_png(path: str | Path, picture: Tensor, scale: int = 1) -> None:
    """Save (H, W) grey or (3, H, W) RGB in [0, 1]; `scale` enlarges small pictures (nearest)."""
    img = _pil(picture, scale)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def png_bytes(picture: Tensor) -> bytes:
    """(H, W) grey or (3, H, W) RGB in [0, 1] -> the bytes of a PNG file (for embedding, e.g. report.html)."""
    buffer = BytesIO()
    _pil(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def save_prediction(out_dir: str | Path, name: str, image: Tensor, prob: Tensor, uncertainty: Tensor,
                    target: Tensor | None = None, scale: int = 1) -> list[Path]:
    """Write NAME_{image,mask,prob,uncertainty,overlay[,gt]}.png; all (H, W) but image (3, H, W).

    The mask is prob > 0.5; the uncertainty (std of K generations in [0, 0.5]) is shown x2 on the
    colour ramp so that 0.5, the most uncertain a pixel can be, is the brightest.
    """
    out_dir = Path(out_dir)
    mask = prob > 0.5
    pictures = {
        "image": image, "mask": mask.float(), "prob": prob,
        "uncertainty": colormap(uncertainty * 2), "overlay": overlay(image, mask),
    }
    if target is not None:
        pictures["gt"] = target.float()
    paths = []
    for kind, picture in pictures.items():
        path = out_dir / f"{name}_{kind}.png"
        save_png(path, picture, scale)
        paths.append(path)
    return paths


def save_labels(path: str | Path, labels: Tensor, palette: Sequence[Sequence[int]]) -> None:
    """Save a label map (H, W) of class indices as an indexed PNG whose palette is `palette`: the
    pixel values are the classes (read back with any tool), the viewer shows their colours."""
    img = Image.fromarray(labels.detach().cpu().numpy().astype(np.uint8), mode="P")
    img.putpalette([v for rgb in palette for v in rgb] + [0] * (3 * (256 - len(palette))))
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_sheet(path: str | Path, rows: list[list[Tensor]], scale: int = 1) -> None:
    """One PNG of equally sized pictures, a row per list; (H, W) pictures are shown in grey."""
    as_rgb = lambda x: x.expand(3, -1, -1) if x.ndim == 3 else x[None].expand(3, -1, -1)  # noqa: E731
    sheet = torch.cat([torch.cat([as_rgb(x.float().cpu()) for x in row], dim=2) for row in rows], dim=1)
    save_png(path, sheet, scale)
