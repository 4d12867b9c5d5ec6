"""A static HTML page of the leaderboards and plots to explore: no server, no network assets.

``publish`` rebuilds the tables and plots from the result files and writes
``<output_dir>/index.html`` with inline CSS and a small inline script; images are referenced
relatively (``plots/*.svg``), so the folder can be copied, served, or opened from ``file://``.
The whole set (tables, plots, page) is built in a new folder that replaces ``<output_dir>`` at
once, and every string from a result is escaped: result files may come from anyone.
The script makes every table sortable by any column (click its header), shows one
(pair, dataset, split) at a time through a selector, highlights the rows behind a plot
when its "rows" link is followed, and draws each pair's Pareto plot (recall against total cost)
for the horizon the reader types. Without JavaScript the page shows everything, unsorted, and
no Pareto plot. Every string from a result file is escaped.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from xbt_bench.atomic import replaced_folder, write_text
from xbt_bench.errors import XbtError
from xbt_bench.methods import GROUPS
from xbt_bench.report.cost import (
    ESTIMATE_NOTE,
    bill,
    bill_inputs,
    bills_frame,
    full_result_set,
    throughput_doubts,
    upgrade_ways,
)
from xbt_bench.report.decide import (
    RANK_RULE,
    card_frame,
    decide,
    pareto_points,
    recommendation,
    today_line,
)
from xbt_bench.report.leaderboard import (
    BACKFILL_LEGEND,
    BACKFILL_TITLE,
    DIAGNOSTICS_LEGEND,
    DIAGNOSTICS_TITLE,
    EXACT,
    FULL,
    INDEX_LEGEND,
    INDEX_TITLE,
    LEGEND,
    NOT_HELD,
    QUICK_MARK,
    QUICK_NOTE,
    REPORTED_NOTE,
    REPORTED_TITLE,
    TABLE_FILES,
    Leaderboards,
    backfill_display,
    build_leaderboards,
    chain_metric,
    display_frame,
    group_title,
    index_display,
    index_searches,
    matrix_frame,
    reported_display,
    reported_notes,
    runs_of,
    split_size,
    tuning_note,
)
from xbt_bench.report.plots import Plot, plot_results

# The deployment the page prices (`xbt-bench decide --pair P --gallery-size N
# --queries-per-day Q --horizon-days D` for yours).
PAGE_GALLERY_SIZE = 100_000_000
PAGE_QUERIES_PER_DAY = 10_000_000
PAGE_HORIZON_DAYS = 365
# The pair `make demo` runs: the page opens on its table when the results have it.
DEMO_PAIR = "toy-s-to-m"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1400px; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; }
h3 { margin-top: 1.8rem; font-size: 1.05rem; }
p.meta, p.note { color: #57606a; font-size: 0.92rem; }
nav a { margin-right: 1rem; }
div.controls { position: sticky; top: 0; background: #ffffffee; padding: 0.5rem 0;
               border-bottom: 1px solid #d0d7de; z-index: 1; }
div.scroll { overflow-x: auto; }
table.board { border-collapse: collapse; font-size: 0.76rem; margin: 0.4rem 0 1rem;
              max-width: 100%; }
table.board th, table.board td { border: 1px solid #d0d7de; padding: 0.15rem 0.2rem;
                                 text-align: left; vertical-align: top; }
table.board td:first-child, table.leaderboard td:nth-child(2) { white-space: nowrap; }
table.leaderboard td:last-child { overflow-wrap: anywhere; min-width: 6rem; }
span.quick { background: #fff1e5; color: #953800; border: 1px solid #ffb77c;
             border-radius: 0.3rem; padding: 0 0.25rem; font-weight: 600; }
p.quick { background: #fff1e5; border: 1px solid #ffb77c; padding: 0.4rem 0.6rem; }
table.board th { background: #f6f8fa; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " ▲"; font-size: 0.7em; }
table.sortable th[aria-sort="descending"]::after { content: " ▼"; font-size: 0.7em; }
table.leaderboard td { text-align: right; }
table.leaderboard td:first-child, table.leaderboard td:nth-child(2),
table.leaderboard td:last-child { text-align: left; }
tr.hl td { background: #fff8c5; }
span[title] { border-bottom: 1px dotted #8c959f; cursor: help; }
span.held { color: #1a7f37; font-weight: 600; } span.missed { color: #cf222e; font-weight: 600; }
section.reported { background: #fff8c5; border: 1px solid #d4a72c; padding: 0.2rem 1rem 1rem; }
figure { display: inline-block; margin: 0.5rem 1rem 1.5rem 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 0.88rem; color: #57606a; }
.hidden { display: none !important; }
"""

