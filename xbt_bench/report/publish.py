"""A static HTML page of the leaderboards and plots: no server, no scripts, no network assets.

``publish`` rebuilds the tables and plots from the result files and writes
``<output_dir>/index.html`` with inline CSS; images are referenced relatively (``plots/*.svg``),
so the folder can be copied or served as it is.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from xbt_bench.atomic import write_text
from xbt_bench.report.leaderboard import (
    APPROXIMATE_TITLE,
    LEGEND,
    NOT_HELD,
    REPORTED_NOTE,
    REPORTED_TITLE,
    Leaderboards,
    build_leaderboards,
    display_frame,
    group_title,
    reported_display,
    reported_notes,
)
from xbt_bench.report.plots import Plot, plot_results

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1400px; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; }
h3 { margin-top: 1.8rem; font-size: 1.05rem; }
p.meta, p.note { color: #57606a; font-size: 0.92rem; }
nav a { margin-right: 1rem; }
div.scroll { overflow-x: auto; }
table.board { border-collapse: collapse; font-size: 0.86rem; margin: 0.4rem 0 1rem; }
table.board th, table.board td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem;
                                 white-space: nowrap; text-align: left; }
table.board th { background: #f6f8fa; }
table.leaderboard td { text-align: right; }
table.leaderboard td:first-child, table.leaderboard td:nth-child(2),
table.leaderboard td:last-child { text-align: left; }
span.held { color: #1a7f37; font-weight: 600; } span.missed { color: #cf222e; font-weight: 600; }
section.reported { background: #fff8c5; border: 1px solid #d4a72c; padding: 0.2rem 1rem 1rem; }
figure { display: inline-block; margin: 0.5rem 1rem 1.5rem 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 0.88rem; color: #57606a; }
"""


def _figure(plot: Plot, output_dir: Path) -> str:
    svg = plot.file("svg").relative_to(output_dir).as_posix()
    png = plot.file("png").relative_to(output_dir).as_posix()
    caption = html.escape(plot.caption)
    return (
        f'<figure><img src="{html.escape(svg)}" alt="{caption}">'
        f'<figcaption>{caption} (<a href="{html.escape(png)}">PNG</a>)</figcaption></figure>'
    )


def _mark(mark: str) -> str:
    return f'<span class="{"missed" if mark == NOT_HELD else "held"}">{mark}</span>'


def _table(frame: pd.DataFrame, classes: str, **options: object) -> str:
    table = frame.to_html(classes=classes, border=0, na_rep="–", **options)
    return f'<div class="scroll">{table}</div>'  # wide tables scroll, the page does not


def _leaderboard_sections(boards: Leaderboards) -> str:
    parts = []
    for frame, level in ((boards.exact, "h3"), (boards.approximate, "h4")):
        if frame is boards.approximate and not frame.empty:
            parts.append(f"<h3>{html.escape(APPROXIMATE_TITLE)}</h3>")
        for key, group in boards.groups(frame):
            first = group.iloc[0]
            shown = display_frame(group, mark=_mark, escape=html.escape)
            parts += [
                f"<{level}>{html.escape(group_title(key))}</{level}>",
                f'<p class="note">old <code>{html.escape(first["old"])}</code> → new '
                f"<code>{html.escape(first['new'])}</code></p>",
                _table(shown, "board leaderboard", index=False, escape=False),
            ]
    if not boards.chains.empty:
        parts += [
            "<h3>Chains: average compatibility</h3>",
            _table(boards.chains, "board", index=False, float_format="{:.2f}".format),
        ]
        for title, matrix in boards.chain_matrices():
            parts += [f"<h4>{html.escape(title)}</h4>", _table(matrix, "board")]
    return "\n".join(parts)


def page(boards: Leaderboards, plots: list[Plot], output_dir: Path, results_dir: Path) -> str:
    """The HTML text of the published page."""
    reported = _table(reported_display(boards.reported), "board reported", index=False)
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in reported_notes(boards.reported))
    newest = max(r.date for r in boards.results).strftime("%Y-%m-%d %H:%M UTC")
    figures = "\n".join(_figure(plot, output_dir) for plot in plots)
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
<nav><a href="#leaderboards">Leaderboards</a><a href="#plots">Plots</a>
<a href="#reported">{html.escape(REPORTED_TITLE)}</a></nav>
<section id="leaderboards">
<h2>Leaderboards</h2>
<p class="note">{html.escape(LEGEND)}</p>
{_leaderboard_sections(boards)}
</section>
<section id="plots">
<h2>Plots</h2>
{figures or '<p class="note">No plots: no exact-search results.</p>'}
</section>
<section id="reported" class="reported">
<h2>{html.escape(REPORTED_TITLE)}</h2>
<p class="note">{html.escape(REPORTED_NOTE)}</p>
{reported}
<ul>{notes}</ul>
</section>
</body>
</html>
"""


def publish(results_dir: str | Path, output_dir: str | Path) -> Path:
    """Rebuild leaderboards and plots from ``results_dir`` and write ``<output_dir>/index.html``."""
    results_dir, output_dir = Path(results_dir), Path(output_dir)
    boards = build_leaderboards(results_dir, output_dir)
    plots = plot_results(boards.results, output_dir)
    path = output_dir / "index.html"
    write_text(path, page(boards, plots, output_dir, results_dir))
    return path
