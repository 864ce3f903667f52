"""Self-contained HTML pages: plotly.js inlined once, no CDN, no requirejs, no network.

>>> page = Page("Lens", header={"model": "tiny-gloss-lm"})          # doctest: +SKIP
>>> page.add(Section("Rankings", [fig, "<p>note</p>"]))              # doctest: +SKIP
>>> page.write("out/lens.html")                                      # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import plotly.graph_objects as go

from workbench.artifacts import atomic_write_bytes

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#fafafa}
header{background:#14213d;color:#fff;padding:16px 28px}
header h1{margin:0 0 6px 0;font-size:22px}
header table{border-collapse:collapse;font-size:13px}
header td{padding:1px 14px 1px 0;vertical-align:top}
nav{padding:8px 28px;background:#e5e5e5;font-size:14px;position:sticky;top:0;z-index:10;
box-shadow:0 1px 3px rgba(0,0,0,.15)}
nav a{margin-right:14px;color:#14213d}
main{padding:8px 28px 40px 28px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:18px 0;padding:8px 18px}
section h2{font-size:18px;margin:10px 0}
.note{color:#555;font-size:13px;max-width:70em}
.warn{color:#8a3b00;background:#fff4e5;border-left:3px solid #e08a00;padding:4px 8px;font-size:13px;max-width:70em}
table.data{border-collapse:collapse;font-size:13px;margin:8px 0}
table.data td,table.data th{border:1px solid #ddd;padding:2px 8px;text-align:right}
table.data th{background:#f0f0f0}
.figure{margin:6px 0;max-width:100%}
.wb-scroll{overflow-x:auto;max-width:100%;border:1px solid #eee}
section{scroll-margin-top:44px}.figure{scroll-margin-top:44px}
"""


# Offline in the sense a researcher means: no control that can send the data anywhere. plotly.js
# shows a "Share chart" (upload to Plotly Cloud) button unless told not to, and its logo links out.
CONFIG = {"displaylogo": False, "responsive": True, "showSendToCloud": False,
          "plotlyServerURL": "",
          "modeBarButtonsToRemove": ["sendDataToCloud", "sendChartToCloud", "editInChartStudio"]}


@cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


Item = go.Figure | str


def json_for_script(obj) -> str:
    """JSON safe inside ``<script>``: a literal "</script>" in a token would end the tag."""
    return json.dumps(obj).replace("<", "\\u003c")


def wide(fig: go.Figure, n_columns: int, cell_px: int, margin_px: int = 200) -> go.Figure:
    """Give ``fig`` fixed-width columns (``cell_px`` each): drawn at its own width inside a
    horizontally scrolling box, so 1,000 positions stay readable and the page never scrolls
    sideways."""
    width = max(700, margin_px + n_columns * cell_px)
    meta = dict(fig.layout.meta or {}) | {"wb_scroll": width > 1300}
    fig.update_layout(width=width, autosize=False, meta=meta)
    if meta["wb_scroll"]:  # a centred title would sit out of view, far to the right
        fig.update_layout(title_x=0.005, title_xanchor="left")
    return fig


def figure_html(fig: go.Figure, anchor: str | None = None) -> str:
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    scroll = bool(meta.get("wb_scroll"))
    config = {**CONFIG, "responsive": not scroll and fig.layout.width is None}
    body = fig.to_html(full_html=False, include_plotlyjs=False, config=config,
                       div_id=meta.get("wb_id"))
    title = fig.layout.title.text if fig.layout.title and fig.layout.title.text else ""
    where = f' id="{anchor}"' if anchor else ""
    return (f'<div class="figure{" wb-scroll" if scroll else ""}"{where} '
            f'data-wb-title="{html.escape(_plain(title), quote=True)}">{body}</div>')


def _short_title(fig: go.Figure, i: int) -> str:
    title = _plain(fig.layout.title.text if fig.layout.title and fig.layout.title.text else "")
    title = title.split(" (")[0].strip()
    return (title[:38] + "…" if len(title) > 39 else title) or f"figure {i + 1}"


def _plain(text: str) -> str:
    """A plotly title as plain text (its HTML tags dropped, entities kept escaped once)."""
    import re

    return html.unescape(re.sub(r"<[^>]+>", " ", text or "")).strip()


@dataclass
class Section:
    """A titled block of figures and HTML snippets (strings are inserted as-is)."""

    title: str
    items: list[Item] = field(default_factory=list)
    note: str = ""
    # JavaScript libraries the items call (custom widgets); a page inlines each one once, in <head>.
    scripts: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")

    def render(self) -> str:
        parts = [f'<section id="{self.anchor}"><h2>{html.escape(self.title)}</h2>']
        figs = [(i, item) for i, item in enumerate(self.items) if isinstance(item, go.Figure)]
        if len(figs) > 1:  # an index of the section's figures, each with its own anchor
            links = " · ".join(
                f'<a href="#{self.anchor}-fig{i}">{html.escape(_short_title(f, i))}</a>'
                for i, f in figs)
            parts.append(f'<p class="note wb-figure-index">Figures: {links}</p>')
        if self.note:
            parts.append(f'<p class="note">{self.note}</p>')
        for i, item in enumerate(self.items):
            if isinstance(item, go.Figure):
                parts.append(figure_html(item, f"{self.anchor}-fig{i}"))
            else:
                parts.append(item)
        parts.append("</section>")
        return "\n".join(parts)


def table_html(rows: list[dict], columns: list[str] | None = None, fmt: str = "{:.4g}") -> str:
    """A small HTML table from dict rows (floats formatted with ``fmt``)."""
    if not rows:
        return "<p class='note'>(empty)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)

    def cell(v) -> str:
        text = fmt.format(v) if isinstance(v, float) else str(v)
        return f"<td>{html.escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    return f'<table class="data"><tr>{head}</tr>{body}</table>'


@dataclass
class Page:
    title: str
    header: dict[str, object] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    def add(self, section: Section) -> Page:
        self.sections.append(section)
        return self

    def render(self) -> str:
        rows = "".join(
            f"<tr><td><b>{html.escape(str(k))}</b></td><td>{html.escape(str(v))}</td></tr>"
            for k, v in self.header.items()
        )
        nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "\n".join(s.render() for s in self.sections)
        libs = list(dict.fromkeys(js for s in self.sections for js in s.scripts))
        extra = "".join(f"<script type='text/javascript'>{js}</script>" for js in libs)
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{plotly_js()}</script>{extra}</head><body>"
            f"<header><h1>{html.escape(self.title)}</h1><table>{rows}</table></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.render().encode("utf-8"))
        return path