# Sorting: a cell sorts by its leading number (k/M/G suffixes scaled, durations in s, min, h, d
# as seconds), else by its text; empty, "–" and "n/a" cells go last in either direction.
# Selecting: elements with data-group are shown when the selector is on "all" or on their group
# (the page opens on the demo pair's group). Pareto plots: each div.pareto's points
# (JSON in data-points) are drawn as SVG at the horizon its input holds, redrawn on change; a
# free way is drawn six decades below the dearest one on the log axis.
SCRIPT = """
(function () {
  "use strict";
  function sortKey(cell) {
    var text = cell.textContent.trim();
    if (text === "" || text === "–" || text === "n/a") return null;
    var m = text.match(/^([-+−]?\\d[\\d,]*\\.?\\d*(?:e[-+]?\\d+)?)\\s*(min|[kMGshd])?(?![A-Za-z])/);
    if (!m) return text.toLowerCase();
    var scale = {k: 1e3, M: 1e6, G: 1e9, s: 1, min: 60, h: 3600, d: 86400}[m[2]] || 1;
    return parseFloat(m[1].replace(/,/g, "").replace("−", "-")) * scale;
  }
  function compare(a, b) {
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }
  function sortBy(table, th) {
    var column = Array.prototype.indexOf.call(th.parentNode.children, th);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      return {row: row, i: i, key: sortKey(row.cells[column])};
    });
    rows.sort(function (a, b) {
      if (a.key === null || b.key === null) {
        return a.key === b.key ? a.i - b.i : a.key === null ? 1 : -1;
      }
      var c = compare(a.key, b.key);
      return (ascending ? c : -c) || a.i - b.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th) {
      th.title = "sort by this column";
      th.addEventListener("click", function () { sortBy(table, th); });
    });
  });
  var select = document.getElementById("group-select");
  function show() {
    document.querySelectorAll("[data-group]").forEach(function (el) {
      var groups = el.getAttribute("data-group").split(" ");
      el.classList.toggle("hidden", !!select.value && groups.indexOf(select.value) < 0);
    });
  }
  if (select) { select.addEventListener("change", show); show(); }
  function columnOf(table, name) {
    var heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
      return th.textContent.trim();
    });
    return heads.indexOf(name);
  }
  document.querySelectorAll("a.rows").forEach(function (link) {
    link.addEventListener("click", function () {
      var methods = link.getAttribute("data-methods").split(" ");
      var table = document.getElementById(link.getAttribute("href").slice(1));
      document.querySelectorAll("tr.hl").forEach(function (r) { r.classList.remove("hl"); });
      if (!table) return;
      var column = Math.max(columnOf(table, "method"), 0);
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var method = row.cells[column].textContent.trim().split(" ")[0];  // "xbt (quick)"
        if (methods.indexOf(method) >= 0) row.classList.add("hl");
      });
    });
  });
  // Deployment groups a reader cannot deploy (e.g. OLD kept at query time) can be hidden.
  var deploy = document.querySelectorAll("input.deploy");
  function showGroups() {
    var hidden = [];
    deploy.forEach(function (box) { if (!box.checked) hidden.push(box.value); });
    document.querySelectorAll("table.leaderboard").forEach(function (table) {
      var column = columnOf(table, "group");
      if (column < 0) return;
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var group = row.cells[column].textContent.trim();
        row.classList.toggle("hidden", hidden.indexOf(group) >= 0);
      });
    });
  }
  deploy.forEach(function (box) { box.addEventListener("change", showGroups); });
  var NS = "http://www.w3.org/2000/svg";
  function node(svg, tag, attrs, text) {
    var el = document.createElementNS(NS, tag);
    for (var k in attrs) el.setAttribute(k, attrs[k]);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
    return el;
  }
  function pareto(box) {
    var points = JSON.parse(box.getAttribute("data-points"));
    var unit = box.getAttribute("data-unit");
    var input = box.querySelector("input"), pick = box.querySelector("select");
    var svg = box.querySelector("svg"), W = 640, H = 360, L = 60, B = 40;
    function draw() {
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      var days = Math.max(0, parseFloat(input.value) || 0), key = pick.value;
      var pts = points.map(function (p) {
        return {p: p, x: p.one_off + days * p.per_day, y: p[key]};
      }).filter(function (q) { return q.y !== undefined; });
      if (!pts.length) return;
      var top = Math.max.apply(null, pts.map(function (q) { return q.x; }));
      pts.forEach(function (q) { q.x = Math.max(q.x, 1e-6 * top, 1e-12); });
      var lx = pts.map(function (q) { return Math.log10(q.x); });
      var ys = pts.map(function (q) { return q.y; });
      var x0 = Math.min.apply(null, lx) - 0.1, x1 = Math.max.apply(null, lx) + 0.1;
      var y0 = Math.min.apply(null, ys) - 1, y1 = Math.max.apply(null, ys) + 1;
      function X(v) { return L + (Math.log10(v) - x0) / (x1 - x0) * (W - L - 10); }
      function Y(v) { return H - B - (v - y0) / (y1 - y0) * (H - B - 10); }
      node(svg, "line", {x1: L, y1: H - B, x2: W - 10, y2: H - B, stroke: "#57606a"});
      node(svg, "line", {x1: L, y1: 10, x2: L, y2: H - B, stroke: "#57606a"});
      node(svg, "text", {x: W / 2, y: H - 8, "text-anchor": "middle", "font-size": 12},
           "total cost over " + days + " days (" + unit + ", log scale)");
      node(svg, "text", {x: 14, y: H / 2, "font-size": 12, "text-anchor": "middle",
                         transform: "rotate(-90 14 " + H / 2 + ")"},
           pick.options[pick.selectedIndex].text);
      for (var e = Math.floor(x0); e <= x1; e++) {
        [1, 2, 5].forEach(function (m) {
          var v = m * Math.pow(10, e);
          if (Math.log10(v) < x0 || Math.log10(v) > x1) return;
          node(svg, "text", {x: X(v), y: H - B + 14, "font-size": 10, "text-anchor": "middle"},
               v >= 1 ? v.toLocaleString("en") : v.toPrecision(1));
        });
      }
      for (var i = 0; i <= 4; i++) {
        var v = y0 + 1 + i * (y1 - y0 - 2) / 4;
        node(svg, "text", {x: L - 4, y: Y(v), "font-size": 10, "text-anchor": "end"}, v.toFixed(1));
      }
      pts.sort(function (a, b) { return a.x - b.x || b.y - a.y; });
      var best = -Infinity, front = [];
      pts.forEach(function (q) {
        q.front = q.y > best;
        if (q.front) { best = q.y; front.push(q); }
      });
      node(svg, "polyline", {fill: "none", stroke: "#0969da", points: front.map(function (q) {
        return X(q.x) + "," + Y(q.y); }).join(" ")});
      pts.forEach(function (q) {
        var c = node(svg, "circle", {cx: X(q.x), cy: Y(q.y), r: 5, stroke: "#0969da",
                                     fill: q.front ? "#0969da" : "#ffffff"});
        var tip = q.p.way + ": " + q.y.toFixed(1) + ", " + q.x.toPrecision(3) + " " + unit;
        node(c, "title", {}, tip);
        if (q.front) node(svg, "text", {x: X(q.x) + 7, y: Y(q.y) - 6, "font-size": 10}, q.p.way);
      });
    }
    input.addEventListener("input", draw);
    pick.addEventListener("change", draw);
    draw();
  }
  document.querySelectorAll("div.pareto").forEach(pareto);
})();
"""


