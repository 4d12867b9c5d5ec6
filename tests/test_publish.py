"""The published page: static, offline, and rendered by headless Chromium with its tables and
images (Debian's ``chromium``; CI installs it, so there a missing browser fails the test)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from xbt_bench.report import publish

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]
# Appended to a copy of the page: after load, record what the browser actually rendered.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.dataset.naturalWidth = img.naturalWidth;
  for (const t of document.querySelectorAll("table")) t.dataset.renderedHeight = t.offsetHeight;
});
</script>"""


class _Elements(HTMLParser):
    """Attributes of every ``img`` and ``table`` in a document, and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: list[dict[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("img", "table"):
            (self.images if tag == "img" else self.tables).append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; CI (.ci/run) installs Debian's chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")


@pytest.fixture(scope="module")
def page(synthetic_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publish(synthetic_results, tmp_path_factory.mktemp("site") / "leaderboards")


def test_page_is_static_and_self_contained(page: Path):
    html = page.read_text(encoding="utf-8")
    assert page.name == "index.html"
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no network assets
    found = _parse(html)
    assert len(found.images) == 11  # 11 plots of the synthetic results, as SVG
    for img in found.images:
        assert (page.parent / img["src"]).is_file(), img["src"]
        assert img["alt"]
    assert (page.parent / "leaderboard.csv").is_file()


def test_chromium_renders_tables_and_images(page: Path, tmp_path: Path):
    chromium = _chromium()
    probe = page.with_name("index.probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rendered = _parse(done.stdout)
    source = _parse(page.read_text(encoding="utf-8"))

    assert len(rendered.tables) == len(source.tables) >= 9
    heights = [int(t.get("data-rendered-height", 0)) for t in rendered.tables]
    assert min(heights) > 20, heights  # every table laid out with visible rows
    assert len(rendered.images) == len(source.images) == 11
    widths = [int(img.get("data-natural-width", 0)) for img in rendered.images]
    assert min(widths) > 100, widths  # every plot loaded and decoded

    text = " ".join(" ".join(rendered.text).split())
    for expected in (
        "toy-s-to-m · toy-shapes · split test",
        "30.80 ✗",
        "61.00 ✓",
        "5/6",
        "procrustes",
        "Published numbers (reported, not re-run)",
        "ricci2026spherical",
        "Approximate search",
    ):
        assert expected in text, expected
