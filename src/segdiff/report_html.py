"""report.html: an evaluation's report as one self-contained page (`evaluation.evaluate` writes it).

The page holds the summary table beside the paper's numbers (the content of report.md, from
`evaluation.report_tables`), the evaluation's figures, and a per-image table whose column headers
sort it (a few lines of inline JavaScript) and whose rows open the image, ground truth,
probability and uncertainty side by side. Every picture is embedded as a base64 data: URI, so the
file can be mailed or opened offline: it references no other file and no network address.

The HTML comes from the jinja2 template `templates/report.html.j2` (package data), rendered with
autoescaping on: image names and protocol descriptions are text, never markup.
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

import jinja2
import torch

from .io import colormap, png_bytes

__all__ = ["render"]

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("segdiff", "templates"),
    autoescape=True,  # names and descriptions are text; the template marks nothing safe
    undefined=jinja2.StrictUndefined,  # a misspelt field fails the render, not prints nothing
    trim_blocks=True,
    lstrip_blocks=True,
)


def data_uri(png: bytes) -> str:
    """The bytes of a PNG file as a data: URI (base64), for an <img src>."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _legend(grey: bool) -> str:
    """A 128 x 12 horizontal ramp: grey for probability 0..1, `io.colormap` for uncertainty 0..0.5 (x2)."""
    ramp = torch.linspace(0, 1, 128)[None].expand(12, -1)  # (12, 128)
    return data_uri(png_bytes(ramp if grey else colormap(ramp)))


def render(tables: dict[str, Any], *, figures: Sequence[tuple[str, bytes]], columns: Sequence[tuple[str, str]],
           rows: Sequence[dict[str, Any]], classes: Sequence[tuple[str, Sequence[int]]] = ()) -> str:
    """The page's HTML text.

    `tables` is `evaluation.report_tables(summary)`; `figures` are (file name, PNG bytes);
    `columns` are the per-image table's (key, header) after the name; each of `rows` is
    {"name", "cells": [(text, sort value)] per column, "thumbnails": [(title, PNG bytes)]};
    `classes`: (name, 0..255 RGB) of a multi-class model, shown as the label maps' colour legend.
    """
    return _ENVIRONMENT.get_template("report.html.j2").render(
        tables=tables,
        figures=[(name, data_uri(png)) for name, png in figures],
        columns=columns,
        rows=[{"name": r["name"], "cells": r["cells"],
               "thumbnails": [(title, data_uri(png)) for title, png in r["thumbnails"]]} for r in rows],
        legend={"probability": _legend(grey=True), "uncertainty": _legend(grey=False)},
        classes=[(name, "#{:02x}{:02x}{:02x}".format(*rgb)) for name, rgb in classes],
    )
