"""One self-contained HTML page: plotly.js inlined once, every figure as a div."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__: list[str] = []


class Section(NamedTuple):
    """A titled part of the page: a figure, or a note saying why it is missing."""

    key: str
    title: str
    intro: str
    figure: go.Figure | None = None
    note: str | None = None


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; }
nav a { margin-right: 1rem; }
section { margin-top: 2rem; }
p.intro { color: #555; margin: 0.2rem 0 0.6rem; }
p.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: 0.5rem 1rem; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dl.summary dt { font-weight: 600; }
dl.summary dd { margin: 0; }
div.table-wrap { max-height: 32rem; overflow: auto; border: 1px solid #ddd; }
table.trials { border-collapse: collapse; font-size: 0.8rem; white-space: nowrap; }
table.trials th, table.trials td { padding: 0.15rem 0.5rem; border-bottom: 1px solid #eee; text-align: right; }
table.trials th { position: sticky; top: 0; background: #f4f4f4; cursor: pointer; }
table.trials td:last-child, table.trials td:nth-last-child(2) { text-align: left; }
"""

# Click a column header to sort by it (numbers numerically, the rest as text).
_SORT_JS = """
document.querySelectorAll("table.trials").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("data-sort") !== "asc";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-sort"); });
      th.setAttribute("data-sort", asc ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _figure_html(figure: go.Figure, div_id: str) -> str:
    return str(figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=_PLOT_CONFIG))


def _table_html(table: pd.DataFrame) -> str:
    def fmt(v: float) -> str:
        # Large numbers (bytes, MACs) in full: exponents read badly and sort wrongly as text.
        return f"{v:.0f}" if abs(v) >= 1e5 else f"{v:.6g}"

    return str(table.to_html(index=False, na_rep="", border=0, classes="trials", float_format=fmt, escape=True))


def render_page(
    *,
    title: str,
    summary: Sequence[tuple[str, str]],
    sections: Sequence[Section],
    table: pd.DataFrame,
    csv_name: str,
) -> str:
    """The whole page as a string (plotly.js once in the head, then the sections)."""
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty icon: otherwise the browser asks the disk (or a server) for favicon.ico.
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<dl class="summary">',
        *(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in summary),
        "</dl>",
        "<nav>",
        *(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections),
        '<a href="#trials">Trials</a>',
        "</nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>')
        if s.intro:
            parts.append(f'<p class="intro">{html.escape(s.intro)}</p>')
        if s.note:
            parts.append(f'<p class="note">{html.escape(s.note)}</p>')
        if s.figure is not None:
            parts.append(f'<div class="figure">{_figure_html(s.figure, f"fig-{s.key}")}</div>')
        parts.append("</section>")
    parts += [
        '<section id="trials"><h2>Trials</h2>',
        f'<p class="intro">{len(table)} trials; click a column to sort. '
        f'Also saved as <a href="{html.escape(csv_name)}">{html.escape(csv_name)}</a>.</p>',
        f'<div class="table-wrap">{_table_html(table)}</div>',
        "</section>",
        f"<script>{_SORT_JS}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)
