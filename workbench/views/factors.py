"""NMF factor views: factors over tokens as highlighted text (HTML, no JavaScript), sparklines,
and which neurons (by layer) load on each factor (plotly).

>>> section(result)                      # for a Page                         # doctest: +SKIP
>>> from IPython.display import HTML; HTML(highlighted_html(result))           # doctest: +SKIP
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.views.html import Section, table_html
from workbench.views.tokens import html_running
from workbench.views.tokens import label as token_label

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def color(i: int, alpha: float = 1.0) -> str:
    r, g, b = PALETTE[i % len(PALETTE)]
    return f"rgba({r},{g},{b},{alpha:.3f})"


def highlighted_html(result) -> str:
    """ecco's view: each token shaded by its dominant factor, then one line per factor."""
    f = result.factors.numpy()
    scaled = f / np.maximum(f.max(axis=1, keepdims=True), 1e-30)  # each factor's peak = 1
    span = ('<span title="{title}" style="background:{bg};padding:1px 0;border-radius:2px;'
            'white-space:pre-wrap">{text}</span>')

    def row(label: str, shades: list[tuple[int, float]], label_color: str) -> str:
        cells = []
        for p, (k, a) in enumerate(shades):
            title = html.escape(f"position {p} {token_label(result.token_strs[p])}: " + ", ".join(
                f"f{j} {f[j, p]:.3g}" for j in range(f.shape[0])))
            cells.append(span.format(title=title, bg=color(k, 0.85 * a),
                                     text=html_running(result.token_strs[p])))
        return (f'<div class="wb-factor-row" style="margin:3px 0;line-height:1.9">'
                f'<b style="display:inline-block;width:7em;color:{label_color}">{label}</b>'
                f'<span style="font-family:monospace;overflow-wrap:anywhere">{"".join(cells)}</span></div>')

    dominant = scaled.argmax(0)
    rows = [row("dominant", [(int(k), float(scaled[k, p])) for p, k in enumerate(dominant)],
                "#1b1f24")]
    for k in range(f.shape[0]):
        rows.append(row(f"factor {k}", [(k, float(a)) for a in scaled[k]], color(k)))
    return f'<div class="wb-factors" data-wb-static="factors">{"".join(rows)}</div>'


def sparklines(result) -> go.Figure:
    """Factor strength along the tokens, one small line per factor."""
    k, pos = result.factors.shape
    fig = make_subplots(k, 1, shared_xaxes=True, vertical_spacing=0.012)
    x = np.arange(pos)
    labels = [f"{p}:{t!r}" for p, t in enumerate(result.token_strs)]
    for i in range(k):
        fig.add_trace(go.Scatter(x=x, y=result.factors[i].numpy(), mode="lines", fill="tozeroy",
                                 line={"color": color(i), "width": 1.5}, name=f"factor {i}",
                                 customdata=labels,
                                 hovertemplate="%{customdata}: %{y:.3g}<extra>factor " f"{i}</extra>"),
                      i + 1, 1)
        fig.update_yaxes(title_text=f"f{i}", title_font={"size": 10}, showticklabels=False,
                         row=i + 1, col=1)
    fig.update_xaxes(title_text="position", row=k, col=1)
    fig.update_layout(title="Factor strength per token (sparklines)", showlegend=False,
                      height=90 + 48 * k, margin={"t": 50, "b": 40, "l": 50, "r": 20})
    return fig


def layer_loadings(result) -> go.Figure:
    """Share of each factor's neuron loadings in each layer."""
    share = result.layer_share().numpy()
    fig = go.Figure(go.Heatmap(
        z=share, x=[f"layer {layer}" for layer in result.layers],
        y=[f"factor {i}" for i in range(share.shape[0])], colorscale="Viridis", zmin=0,
        colorbar={"title": {"text": "share"}},
        hovertemplate="%{y}, %{x}: %{z:.1%} of the loading mass<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Where each factor's neurons are: loading mass by layer",
                      height=140 + 28 * share.shape[0], margin={"t": 50, "b": 40})
    return fig


def top_neuron_rows(result, n: int = 5) -> list[dict]:
    rows = []
    for i, top in enumerate(result.top_neurons(n)):
        peak = int(result.factors[i].argmax())
        rows.append({"factor": i, "peak token": f"{peak}:{result.token_strs[peak]!r}",
                     "top neurons (layer_neuron: loading)": ", ".join(
                         f"{layer}_{neuron}: {v:.3g}" for layer, neuron, v in top)})
    return rows


def figures(result) -> dict[str, go.Figure]:
    return {"sparklines": sparklines(result), "layer_loadings": layer_loadings(result)}


def signed_note(result) -> str:
    """What was factorised, in words: clipped (ecco) or both signed halves."""
    share = f"{100 * result.negative_share:.1f}%"
    if result.signed == "split":
        return (f"These activations are signed ({share} of ‖X‖² is in negative entries, as in "
                "gated MLPs): X is split into its positive and negative parts, X₊ = [max(X,0) | "
                "max(−X,0)], and both are factorised, so a neuron's loading is negative when a "
                "factor explains its negative activation.")
    return (f"Negative activations are clipped at 0 before the factorization, as ecco does "
            f"(they hold {share} of ‖X‖²), so X₊ = max(X, 0).")


def section(result) -> Section:
    where = (f"window {result.window_index} of {result.n_windows}" if result.n_windows > 1
             else "the input")
    first = (" Factors are computed on the first window only, to keep the report small."
             if result.n_windows > 1 and result.window_index == 0 else "")
    cut = (f" Only the first {result.tokens.shape[0]} of {result.truncated_from} tokens are used."
           if result.truncated_from else "")
    layers = (f"layers {result.layers[0]}–{result.layers[-1]}" if len(result.layers) > 1
              else f"layer {result.layers[0]}")
    note = (f"NMF with {result.n_components} components of the MLP activations "
            f"(<code>mlp.hook_post</code>, {layers}, {result.d_mlp} neurons each) on "
            f"{html.escape(where)}.{first}{cut} {signed_note(result)} NMF fit "
            f"‖X₊ − WH‖/‖X₊‖ = {result.relative_error:.3f} after {result.n_iter} iterations; "
            "against the signed activations X, ‖X − W(H⁺ − H⁻)‖/‖X‖ = "
            f"{result.signed_relative_error:.3f}. "
            "Hover a token for its strength in every factor.")
    items = [highlighted_html(result), sparklines(result), layer_loadings(result),
             table_html(top_neuron_rows(result))]
    return Section("NMF factors", items, note)
