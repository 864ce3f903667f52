"""Logit lens figures: per-layer top-k at a position, rankings and watch heatmaps, agreement/KL.

Layers are always drawn in depth order (``emb`` at the bottom, the final residual at the top) on a
category axis with an explicit order, so ``h.10`` never sorts before ``h.2``. Positions and watched
tokens sit on numeric axes with token tick labels, so repeated tokens keep their own columns.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.views.html import Section, table_html

MAX_TEXT_CELLS = 1500  # beyond this, cell labels clutter the heatmap and slow the page
MAX_TICKS = 80  # position labels drawn on a rankings axis


def visible(text: str) -> str:
    """Whitespace made visible for axis and cell labels (a leading space is most of BPE)."""
    if text == "":
        return "∅"
    return text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _layer_axis(labels: list[str]) -> dict:
    return {"type": "category", "categoryorder": "array", "categoryarray": list(labels),
            "title": "layer"}


def _log_rank_colorbar(max_rank: int) -> dict:
    top = max(1, len(str(max(1, max_rank))))
    vals = list(range(top + 1))
    return {"title": "rank", "tickvals": vals, "ticktext": [f"{10 ** v:,}" for v in vals]}


def topk_figure(result, position: int = -1) -> go.Figure:
    """Each layer's top-k tokens at ``position`` (cells: token, colour: probability)."""
    p = result._position(position)
    probs = result.topk_probs[:, p].float()
    ids = result.topk_ids[:, p]
    text = [[visible(result.label(i)) for i in row] for row in ids.tolist()]
    hover = [[f"{html.escape(t)}<br>id {i}<br>p = {q:.4f}" for t, i, q in zip(tr, ir, qr, strict=True)]
             for tr, ir, qr in zip(text, ids.tolist(), probs.tolist(), strict=True)]
    fig = go.Figure(go.Heatmap(
        z=probs.tolist(), x=[str(j + 1) for j in range(ids.shape[1])], y=result.layer_labels,
        text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text",
        colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "prob"},
    ))
    context = visible(result.label(result.tokens[p]))
    fig.update_layout(
        title=f"Top-{ids.shape[1]} predictions per layer after position {p} ({context!r}), "
              f"{result.mode} lens",
        xaxis={"title": "rank", "type": "category"}, yaxis=_layer_axis(result.layer_labels),
        height=max(300, 34 * len(result.layer_labels) + 140),
    )
    return fig


def _rank_heatmap(ranks: torch.Tensor, layers: list[str], xticks: list[str], title: str,
                  xtitle: str, xvals: list[int]) -> go.Figure:
    r = ranks.clamp(min=1).double()
    z = r.log10().tolist()
    show_text = r.numel() <= MAX_TEXT_CELLS
    fig = go.Figure(go.Heatmap(
        z=z, x=xvals, y=layers, text=ranks.tolist(),
        texttemplate="%{text}" if show_text else None,
        hovertemplate="layer %{y}<br>%{customdata}<br>rank %{text}<extra></extra>",
        customdata=[xticks for _ in layers], colorscale="Viridis_r", zmin=0,
        colorbar=_log_rank_colorbar(int(ranks.max()) if ranks.numel() else 1),
    ))
    step = max(1, -(-len(xvals) // MAX_TICKS))  # thin the labels; the hover names every column
    fig.update_layout(
        title=title, yaxis=_layer_axis(layers),
        xaxis={"title": xtitle, "tickmode": "array", "tickvals": xvals[::step],
               "ticktext": xticks[::step], "tickangle": -60 if len(xvals) > 8 else 0},
        height=max(320, 30 * len(layers) + 200),
    )
    return fig


def rankings_figure(result, generated_only: bool | None = None) -> go.Figure:
    """Rank of the actual next token per layer (rows) and position (columns), log colour."""
    rk = result.rankings(generated_only)
    ticks = [visible(c) for c in rk.columns]
    what = "generated tokens" if result.generated_from is not None and generated_only is not False \
        else "next tokens (teacher-forced)"
    return _rank_heatmap(rk.ranks, rk.layers, ticks,
                         f"Rank of the {what} per layer ({result.mode} lens; 1 = top)",
                         "position: input → next token", rk.positions)


def watch_figure(result, position: int | None = None) -> go.Figure:
    """Ranks of the watched tokens per layer at ``position`` (default: the last)."""
    rk = result.rankings_watch(position=position)
    p = rk.positions[0]
    context = visible(result.label(result.tokens[p]))
    return _rank_heatmap(rk.ranks, rk.layers, [visible(c) for c in rk.columns],
                         f"Rank of watched tokens per layer after position {p} ({context!r})",
                         "watched token", list(range(len(rk.columns))))


def agreement_figure(result) -> go.Figure:
    """Dataset per-layer: top-1 agreement with the final lens and next-token accuracy (top),
    mean KL(final ‖ lens) and mean entropy (bottom)."""
    d = result.dataset
    layers = result.layer_labels
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("agreement / accuracy", "nats"))
    for name, key in [("top-1 agreement with final", "top1_agreement"),
                      ("next-token top-1 accuracy", "top1_accuracy")]:
        fig.add_trace(go.Scatter(x=layers, y=d[key].tolist(), mode="lines+markers", name=name),
                      row=1, col=1)
    for name, key in [("KL(final ‖ lens)", "mean_kl"), ("entropy", "mean_entropy")]:
        fig.add_trace(go.Scatter(x=layers, y=d[key].tolist(), mode="lines+markers", name=name),
                      row=2, col=1)
    axis = {"type": "category", "categoryorder": "array", "categoryarray": layers}
    fig.update_xaxes(**axis)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_layout(
        title=f"Per-layer agreement and divergence over {int(d['n_positions'])} positions "
              f"({result.mode} lens)", height=560,
    )
    return fig


def rank_hist_figure(result) -> go.Figure:
    """Share of next-token targets per log2 rank bin, per layer."""
    d = result.dataset
    counts = d["rank_hist"].double()
    share = counts / counts.sum(1, keepdim=True).clamp(min=1)
    edges = d["rank_hist_edges"].tolist()
    bins = [f"{a}" if b - a == 1 else f"{a}–{b - 1}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig = go.Figure(go.Heatmap(
        z=share.tolist(), x=bins, y=result.layer_labels, colorscale="Blues", zmin=0,
        colorbar={"title": "share"}, customdata=counts.long().tolist(),
        hovertemplate="layer %{y}<br>rank %{x}<br>share %{z:.3f} (%{customdata})<extra></extra>",
    ))
    fig.update_layout(
        title=f"Rank of the next token, per layer ({int(d['n_targets'])} targets)",
        xaxis={"title": "rank bin", "type": "category"}, yaxis=_layer_axis(result.layer_labels),
        height=max(300, 30 * len(result.layer_labels) + 160),
    )
    return fig


