"""report.html: one self-contained page (data: URIs only) with the summary, figures and a sortable per-image table."""

from __future__ import annotations

import csv
import html
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from segdiff.config import ExperimentConfig, SampleConfig
from segdiff.data import build_dataset
from segdiff.evaluation import METRICS, _cell, evaluate
from segdiff.models import build_model
from segdiff.protocol import protocol_for

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """An evaluation folder: a tiny model with new weights, 3 synthetic images, 2 cheap generations each."""
    out = tmp_path_factory.mktemp("eval")
    config = ExperimentConfig.tiny()
    protocol = protocol_for("synthetic", config.model.image_size)
    dataset = build_dataset("synthetic", "", "test", protocol.dataset_size, num_test=3)
    evaluate(build_model(config), dataset, protocol, SampleConfig(num_generations=2, sampler="ddim",
                                                                   num_sampling_steps=3),
             out_dir=out, progress=False)
    return out


class _Page(HTMLParser):
    """Every tag's attributes; the summary table's and the per-image table's rows with their cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.attributes: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
        self.table = self.row = self.cell = None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.attributes.append((tag, attrs))
        if tag == "table":
            self.table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self.table is not None:
            self.row = (attrs, [])
            self.table.append(self.row)
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row[1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "table":
            self.table = self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _per_image(out: Path) -> list[dict[str, str]]:
    with open(out / "per_image.csv") as f:
        return list(csv.DictReader(f))


def test_report_html_is_self_contained(evaluated):
    text = (evaluated / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)
    references = [(tag, name, value) for tag, attrs in _parse(evaluated / "report.html").attributes
                  for name, value in attrs.items() if name in ("src", "href", "srcset", "data", "poster")]
    assert references, "the page embeds its figures and thumbnails"
    assert all(value.startswith("data:image/png;base64,") for _, _, value in references), references
    assert "url(" not in text and "@import" not in text  # nor from the stylesheet


def test_report_html_has_a_row_per_image_with_four_pictures(evaluated):
    page = _parse(evaluated / "report.html")
    rows = [attrs for attrs, _ in page.tables["images"] if "data-name" in attrs]
    assert [r["data-name"] for r in rows] == [r["name"] for r in _per_image(evaluated)]
    # 3 figures + 2 legend ramps + 4 thumbnails (image, ground truth, probability, uncertainty) per image
    images = [attrs for tag, attrs in page.attributes if tag == "img"]
    assert len(images) == 3 + 2 + 4 * 3
    assert sum(a["alt"].startswith("synthetic_2_00001: ") for a in images) == 4


def test_report_html_summary_numbers_are_summary_json(evaluated):
    summary = json.loads((evaluated / "summary.json").read_text())
    rows = {attrs["data-metric"]: (attrs, cells) for attrs, cells in _parse(evaluated / "report.html").tables["summary"]
            if "data-metric" in attrs}
    assert list(rows) == list(METRICS)
    for metric, (attrs, cells) in rows.items():
        assert float(attrs["data-value"]) == summary["metrics"][metric]
        assert cells[1] == _cell(metric, summary["metrics"][metric])  # as report.md shows it
        assert f"| {cells[1]} |" in (evaluated / "report.md").read_text()


# Run in the page on load; writes what it found into a hidden element that --dump-dom returns.
_CHECKS = """<script>
window.addEventListener("load", function () {
  var names = function () {
    return Array.from(document.querySelectorAll("#images tbody tr")).map(function (r) { return r.dataset.name; });
  };
  var out = {before: names()};
  document.querySelectorAll("#images details").forEach(function (d) { d.open = true; });
  var images = Array.from(document.images);
  out.images = images.length;
  out.decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var iou = document.querySelector('#images th[data-key="iou"]');
  iou.click();
  out.first_click = names();
  iou.click();
  out.second_click = names();
  iou.click();  // back to the best first, for the screenshot
  var checks = document.createElement("pre");
  checks.id = "checks";
  checks.hidden = true;
  checks.textContent = JSON.stringify(out);
  document.body.appendChild(checks);
});
</script>
</body>"""


def _chromium(tmp_path: Path, *args: str) -> str:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs a headless browser at /usr/bin/chromium "
                                                     "(apt-get install chromium); not installed")
def test_report_html_renders_decodes_its_images_and_sorts_in_chromium(evaluated, tmp_path):
    page = tmp_path / "report.html"
    page.write_text((evaluated / "report.html").read_text(encoding="utf-8").replace("</body>", _CHECKS, 1),
                    encoding="utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="checks" hidden="">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run"
    checks = json.loads(html.unescape(found.group(1)))
    rows = _per_image(evaluated)
    assert checks["before"] == [r["name"] for r in rows]
    assert checks["images"] == 3 + 2 + 4 * len(rows) and checks["decoded"] == checks["images"]
    by_iou = [r["name"] for r in sorted(rows, key=lambda r: -float(r["iou"]))]
    assert checks["first_click"] == by_iou  # the best first
    assert checks["second_click"] == by_iou[::-1]
    assert checks["before"] != checks["first_click"] or checks["before"] != checks["second_click"]
    _chromium(tmp_path, f"--screenshot={tmp_path / 'report.png'}", "--window-size=1200,1600", page.as_uri())
    assert (tmp_path / "report.png").stat().st_size > 0
