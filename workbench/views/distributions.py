"""Figures of a ``DistributionsResult`` (seed 000's plots, in plotly). Draws only; computes nothing
beyond picking rows to show.

``figures(result)`` → {name: Figure}; ``section(result)`` → a report ``Section`` with a note on how
to read them.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from workbench.views.html import Section, table_html
from workbench.views.tokens import html_label, position_ticks

SEQUENTIAL = "Viridis"


def _layers(result, chosen) -> list[int]:
    return [result.layer_index(c) for c in chosen]


def _sampled(result, n: int | None = None):
    """The first ``n`` sampled (token, dim) pairs: a prefix of a bottom-k sample is uniform too."""
    k = result.sample_values.shape[0] if n is None else min(n, result.sample_values.shape[0])
    return result.sample_values[:k], result.sample_ids[:k]


def scatter_by_dimension(result, layer: int | str = -1) -> go.Figure:
    """Sampled activations of one layer against their residual dimension, with the exact
    per-dimension mean and ±max |x| over every position."""
    v = result.layer_index(layer)
    values, ids = _sampled(result, result.settings.get("scatter_points"))
    name = result.labels[v]
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=ids[:, 2].numpy(), y=values[:, v].numpy(), mode="markers",
                               marker={"size": 3, "opacity": 0.35, "color": "#3a6ea5"},
                               name=f"sampled pairs ({values.shape[0]:,})"))
    dims = list(range(result.dim_mean.shape[1]))
    fig.add_trace(go.Scatter(x=dims, y=result.dim_maxabs[v].numpy(), mode="lines",
                             line={"color": "#d62728", "width": 1}, name="max |x| (all data)"))
    fig.add_trace(go.Scatter(x=dims, y=(-result.dim_maxabs[v]).numpy(), mode="lines",
                             line={"color": "#d62728", "width": 1}, showlegend=False))
    fig.add_trace(go.Scatter(x=dims, y=result.dim_mean[v].numpy(), mode="lines",
                             line={"color": "#222", "width": 1}, name="mean (all data)"))
    fig.update_layout(title=f"{name}: activations by residual dimension", xaxis_title="dimension",
                      yaxis_title="activation", height=380, margin={"t": 50, "b": 40})
    return fig


def _point_labels(result, ids) -> list[str]:
    tokens = result.token_labels
    return [f"position {int(p)} {html_label(tokens[int(p)])}, dim {int(d)}"
            if tokens and int(p) < len(tokens) else f"position {int(p)}, dim {int(d)}"
            for p, d in zip(ids[:, 1], ids[:, 2], strict=True)]


def scatter_by_token(result, layer: int | str = -1) -> go.Figure:
    """Sampled activations of one layer against their position in the window (token strings on
    the axis when the input is one window)."""
    v = result.layer_index(layer)
    values, ids = _sampled(result, result.settings.get("scatter_points"))
    fig = go.Figure(go.Scattergl(x=ids[:, 1].numpy(), y=values[:, v].numpy(), mode="markers",
                                 marker={"size": 3, "opacity": 0.35, "color": "#2a9d8f"},
                                 text=_point_labels(result, ids)))
    fig.update_layout(title=f"{result.labels[v]}: activations by token position",
                      yaxis_title="activation", height=380, margin={"t": 50, "b": 40})
    if result.token_labels:
        n = len(result.token_labels)
        fig.update_xaxes(title="token", range=[-0.5, n - 0.5],
                         **position_ticks([html_label(t) for t in result.token_labels]))
    else:
        fig.update_xaxes(title="position in window")
    return fig


def layer_heatmap(matrix, labels: list[str], title: str, zmin=None, zmax=None) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=matrix.numpy(), x=labels, y=labels, colorscale=SEQUENTIAL,
                               zmin=zmin, zmax=zmax, texttemplate="%{z:.2f}",
                               hovertemplate="%{y} × %{x}: %{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=420, width=480, margin={"t": 50})
    return fig


def pairplot(result, layers=None, n: int | None = None) -> go.Figure:
    """Scatter matrix of sampled (token, dim) pairs across layers (the seed's seaborn pairplot)."""
    chosen = result.settings.get("pair_layers") if layers is None else layers
    chosen = chosen if chosen is not None else list(range(min(4, len(result.labels))))
    idx = _layers(result, chosen)
    values, _ = _sampled(result, n if n is not None else result.settings.get("sample"))
    fig = go.Figure(go.Splom(
        dimensions=[{"label": result.labels[v], "values": values[:, v].numpy()} for v in idx],
        marker={"size": 3, "opacity": 0.4, "color": "#3a6ea5"}, diagonal_visible=False,
        showupperhalf=False))
    fig.update_layout(title=f"pairplot of {values.shape[0]:,} sampled (token, dim) pairs",
                      height=150 + 160 * len(idx), width=150 + 160 * len(idx))
    return fig


def _symlog(x: np.ndarray, t: float) -> np.ndarray:
    """``sign(x) log10(1 + |x| / t)``, elementwise (always an array, also for one value)."""
    x = np.asarray(x, dtype=np.float64)
    return np.asarray(np.sign(x) * np.log10(1 + np.abs(x) / t))


def histograms(result, log: bool = False) -> go.Figure:
    """One line per layer over the bin centres, early layers dark, late layers light.

    Symmetric-log edges (the default for models like gemma, whose residuals span 1 to 1e5) are
    drawn on a symmetric-log axis (``sign(x) log10(1 + |x|/T)``, ticks labelled in real values),
    so the bulk and the tails are both visible; the axis spans the occupied bins only."""
    edges = result.hist_edges.double().numpy()
    centres = (edges[1:] + edges[:-1]) / 2
    widths = np.diff(edges)
    symlog = bool(widths.max() > 1.5 * widths.min())
    t = float((result.settings.get("edges") or {}).get("linthresh") or
              result.settings.get("symlog") or 1.0)
    x = _symlog(centres, t) if symlog else centres
    n = len(result.labels)
    colors = sample_colorscale(SEQUENTIAL, [i / max(1, n - 1) for i in range(n)])
    fig = go.Figure()
    for v, name in enumerate(result.labels):
        counts = result.hist_counts[v].double()
        y = counts.where(counts > 0, float("nan")).numpy() if log else counts.numpy()
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, customdata=centres,
                                 hovertemplate="%{customdata:.4g}: %{y}<extra>" + name
                                 + "</extra>",
                                 line={"color": colors[v], "width": 1.5}, connectgaps=False))
    occupied = np.nonzero(result.hist_counts.sum(0).numpy())[0]
    xaxis: dict = {"title": "activation" + (" (symmetric-log axis)" if symlog else "")}
    if occupied.size:
        lo, hi = x[max(0, occupied[0] - 2)], x[min(len(x) - 1, occupied[-1] + 2)]
        xaxis["range"] = [lo, hi]
    if symlog:
        top = int(np.ceil(np.log10(max(abs(edges[0]), abs(edges[-1])))))
        reals = [0.0] + [s * 10.0**k for k in range(0, top + 1) for s in (1, -1)]
        reals = sorted(r for r in reals if abs(r) >= t or r == 0)
        xaxis |= {"tickvals": _symlog(np.array(reals), t).tolist(),
                  "ticktext": [f"{r:g}" for r in reals]}
    fig.update_layout(title=f"histograms per layer ({'log' if log else 'linear'} counts)",
                      xaxis=xaxis, yaxis_title="count", height=400,
                      yaxis_type="log" if log else "linear", margin={"t": 50})
    return fig


