"""Attention views, offline: bertviz's head view (inline JS widget), model view and neuron view
(plotly). No CDN, no requirejs: the widget's JavaScript is inlined once per page (``Section.scripts``)
or carried by the snippet itself in a notebook (``head_view_html(result)``).

>>> section(result)                                     # for a Page          # doctest: +SKIP
>>> from IPython.display import HTML; HTML(head_view_html(result))   # notebook # doctest: +SKIP
>>> figures(result)["model_view"].show()                                       # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import itertools
from functools import cache
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.views.html import Section, json_for_script
from workbench.views.tokens import html_label, html_label_short, label

_ids = itertools.count()


@cache
def widgets_js() -> str:
    return (Path(__file__).with_name("widgets.js")).read_text(encoding="utf-8")


def pattern_b64(result) -> str:
    """The patterns as little-endian float32 bytes [layer, head, query, key], base64."""
    return base64.b64encode(result.patterns.numpy().astype("<f4").tobytes()).decode("ascii")


def head_view_html(result, include_script: bool = True) -> str:
    """The head-view widget; with ``include_script`` the snippet also works alone (notebooks)."""
    wid = f"wb-attn-{next(_ids)}"
    data = {"tokens": result.token_strs, "labels": [label(t) for t in result.token_strs],
            "types": result.token_type_ids.tolist(),
            "layers": result.n_layers, "heads": result.n_heads, "layer": result.neuron.layer,
            "pattern": pattern_b64(result)}
    lib = f"<script type='text/javascript'>{widgets_js()}</script>" if include_script else ""
    return (
        f'{lib}<div class="wb-attention" id="{wid}" data-wb-widget="attention-head-view"></div>'
        f'<script type="application/json" id="{wid}-data">{json_for_script(data)}</script>'
        f"<script type='text/javascript'>wbAttention.headView('{wid}');</script>"
    )


def _labels(result) -> list[str]:
    return [f"{i}:{html_label_short(t, 20)}" for i, t in enumerate(result.token_strs)]


def model_view(result, max_positions: int = 128) -> go.Figure:
    """All layers (rows) × heads (columns) at once: one heatmap per head, query ↓, key →."""
    n_layers, n_heads = result.n_layers, result.n_heads
    p = min(int(result.tokens.shape[0]), max_positions)
    fig = make_subplots(n_layers, n_heads, horizontal_spacing=0.01, vertical_spacing=0.02,
                        subplot_titles=[f"L{layer} H{h}" for layer in range(n_layers)
                                        for h in range(n_heads)])
    labels = _labels(result)[:p]
    for layer in range(n_layers):
        for h in range(n_heads):
            z = result.patterns[layer, h, :p, :p].numpy()
            fig.add_trace(go.Heatmap(
                z=z, coloraxis="coloraxis", name=f"L{layer} H{h}",
                hovertemplate=f"L{layer} H{h}<br>query %{{y}} → key %{{x}}<br>%{{z:.3f}}"
                              "<extra></extra>"), layer + 1, h + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    if p <= 24:  # token names are legible only for short inputs
        ticks = {"tickmode": "array", "tickvals": list(range(p)), "ticktext": labels,
                 "showticklabels": True, "tickfont": {"size": 9}}
        for layer in range(n_layers):
            fig.update_yaxes(ticks, row=layer + 1, col=1)
    fig.update_annotations(font_size=10)
    size = max(90, min(180, 900 // max(n_heads, 1)))
    fig.update_layout(
        title=f"Model view: every layer × head ({p} positions; rows = layers, columns = heads)",
        coloraxis={"colorscale": "Blues", "cmin": 0, "cmax": 1,
                   "colorbar": {"title": {"text": "attention"}}},
        height=120 + size * n_layers, width=max(520, 140 + size * n_heads),
        margin={"l": 80 if p <= 24 else 30, "r": 30, "t": 80, "b": 20},
    )
    return fig


def neuron_view(result) -> go.Figure:
    """q_d·k_d/attn_scale per key (rows) and dimension (columns) at one query, per head
    (dropdown), beside softmax(Σ_d) and the model's pattern row: the two bars coincide."""
    nv = result.neuron
    n_heads, n_keys, d_head = nv.products.shape
    labels = _labels(result)[:n_keys]
    fig = make_subplots(1, 2, column_widths=[0.72, 0.28], shared_yaxes=True,
                        horizontal_spacing=0.02,
                        subplot_titles=["q_d · k_d / scale", "softmax(Σ_d) vs pattern"])
    keys = np.arange(n_keys)
    row = result.patterns[nv.layer, :, nv.query, :n_keys].numpy()
    lim = float(nv.products.abs().max()) or 1.0
    for h in range(n_heads):
        visible = h == 0
        fig.add_trace(go.Heatmap(
            z=nv.products[h].numpy(), y=keys, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
            visible=visible, name=f"head {h}", colorbar={"title": {"text": "q·k"}, "x": 1.02},
            hovertemplate="key %{y}, dim %{x}<br>q·k %{z:.4f}<extra></extra>"), 1, 1)
        fig.add_trace(go.Bar(x=nv.attention[h].numpy(), y=keys, orientation="h",
                             visible=visible, name="softmax(Σ q·k)", marker_color="#4c78a8",
                             hovertemplate="key %{y}: %{x:.4f}<extra>softmax</extra>"), 1, 2)
        fig.add_trace(go.Scatter(x=row[h], y=keys, mode="markers", visible=visible,
                                 name="model pattern", marker={"color": "#e45756", "size": 6},
                                 hovertemplate="key %{y}: %{x:.4f}<extra>pattern</extra>"), 1, 2)
    buttons = []
    for h in range(n_heads):
        vis = [i // 3 == h for i in range(3 * n_heads)]
        buttons.append({"label": f"head {h}", "method": "update", "args": [{"visible": vis}]})
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(keys), ticktext=labels,
                     tickfont={"size": 9}, row=1, col=1)
    fig.update_xaxes(title_text="dimension of the head", row=1, col=1)
    fig.update_xaxes(range=[0, 1.05], row=1, col=2)
    query = result.token_strs[nv.query]
    fig.update_layout(
        title=(f"Neuron view: layer {nv.layer}, query {nv.query} {html_label(query)} "
               f"(max |softmax − pattern| = {nv.max_abs_diff:.1e})"),
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.0,
                      "yanchor": "bottom", "pad": {"b": 28}}],
        height=min(1900, 220 + 14 * n_keys), margin={"t": 130, "l": 120},
        legend={"orientation": "h", "y": -0.05 if n_keys > 20 else -0.2},
    )
    return fig