def figures(result, position: int | None = None) -> dict[str, go.Figure]:
    """All lens figures; ``position`` (default the last) for top-k and watch."""
    pos = -1 if position is None else position
    figs = {"topk": topk_figure(result, pos)}
    if result.n_positions > 1:
        figs["rankings"] = rankings_figure(result)
    if result.watch_ids is not None:
        figs["watch"] = watch_figure(result, pos)
    figs["agreement"] = agreement_figure(result)
    if int(result.dataset["n_targets"]) > 0:
        figs["rank_hist"] = rank_hist_figure(result)
    return figs


def summary_rows(result) -> list[dict]:
    d = result.dataset
    return [
        {"layer": name, "top-1 agreement": float(d["top1_agreement"][i]),
         "top-1 accuracy": float(d["top1_accuracy"][i]),
         "mean ln rank": float(d["mean_log_rank"][i]), "KL(final‖lens)": float(d["mean_kl"][i]),
         "entropy": float(d["mean_entropy"][i])}
        for i, name in enumerate(result.layer_labels)
    ]


NOTE = (
    "Each row is a lens: the residual stream after that many blocks (<code>emb</code> = the "
    "embedding, before any block; the top row = the final residual), projected through {how}. "
    "Top-k: what each layer would predict after the position. Rankings: the rank (1 = top) of "
    "the token that actually comes next{gen}; yellow = rank 1 = already predicted, dark purple = "
    "far down the vocabulary (log scale). Watch: ranks "
    "of chosen tokens at one position. Agreement: share of positions whose lens argmax equals "
    "the final argmax; KL(final ‖ lens) in nats. Per-position figures show the first window; "
    "the agreement and rank-histogram figures cover all {n} positions of the input."
)

WINDOWS_NOTE = (
    "The input spans {n} windows: per-position figures show window 0 of {n}; the rank of the "
    "actual next token at every position of all {n} windows (teacher-forced) is in "
    "<code>lens.safetensors</code>: <code>window_ranks</code> [lens, window, position] (-1 on "
    "padding), in Python <code>result.ranks_of_window(i)</code>."
)


def section(result, position: int | None = None) -> Section:
    norm = {"RMS": "RMSNorm", "RMSPre": "RMSNorm", "LN": "LayerNorm", "LNPre": "LayerNorm"}.get(
        str(result.meta.get("normalization_type")), "normalization")
    how = (f"the final {norm} (recomputed on that residual) and the unembedding"
           if result.mode == "final_ln" else f"the unembedding alone (no final {norm}, as ecco)")
    gen = "" if result.generated_from is None else " (only generated tokens, as ecco)"
    note = NOTE.format(how=how, gen=gen, n=int(result.dataset["n_positions"]))
    if result.n_windows > 1:
        note += " " + WINDOWS_NOTE.format(n=result.n_windows)
    items: list = list(figures(result, position).values())
    items.append(table_html(summary_rows(result)))
    return Section("Logit lens", items, note)


def mode_comparison_figure(results: dict) -> go.Figure:
    """Per-layer top-1 agreement with the final lens for several results (e.g. ``final_ln`` vs
    ``raw`` on the same data), one line each."""
    fig = go.Figure()
    labels: list[str] = []
    for name, res in results.items():
        labels = res.layer_labels
        fig.add_trace(go.Scatter(x=labels, y=res.dataset["top1_agreement"].tolist(),
                                 mode="lines+markers", name=name))
    fig.update_layout(
        title="Top-1 agreement with the final layer, per lens mode",
        xaxis={"type": "category", "categoryorder": "array", "categoryarray": labels,
               "title": "layer"},
        yaxis={"range": [0, 1.02], "title": "share of positions"}, height=420,
    )
    return fig