def outlier_rows(result, k: int = 3) -> list[dict]:
    """For each layer, the ``k`` dimensions with the largest max |x| (from the exact stats)."""
    rows = []
    for v, name in enumerate(result.labels):
        maxabs = result.dim_maxabs[v]
        median = float(maxabs.median()) or float("nan")
        top = maxabs.topk(min(k, maxabs.numel()))
        for value, d in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            rows.append({"layer": name, "dim": d, "max |x|": value, "× median": value / median,
                         "mean": float(result.dim_mean[v, d]), "std": float(result.dim_std[v, d])})
    return rows


def figures(result) -> dict[str, go.Figure]:
    layer = result.settings.get("layer", -1)
    return {
        "scatter_dimension": scatter_by_dimension(result, layer),
        "scatter_token": scatter_by_token(result, layer),
        "covariance": layer_heatmap(result.covariance, result.labels, "covariance between layers"),
        "r2": layer_heatmap(result.r2, result.labels, "R² (shared variance) between layers", 0, 1),
        "pairplot": pairplot(result),
        "hist_linear": histograms(result, log=False),
        "hist_log": histograms(result, log=True),
    }


NOTE = (
    "Each layer's activations over all (token, dimension) pairs form one variable{skip}. "
    "<b>Covariance / R²</b>: between layers, over {n:,} pairs per layer; R² is the squared "
    "Pearson correlation, the share of one layer's variance a linear function of another "
    "explains; a diagonal band that fades away from the diagonal means the residual stream "
    "drifts with depth. <b>Scatter</b>: a uniform sample of pairs of layer {layer}; the red "
    "lines are the exact max |x| per dimension over every position, so tall spikes name outlier "
    "dimensions (table). <b>Pairplot</b>: the same pairs across layers. <b>Histograms</b>: "
    "fixed edges [{lo:g}, {hi:g}], {bins} bins; values outside them are counted apart "
    "(under/over below); log counts show the tails."
)


def section(result) -> Section:
    figs = figures(result)
    s = result.settings
    layer = result.labels[result.layer_index(s.get("layer", -1))]
    note = NOTE.format(
        skip=" (position 0 of each window excluded)" if s.get("skip_first", True) else "",
        n=int(result.n_samples[0]), layer=html.escape(layer), bins=result.hist_counts.shape[1],
        lo=float(result.hist_edges[0]), hi=float(result.hist_edges[-1]))
    tails = table_html([{"layer": name, "under": int(result.hist_under[v]),
                         "over": int(result.hist_over[v]), "mean": float(result.mean[v]),
                         "std": float(result.std[v])} for v, name in enumerate(result.labels)])
    items = [figs["covariance"], figs["r2"], figs["scatter_dimension"], figs["scatter_token"],
             "<h3>Outlier dimensions</h3>" + table_html(outlier_rows(result)),
             figs["pairplot"], figs["hist_linear"], figs["hist_log"],
             "<h3>Per layer</h3>" + tails]
    return Section("Hidden-state distributions", items, note)
