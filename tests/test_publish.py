"""The published page: static, offline, and rendered by headless Chromium with its tables and
images, its sortable columns, its selector and its plot-to-rows links (Debian's ``chromium``;
CI installs it, so there a missing browser fails the test)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from xbt_bench.report.publish import publish

# Publishing renders every plot and, in Chromium, the page: the full suite only.
pytestmark = pytest.mark.slow

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
# Appended to a copy of the page: after load, show every group (the page opens on one) and
# record what the browser actually rendered.
PROBE = """<script>
window.addEventListener("load", () => {
  const select = document.getElementById("group-select");
  select.value = "";
  select.dispatchEvent(new Event("change"));
  for (const img of document.images) img.dataset.naturalWidth = img.naturalWidth;
  for (const t of document.querySelectorAll("table")) t.dataset.renderedHeight = t.offsetHeight;
});
</script>"""


class _Elements(HTMLParser):
    """Attributes of every ``img``, ``table``, ``script``, ``a`` and ``body`` in a document, the
    ids it defines, and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: list[dict[str, str]] = []
        self.scripts: list[dict[str, str]] = []
        self.links: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self.ids: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if "id" in found:
            self.ids.add(found["id"])
        kinds = {"img": self.images, "table": self.tables, "script": self.scripts, "a": self.links}
        if tag in kinds:
            kinds[tag].append(found)
        if tag == "body":
            self.body = found

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


# Plots of the synthetic results: recall and gain vs cost for each of the 4 exact tables, the
# backfill curves of 2 splits, the chain's heatmap, xbt's training curves and its sweep.
N_PLOTS = 13


def test_page_is_static_and_self_contained(page: Path):
    html = page.read_text(encoding="utf-8")
    assert page.name == "index.html"
    found = _parse(html)
    assert len(found.scripts) == 1 and "src" not in found.scripts[0]  # one small inline script
    assert len(re.search(r"<script>(.*)</script>", html, re.S).group(1)) < 8000  # with Pareto
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no network assets
    assert len(found.images) == N_PLOTS
    for img in found.images:
        assert (page.parent / img["src"]).is_file(), img["src"]
        assert img["alt"]
    assert (page.parent / "leaderboard.csv").is_file()
    # every plot links to the table of the rows behind it, and names their methods
    rows = [a for a in found.links if "rows" in a.get("class", "")]
    assert len(rows) == N_PLOTS
    for link in rows:
        assert link["href"][1:] in found.ids, link["href"]
        assert link["data-methods"].strip()
    assert "Partial backfill" in html and "one decision per pair (estimate)" in html
    # the decision card: 1e8 items re-embedded at the measured 500 images/s and 2000 texts/s
    assert "Recommended: full backfill" in html and "Ranking rule: first the ways" in html
    assert "toy-s-to-m: the whole bill of each way" in html and ">125<" in html
    assert 'class="pareto" data-points="[{&quot;way&quot;: &quot;full backfill&quot;' in html
    assert "AC = 0.67" in html  # the chain's heatmap section names its average compatibility


def _render(page: Path, tmp_path: Path, probe: str, *flags: str) -> _Elements:
    """``page`` with ``probe`` appended, as headless Chromium (with ``flags``) leaves its DOM
    after load."""
    chromium = _chromium()
    copy = page.with_name(f"index.{tmp_path.name}.html")
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", probe + "</body>"))
    done = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            *flags,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            copy.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return _parse(done.stdout)


def test_chromium_renders_tables_and_images(page: Path, tmp_path: Path):
    rendered = _render(page, tmp_path, PROBE)
    source = _parse(page.read_text(encoding="utf-8"))

    assert len(rendered.tables) == len(source.tables) >= 9
    heights = [int(t.get("data-rendered-height", 0)) for t in rendered.tables]
    assert min(heights) > 20, heights  # every table laid out with visible rows
    assert len(rendered.images) == len(source.images) == N_PLOTS
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
        "Production indexes",
        "+4.00 (+2.50 to +5.50)",  # xbt's rsum loss beyond OLD's through the IVF index
    ):
        assert expected in text, expected