def group_id(key: Sequence[str]) -> str:
    """A safe id for a (pair, dataset, split, search, runs) group, used by the selector and
    links (full runs' groups keep the id of their first four parts)."""
    parts = list(key[:4]) + [part for part in key[4:] if part != FULL]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "--".join(parts))


QUICK_BADGE = ' <span class="quick" title="a --quick run: a smoke run, not a result">quick</span>'


def _mark(mark: str) -> str:
    return f'<span class="{"missed" if mark == NOT_HELD else "held"}">{mark}</span>'


def _tip(text: str, tooltip: str) -> str:
    return f'<span title="{html.escape(tooltip)}">{text}</span>' if tooltip else text


def _table(frame: pd.DataFrame, classes: str, table_id: str = "", **options: object) -> str:
    table = frame.to_html(classes=f"{classes} sortable", border=0, na_rep="–", **options)
    if table_id:
        table = table.replace("<table ", f'<table id="{table_id}" ', 1)
    return f'<div class="scroll">{table}</div>'  # wide tables scroll, the page does not


def _figure(plot: Plot, output_dir: Path, table: str | None) -> str:
    svg = plot.file("svg").relative_to(output_dir).as_posix()
    png = plot.file("png").relative_to(output_dir).as_posix()
    caption = html.escape(plot.caption)
    group = f' data-group="{group_id(plot.group)}"' if plot.group else ""
    link = ""
    if table is not None:
        methods = html.escape(" ".join(plot.methods))
        link = (
            f' · <a class="rows" href="#{table}" data-methods="{methods}">rows behind this plot</a>'
        )
    return (
        f'<figure{group}><img src="{html.escape(svg)}" alt="{caption}">'
        f'<figcaption>{caption} (<a href="{html.escape(png)}">PNG</a>){link}</figcaption>'
        "</figure>"
    )