def figures(result) -> dict[str, go.Figure]:
    return {"model_view": model_view(result), "neuron_view": neuron_view(result)}


def architecture_note(meta: dict) -> str:
    """What differs from plain multi-head attention (grouped-query keys, sliding windows)."""
    parts = []
    n_heads, n_kv = meta.get("n_heads"), meta.get("n_key_value_heads")
    if n_kv and n_heads and n_kv < n_heads:
        parts.append(f" Grouped-query attention: {n_heads} query heads share {n_kv} key/value "
                     f"head{'s' if n_kv > 1 else ''}, so heads of one group read the same keys "
                     "(the neuron view repeats them per head).")
    kinds = meta.get("layer_kinds") or []
    local = [i for i, k in enumerate(kinds) if k != "global"]
    if local:
        window = kinds[local[0]].split("window ")[-1].rstrip(")")
        parts.append(f" Layers {', '.join(map(str, local))} use sliding-window attention (each "
                     f"query sees its last {window} keys); the others are global.")
    if meta.get("qk_norm"):
        parts.append(" Queries and keys are RMS-normalised per head and rotated (RoPE) before "
                     "their product: the neuron view shows those normalised, rotated vectors.")
    return html.escape("".join(parts))


def section(result) -> Section:
    where = (f"window {result.window_index} of {result.n_windows}" if result.n_windows > 1
             else "the input")
    cut = (f" Only the first {result.tokens.shape[0]} of {result.truncated_from} tokens are shown."
           if result.truncated_from else "")
    first = (" Attention is shown for the first window only, to keep the report small."
             if result.n_windows > 1 and result.window_index == 0 else "")
    pair = (" Sentence B of the pair is in purple (token type 1)."
            if bool(result.token_type_ids.any()) else "")
    arch = architecture_note(result.meta)
    note = (f"Attention patterns (<code>blocks.l.attn.hook_pattern</code>) on {html.escape(where)}."
            f"{first}{cut}{pair}{arch} Head view: hover a query token (left) to see where each head "
            "attends, a key token (right) to see who attends to it; click a query to pin it. "
            "Neuron view: per-dimension query·key products behind one layer's attention at one "
            "query; their sum, masked and softmaxed, reproduces the pattern.")
    items = [head_view_html(result, include_script=False), model_view(result),
             neuron_view(result)]
    return Section("Attention", items, note, scripts=[widgets_js()])