TEST, HARD = "toy-s-to-m--toy-shapes--test--exact", "toy-s-to-m--toy-shapes--test-hard--exact"
# After load: sort the `test` table by I2T R@1 twice, select the test-hard group, then follow
# the recall plot's link to its rows; record each state on <body>.
INTERACT = """<script>
window.addEventListener("load", () => {
  const out = document.body.dataset;
  const table = document.getElementById("table-@TEST@");
  const header = [...table.tHead.rows[0].cells].find(th => th.textContent.trim() === "I2T R@1");
  const column = [...header.parentNode.children].indexOf(header);
  const firsts = () => [...table.tBodies[0].rows].map(r => r.cells[1].textContent.trim()).join();
  out.before = firsts();
  header.click();
  out.ascending = firsts();
  out.ariaSort = header.getAttribute("aria-sort");
  header.click();
  out.descending = firsts();
  const xbt = [...table.tBodies[0].rows].find(r => r.cells[1].textContent.trim() === "xbt");
  out.tip = xbt.cells[column].querySelector("span[title]").title;
  const select = document.getElementById("group-select");
  select.value = "@HARD@";
  select.dispatchEvent(new Event("change"));
  const shown = [...document.querySelectorAll("div.group")].filter(d => d.offsetParent !== null);
  out.visible = [...new Set(shown.map(d => d.dataset.group))].join(" ");
  out.figures = [...document.querySelectorAll("figure")].filter(f => f.offsetParent).length;
  select.value = "";
  select.dispatchEvent(new Event("change"));
  out.all = [...document.querySelectorAll("div.group")].filter(d => d.offsetParent).length;
  document.querySelector("figure[data-group='@TEST@'] a.rows").click();
  const marked = [...document.querySelectorAll("tr.hl")];
  out.highlighted = marked.map(r => r.cells[1].textContent.trim()).join();
  const kept = document.querySelector("input.deploy[value='OLD kept at query time']");
  kept.checked = false;
  kept.dispatchEvent(new Event("change"));
  const visible = [...table.tBodies[0].rows].filter(r => r.offsetParent !== null);
  out.withoutKept = visible.map(r => r.cells[1].textContent.trim()).join();
});
</script>""".replace("@TEST@", TEST).replace("@HARD@", HARD)


def test_chromium_sorts_selects_and_links_plots_to_rows(page: Path, tmp_path: Path):
    body = _render(page, tmp_path, INTERACT).body
    # references, then OLD retired (xbt, procrustes), then OLD kept at query time (slerp)
    assert body["data-before"] == "old,new,xbt,procrustes,slerp,identity"
    # I2T R@1: procrustes 38.9 < old 40.6 < slerp 42.0 < xbt 44.2 < new 55.0; n/a stays last
    assert body["data-ascending"] == "procrustes,old,slerp,xbt,new,identity"
    assert body["data-aria-sort"] == "ascending"
    assert body["data-descending"] == "new,xbt,slerp,old,procrustes,identity"
    assert body["data-tip"] == (
        "95% interval 41.70–46.70; margin over old→old +2.10 to +5.10 (paired, 95%)"
    )
    # the selector shows the test-hard sections only (its leaderboard and backfill curves)
    assert body["data-visible"] == HARD
    assert 0 < int(body["data-figures"]) < N_PLOTS
    assert int(body["data-all"]) > 4
    # the recall plot of `test` draws new, xbt, slerp and procrustes (identity is n/a)
    assert body["data-highlighted"] == "new,xbt,slerp,procrustes"
    # a reader who retires OLD hides the rows that need it at query time
    assert body["data-without-kept"] == "new,xbt,old,procrustes,identity"  # still sorted


# A result string that runs script wherever it is inserted as HTML (and contains no "/", so it
# can also be part of a file name).
MARKUP = "<img src=x onerror=document.body.setAttribute('data-pwned',1) class=injected>"


def _metrics(base: float) -> dict[str, float]:
    recalls = dict(zip(("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"),
                       (base, base + 20, base + 30, base + 5, base + 25, base + 35), strict=True))
    return recalls | {"rsum": sum(recalls.values())}  # fmt: skip


def test_every_result_string_is_text_in_chromium(tmp_path: Path):
    """Issue 24, defect 3: a pair name holding an <img onerror> reached index.html unescaped
    through the cost section's "no estimate (...)" and ran in Chromium. People publish result
    files they did not produce: every string field here holds markup."""
    from xbt_bench.methods.base import Cost
    from xbt_bench.results import RunResult
    from xbt_bench.scoring import SplitResult

    results = tmp_path / f"results{MARKUP}"
    split = f"test{MARKUP}"
    metrics = {"old->old": _metrics(20), "new->new": _metrics(30), "method->old": _metrics(25)}
    common = {"pair": f"pair{MARKUP}", "old": f"old{MARKUP}", "new": f"new{MARKUP}",
              "dataset": f"data{MARKUP}", "split": split, "seed": 0}  # fmt: skip
    RunResult(
        **common,
        method="xbt",
        splits={split: SplitResult(metrics=metrics)},
        cost=Cost(wall_time_s=1.0, device=f"cpu{MARKUP}"),
        config={"note": MARKUP},
    ).save(results)
    RunResult(
        **common,
        method="identity",
        splits={split: SplitResult(metrics={k: metrics[k] for k in ("old->old", "new->new")})},
        applicable=False,
        not_applicable_reason=f"reason{MARKUP}",
        cost=Cost(wall_time_s=0.1),
    ).save(results)
    page = publish(results, tmp_path / "site")
    rendered = _render(page, tmp_path, "")
    assert "data-pwned" not in rendered.body
    assert not [img for img in rendered.images if "injected" in img.get("class", "")]
    text = " ".join(" ".join(rendered.text).split())
    assert f"pair{MARKUP}: no estimate (" in text  # the cost section's message, as text
    for shown in (f"data{MARKUP}", f"old{MARKUP}", f"cpu{MARKUP}", f"reason{MARKUP}", split):
        assert shown in text, shown