class _Page:
    """The page's parts, with the tables plots link to (``tables[(kind, group id)]``)."""

    def __init__(self, boards: Leaderboards, plots: list[Plot], output_dir: Path) -> None:
        self.boards = boards
        self.plots = plots
        self.output_dir = output_dir
        self.placed: set[int] = set()

    def figures(
        self,
        group: tuple,
        kinds: Sequence[str],
        table: str | None,
        methods: tuple[str, ...] | None = None,
    ) -> str:
        """The plots of ``group`` of the given kinds (and of exactly ``methods`` when given),
        linked to ``table``."""
        out = []
        for i, plot in enumerate(self.plots):
            mine = tuple(plot.group) == tuple(group) and methods in (None, plot.methods)
            if i not in self.placed and plot.kind in kinds and mine:
                self.placed.add(i)
                out.append(_figure(plot, self.output_dir, table))
        return "\n".join(out)

    def leaderboards(self) -> str:
        parts = []
        boards = self.boards
        for frame, level in ((boards.exact, "h3"), (boards.indexes, "h4")):
            if frame is boards.indexes and not frame.empty:
                parts += [
                    f"<h3>{html.escape(INDEX_TITLE)}</h3>",
                    f'<p class="note">{html.escape(INDEX_LEGEND)}</p>',
                ]
            show = display_frame if frame is boards.exact else index_display
            for key, group in boards.groups(frame):
                gid = group_id(key)
                first = group.iloc[0]
                shown = show(group, mark=_mark, escape=html.escape, tip=_tip)
                shown["method"] = shown["method"].str.replace(f" {QUICK_MARK}", QUICK_BADGE)
                searched = "" if frame is boards.exact else f"; {index_searches(group)}"
                parts += [
                    f'<div class="group" data-group="{gid}">',
                    f'<{level} id="group-{gid}">{html.escape(group_title(key))}</{level}>',
                    f'<p class="note">old <code>{html.escape(first["old"])}</code> → new '
                    f"<code>{html.escape(first['new'])}</code>{split_size(group)}"
                    f"{html.escape(searched)}</p>",
                    _table(shown, "board leaderboard", f"table-{gid}", index=False, escape=False),
                    self.figures(key, ("recall", "gain"), f"table-{gid}"),
                    "</div>",
                ]
        return "\n".join(parts)

    def backfill(self) -> str:
        curves = self.boards.backfill
        if curves.empty:
            return (
                '<p class="note">No partial-backfill curves in these results: run '
                "<code>xbt-bench backfill --pair NAME</code>.</p>"
            )
        parts = [f'<p class="note">{html.escape(BACKFILL_LEGEND)}</p>']
        for key, group in self.boards.groups(curves):
            gid = group_id(key)
            parts += [
                f'<div class="group" data-group="{gid}">',
                f"<h3>{html.escape(group_title(key))}</h3>",
                _table(backfill_display(group), "board", f"backfill-{gid}", index=False),
                self.figures(key, ("backfill",), f"backfill-{gid}"),
                "</div>",
            ]
        return "\n".join(parts)

    def chains(self) -> str:
        boards = self.boards
        if boards.chains.empty:
            return (
                '<p class="note">No chain results: run <code>xbt-bench run --pair '
                "toy-s-m-l</code> for the toy chain's compatibility matrix.</p>"
            )
        groups = " ".join(
            group_id((r["pair"], r["dataset"], r["split"], r["search"], r["runs"]))
            for _, r in boards.chains.iterrows()
        )
        parts = [
            f'<div data-group="{groups}">',
            _table(boards.chains, "board", "chains", index=False, float_format="{:.2f}".format),
            "</div>",
        ]
        for result in boards.results:
            for split, data in result.splits.items():
                if data.chain_matrix is None:
                    continue
                key = (result.pair, result.dataset, split, EXACT, runs_of(result))
                gid = group_id(key)
                metric = chain_metric(data.chain_matrix)
                ac = data.chain_matrix.average_compatibility[metric]
                table = f"chain-{gid}-{result.method}"
                parts += [
                    f'<div class="group" data-group="{gid}">',
                    f"<h3>{html.escape(group_title(key))} · {html.escape(result.method)}: "
                    f"{html.escape(metric)}, AC = {ac:.2f}</h3>",
                    _table(matrix_frame(data.chain_matrix, metric), "board", table),
                    self.figures(key, ("chain",), table, (result.method,)),
                    "</div>",
                ]
        return "\n".join(parts)

    def cost(self) -> str:
        parts = [
            f'<p class="note">{html.escape(ESTIMATE_NOTE)} A gallery of '
            f"{PAGE_GALLERY_SIZE:,} items and {PAGE_QUERIES_PER_DAY:,} queries a day, priced "
            "with the rates measured on the run's device; <code>xbt-bench decide --pair NAME "
            "--gallery-size N --queries-per-day Q [--hardware FILE.toml]</code> for yours.</p>",
            f'<p class="note">{html.escape(RANK_RULE)}</p>',
        ]
        for pair in dict.fromkeys(r.pair for r in self.boards.results):
            try:
                parts.append(self.decision(pair))
            except XbtError as error:
                reason = html.escape(f"{pair}: no estimate ({error}).")
                parts.append(f'<p class="note">{reason}</p>')
        return "\n".join(parts)

    def decision(self, pair: str) -> str:
        """``pair``'s decision card, its Pareto plot (drawn by the page's script for the
        horizon the reader picks) and its whole bill."""
        found = full_result_set(self.boards.found, pair)
        inputs = bill_inputs(
            found, pair, PAGE_GALLERY_SIZE, queries_per_day=PAGE_QUERIES_PER_DAY,
            horizon_days=PAGE_HORIZON_DAYS,
        )  # fmt: skip
        options = decide(found, pair, inputs.scale, inputs.profile)
        bills = [
            bill(way, inputs.scale, inputs.profile, inputs.gallery)
            for way in upgrade_ways(found, pair)
        ]
        pair_results = [r for r in found.runs if r.pair == pair]
        groups = dict.fromkeys(
            group_id((pair, r.dataset, s, EXACT, runs_of(r)))
            for r in pair_results
            for s in r.splits
        )
        gid = group_id((pair,))
        profile = inputs.profile
        unit = profile.currency if profile.price is not None else "device-hours"
        points = html.escape(json.dumps(pareto_points(options, profile)), quote=True)
        doubts = throughput_doubts(found.runs, pair)
        lines = [
            *inputs.footer(f for o in options for f in (*o.bill.figures(), o.total)),
            *(f"{key}: {doubt}" for key, doubt in doubts.items() if key in profile.rates),
        ]
        footer = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        return "\n".join(
            [
                f'<div data-group="{" ".join(groups)}">',
                f"<h3>{html.escape(pair)}: decision card (estimate, {html.escape(profile.label)})"
                "</h3>",
                f'<p class="note">{html.escape(today_line(found, pair, inputs.scale))}</p>',
                f"<p><strong>{html.escape(recommendation(options))}</strong></p>",
                _table(card_frame(options, inputs.scale, profile), "board", f"decision-{gid}",
                       index=False),  # fmt: skip
                f'<div class="pareto" data-points="{points}" data-unit="{html.escape(unit)}" '
                f'data-days="{PAGE_HORIZON_DAYS}"><label>Total cost over <input type="number" '
                f'min="0" step="30" value="{PAGE_HORIZON_DAYS}"> days, recall: <select>'
                '<option value="t2i_r1">T2I R@1</option><option value="i2t_r1">I2T R@1</option>'
                '</select></label><svg width="640" height="360" role="img"></svg>'
                '<p class="note">Pareto plot: each way\'s R@1 against its total cost over the '
                "horizon (one-off work plus the queries served), log scale; filled points are "
                "the Pareto front (no other way is cheaper and better). It needs JavaScript.</p>"
                "</div>",
                f"<h4>{html.escape(pair)}: the whole bill of each way</h4>",
                _table(bills_frame(bills, profile, inputs.scale), "board", f"bill-{gid}",
                       index=False),  # fmt: skip
                f"<ul>{footer}</ul>",
                "</div>",
            ]
        )

    def other_plots(self) -> str:
        out = []
        for i, plot in enumerate(self.plots):
            if i in self.placed:
                continue
            gid = group_id(plot.group) if plot.group else ""
            table = f"table-{gid}" if gid else None
            out.append(_figure(plot, self.output_dir, table))
        return "\n".join(out) or '<p class="note">No other plots.</p>'


