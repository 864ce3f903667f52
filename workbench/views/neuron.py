"""Neuron pages (``workbench amap pages``): one AMAP unit's histogram over the data, its
max-activating contexts shaded token by token, its top tokens (the AMAP row, with counts) and its
direct effect on the output logits."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from workbench.views.html import Page, Section, table_html
from workbench.views.tokens import html_label, html_running, label


def histogram_figure(page: dict) -> go.Figure:
    edges = page["hist_edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig = go.Figure(go.Bar(x=centres, y=page["hist_counts"], width=edges[1] - edges[0],
                           marker_color="#3a6ea5",
                           hovertemplate="%{x:.3f}: %{y} positions<extra></extra>"))
    fig.update_layout(title=f"Activation of unit {page['unit']} at every position "
                            f"({page['n_positions']:,} positions)",
                      xaxis_title=f"activation (blocks.{page['layer']}.mlp.hook_post)",
                      yaxis={"title": "positions", "type": "log"}, height=360, bargap=0)
    return fig


def contexts_html(page: dict) -> str:
    if not page["contexts"]:
        return "<p class='note'>(this AMAP kept no max-activating windows)</p>"
    rows = []
    for w in page["contexts"]:
        top = max(w["max"], 1e-9)
        spans = []
        for pos, (tok, a) in enumerate(zip(w["tokens"], w["acts"], strict=True)):
            alpha = min(1.0, max(0.0, a / top))
            edge = "outline:2px solid #c0392b;" if pos == w["peak"] else ""
            spans.append(f"<span title='{html_label(tok)}: {a:.3f}' style='{edge}"
                         f"background:rgba(230,80,20,{alpha:.2f})'>{html_running(tok)}</span>")
        rows.append(f"<div style='margin:4px 0'><code>{w['max']:.3f}</code> "
                    f"<span class='note'>window {w['window']}, document {w['doc']}</span><br>"
                    f"{''.join(spans)}</div>")
    return ("<div style='font-family:monospace;font-size:13px;white-space:pre-wrap;"
            "overflow-wrap:anywhere'>" + "".join(rows) + "</div>")


def _token_rows(rows: list[dict], value: str) -> list[dict]:
    return [{"token": label(r["token"]), "id": r["id"], value: r[value],
             **({"count": r["count"]} if "count" in r else {})} for r in rows]


def unit_page(page: dict, header: dict | None = None) -> Page:
    facts = {"unit": page["unit"], "positions": f"{page['n_positions']:,}",
             "mean": f"{page['mean']:.4f}" if page["mean"] is not None else "-",
             "min / max": f"{page['min']:.4f} / {page['max']:.4f}",
             "share > 0": f"{page['share_positive']:.3f}" if page["share_positive"] is not None else "-"}
    out = Page(f"Unit {page['unit']}", {**(header or {}), **facts})
    out.add(Section("Activations over the data", [histogram_figure(page)],
                    note="Every position the AMAP counted (its windows' real positions, without a "
                         "BOS it did not count), one forward pass; log count."))
    out.add(Section("Max-activating contexts", [contexts_html(page)],
                    note="The unit's top windows; each token shaded by the unit's activation there "
                         "(the peak outlined); hover a token for its value."))
    out.add(Section("Top tokens by mean activation", [table_html(
        _token_rows(page["top_tokens"], "mean"), ["token", "id", "mean", "count"])],
        note=f"The AMAP row ({html.escape(page['mode'])} mode): the tokens whose positions give this "
             "unit its highest mean activation, with how many positions had each."))
    effect = page["direct_effect"]
    out.add(Section("Direct effect on the output", [
        "<h3>raises</h3>" + table_html(_token_rows(effect["top"], "logit"), ["token", "id", "logit"]),
        "<h3>lowers</h3>" + table_html(_token_rows(effect["bottom"], "logit"), ["token", "id", "logit"])],
        note="W_out[neuron] · W_U: the logits one unit of this activation adds directly (not "
             "through later layers; the final norm's scale is left out)."))
    return out


def index_page(pages: list[dict], header: dict | None = None) -> Page:
    from workbench.analyses.neuron_pages import page_name

    rows = "".join(
        f"<tr><td><a href='{page_name(p['unit'])}'>unit {p['unit']}</a></td>"
        f"<td>{p['max']:.3f}</td><td>{html_label(p['top_tokens'][0]['token']) if p['top_tokens'] else ''}"
        f"</td></tr>" for p in pages)
    table = ("<table class='data'><tr><th>unit</th><th>max</th><th>top token</th></tr>"
             f"{rows}</table>")
    return Page("Neuron pages", header or {}).add(Section("Units", [table]))