# After load: the Pareto plot of toy-s-to-m at the page's horizon (365 days), then at 0 days;
# record the ways on its front (filled points) each time.
PARETO = """<script>
window.addEventListener("load", () => {
  const out = document.body.dataset;
  const box = document.querySelector("div.pareto");
  const front = () => [...box.querySelectorAll("circle")]
    .filter(c => c.getAttribute("fill") !== "#ffffff")
    .map(c => c.textContent.split(":")[0]).join();
  out.points = box.querySelectorAll("circle").length;
  out.front365 = front();
  const input = box.querySelector("input");
  input.value = "0";
  input.dispatchEvent(new Event("input"));
  out.front0 = front();
});
</script>"""


# After load (in a 1,400-pixel-wide window): which group the selector opens on, which tables
# scroll sideways, and the cost table's wall-time column after sorting it ascending.
LAYOUT = """<script>
window.addEventListener("load", () => {
  const out = document.body.dataset;
  out.opened = document.getElementById("group-select").value;
  out.shown = [...new Set([...document.querySelectorAll("div.group")]
    .filter(d => d.offsetParent !== null).map(d => d.dataset.group))].join(" ");
  out.wide = [...document.querySelectorAll("div.scroll")]
    .filter(d => d.scrollWidth > d.clientWidth + 1)
    .map(d => d.querySelector("table").id + ":" + d.scrollWidth).join(" ");
  const select = document.getElementById("group-select");
  select.value = "";
  select.dispatchEvent(new Event("change"));
  out.wideAll = [...document.querySelectorAll("div.scroll")]
    .filter(d => d.scrollWidth > d.clientWidth + 1)
    .map(d => d.querySelector("table").id + ":" + d.scrollWidth).join(" ");
  const cost = document.querySelector("table[id^='bill-']");
  const th = [...cost.tHead.rows[0].cells].find(h => h.textContent.startsWith("wall"));
  const column = [...th.parentNode.children].indexOf(th);
  th.click();
  out.walls = [...cost.tBodies[0].rows].map(r => r.cells[column].textContent.trim()).join("|");
});
</script>"""


def test_chromium_draws_the_pareto_plot_for_the_horizon_picked(page: Path, tmp_path: Path):
    body = _render(page, tmp_path, PARETO).body
    # 12 ways (full backfill, xbt, slerp, procrustes, 8 partial backfills) priced on the
    # measured profile: over 365 days the queries dominate (procrustes and xbt serve NEW's
    # encoder plus a map, the full backfill NEW's); over 0 days only the one-off work counts
    assert body["data-points"] == "12"
    assert body["data-front365"] == "procrustes,xbt,full backfill"
    assert body["data-front0"] == (
        "procrustes,slerp,partial backfill 10% (slerp queries),partial backfill 25% (slerp "
        "queries),partial backfill 50% (slerp queries),partial backfill 75% (slerp queries),"
        "full backfill"
    )


def test_every_string_on_the_page_is_escaped(synthetic_results: Path, tmp_path: Path):
    """A method whose name is markup (from a result file) shows as text in every section."""
    from xbt_bench.results import RunResult

    root = tmp_path / "results"
    shutil.copytree(synthetic_results, root)
    folder = root / "toy-s-to-m" / "toy-shapes"
    hostile = RunResult.from_json(folder / "procrustes.json").model_copy(
        update={"method": "<script>alert(1)</script>"}
    )
    hostile.to_json(folder / "hostile.json")
    html = publish(root, tmp_path / "site").read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # in the leaderboard and the card
    assert html.count("<script>") == 1  # the page's own
def test_chromium_opens_on_the_demo_pair_fits_1400_px_and_sorts_durations(
    page: Path, tmp_path: Path
):
    body = _render(page, tmp_path, LAYOUT, "--window-size=1400,1000").body
    # the demo pair's first split, not "all" and not the alphabetically first pair (the chain)
    assert body["data-opened"] == TEST
    assert body["data-shown"] == TEST
    assert body["data-wide"] == "" and body["data-wide-all"] == ""  # no table scrolls sideways
    seconds = {"s": 1, "min": 60, "h": 3600, "d": 86400}
    walls = [
        float(value) * seconds[unit]
        for value, unit in (cell.split() for cell in body["data-walls"].split("|"))
    ]
    assert walls == sorted(walls) and len(walls) >= 5, body["data-walls"]


def test_the_committed_page_fits_1400_px(tmp_path: Path):
    """The page `make results` committed (real columns: tuned settings, index and bill tables)
    opens on the demo pair and no table of it scrolls sideways at 1,400 px."""
    committed = Path(__file__).resolve().parents[1] / "leaderboards"
    copy = tmp_path / "leaderboards"
    shutil.copytree(committed, copy)
    body = _render(copy / "index.html", tmp_path, LAYOUT, "--window-size=1400,1000").body
    assert body["data-opened"] == TEST
    assert body["data-wide"] == "" and body["data-wide-all"] == "", body["data-wide-all"]