def _group_boxes() -> str:
    """A checkbox per deployment group (references too): unchecked groups' rows are hidden."""
    return " ".join(
        f'<label><input type="checkbox" class="deploy" value="{html.escape(name)}" checked> '
        f"{html.escape(name)}</label>"
        for name in (*GROUPS, "reference")
    )


def opening_group(keys: Sequence[tuple]) -> tuple | None:
    """The group the page opens on: the demo pair's (``make demo``: :data:`DEMO_PAIR`) first
    split of full runs with exact search when the results have it, else the first group."""
    for key in keys:
        if key[0] == DEMO_PAIR and key[3] == EXACT and key[4] == FULL:
            return key
    return keys[0] if keys else None


def _options(boards: Leaderboards) -> str:
    keys = [key for frame in (boards.exact, boards.indexes) for key, _ in boards.groups(frame)]
    opening = opening_group(keys)
    return '<option value="">all</option>' + "".join(
        f'<option value="{group_id(key)}"{" selected" if key == opening else ""}>'
        f"{html.escape(group_title(key))}</option>"
        for key in keys
    )


def page(boards: Leaderboards, plots: list[Plot], output_dir: Path, results_dir: Path) -> str:
    """The HTML text of the published page."""
    parts = _Page(boards, plots, output_dir)
    leaderboards, backfill = parts.leaderboards(), parts.backfill()
    chains, cost, others = parts.chains(), parts.cost(), parts.other_plots()
    reported = _table(reported_display(boards.reported), "board reported", "reported-table",
                      index=False)  # fmt: skip
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in reported_notes(boards.reported))
    diagnostics = (
        _table(boards.diagnostics, "board", "diagnostics-table", index=False)
        if not boards.diagnostics.empty
        else '<p class="note">No diagnostics: run <code>xbt-bench pairs diagnose PAIR</code>.</p>'
    )
    newest = max(r.date for r in boards.results).strftime("%Y-%m-%d %H:%M UTC")
    quick_note = (
        f'<p class="quick">{QUICK_BADGE} {html.escape(QUICK_NOTE)}.</p>' if boards.has_quick else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>xbt-bench leaderboard</title>
<style>{CSS}</style>
</head>
<body>
<h1>xbt-bench leaderboard</h1>
<p class="meta">Backward-compatible upgrades of vision-language models. Built from
{len(boards.results)} result files (the newest from {newest}) in
<code>{html.escape(str(results_dir))}</code>; the tables are also in this folder as CSV and
Markdown.</p>
<nav><a href="#leaderboards">Leaderboards</a><a href="#backfill">Partial backfill</a>
<a href="#cost">Cost</a><a href="#chains">Chains</a><a href="#diagnostics">Diagnostics</a>
<a href="#plots">More plots</a>
<a href="#reported">{html.escape(REPORTED_TITLE)}</a></nav>
<div class="controls"><label>Pair · dataset · split:
<select id="group-select">{_options(boards)}</select></label>
<span class="note">Click a column header to sort; hover a recall for its 95% intervals.</span>
<br><span>Show: {_group_boxes()}</span>
</div>
<section id="leaderboards">
<h2>Leaderboards</h2>
<p class="note">{html.escape(LEGEND)}</p>
<p class="note">{html.escape(tuning_note(boards.results))}</p>
{quick_note}
{leaderboards}
</section>
<section id="backfill">
<h2>{html.escape(BACKFILL_TITLE)}</h2>
{backfill}
</section>
<section id="cost">
<h2>Cost of the upgrade and one decision per pair (estimate)</h2>
{cost}
</section>
<section id="chains">
<h2>Chains: compatibility matrices</h2>
{chains}
</section>
<section id="diagnostics">
<h2>{html.escape(DIAGNOSTICS_TITLE)}</h2>
<p class="note">{html.escape(DIAGNOSTICS_LEGEND)}</p>
{diagnostics}
</section>
<section id="plots">
<h2>More plots</h2>
{others}
</section>
<section id="reported" class="reported">
<h2>{html.escape(REPORTED_TITLE)}</h2>
<p class="note">{html.escape(REPORTED_NOTE)}</p>
{reported}
<ul>{notes}</ul>
</section>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _page_file(name: str) -> bool:
    """Whether a file of a page folder is the page set's (the rest is a user's own, kept)."""
    return name in ("index.html", "leaderboard.md", "plots", *TABLE_FILES)


def publish(results_dir: str | Path, output_dir: str | Path, rank_quick: bool = False) -> Path:
    """Rebuild leaderboards and plots from ``results_dir`` and write ``<output_dir>/index.html``
    with them (--quick results in tables and plots of their own unless ``rank_quick``): the page
    set is built in a new folder that then replaces ``output_dir`` as a
    whole (:func:`~xbt_bench.atomic.replaced_folder`), so an interrupted publish leaves the
    previous set intact and its temporary files are removed by the next one."""
    results_dir, output_dir = Path(results_dir), Path(output_dir)
    with replaced_folder(output_dir, owned=_page_file) as staged:
        boards = build_leaderboards(results_dir, staged, rank_quick)
        plots = plot_results(boards.found, staged, rank_quick)
        write_text(staged / "index.html", page(boards, plots, staged, results_dir))
    return output_dir / "index.html"
