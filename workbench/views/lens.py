"""Logit lens figures: per-layer top-k at a position, rankings and watch heatmaps, agreement/KL.

Layers are always drawn in depth order (``emb`` at the bottom, the final residual at the top) on a
category axis with an explicit order, so ``h.10`` never sorts before ``h.2``. Positions and watched
tokens sit on numeric axes with token tick labels, so repeated tokens keep their own columns.
"""

from __future__ import annotations

import itertools

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.views.html import Section, json_for_script, table_html, wide
from workbench.views.tokens import html_label, html_label_short, position_ticks

MAX_LABELLED = 1100  # rank cells carry their number up to here (a 1,024-token window fits)


CELL_PX = 46  # one position of the top-1 grid: room for ~6 characters of token text
RANK_CELL_PX = 34  # one position of the rankings heatmap (a rank of up to 5 digits)
HOVER_TOPK = 5  # top-k entries in the grid's hover (a click shows all k below)
_ids = itertools.count()


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
    text = [[html_label(result.label(i)) for i in row] for row in ids.tolist()]
    hover = [[f"{t}<br>id {i}<br>p = {q:.4f}" for t, i, q in zip(tr, ir, qr, strict=True)]
             for tr, ir, qr in zip(text, ids.tolist(), probs.tolist(), strict=True)]
    fig = go.Figure(go.Heatmap(
        z=probs.tolist(), x=[str(j + 1) for j in range(ids.shape[1])], y=result.layer_labels,
        text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text",
        colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "prob"},
    ))
    context = html_label(result.label(result.tokens[p]))
    fig.update_layout(
        title=f"Top-{ids.shape[1]} predictions per layer after position {p} ({context}), "
              f"{result.mode} lens",
        xaxis={"title": "rank", "type": "category"}, yaxis=_layer_axis(result.layer_labels),
        height=max(300, 34 * len(result.layer_labels) + 140),
    )
    return fig


def _rank_heatmap(ranks: torch.Tensor, layers: list[str], xticks: list[str], title: str,
                  xtitle: str, xvals: list[int]) -> go.Figure:
    r = ranks.clamp(min=1).double()
    z = r.log10().tolist()
    show_text = len(xvals) <= MAX_LABELLED
    fig = go.Figure(go.Heatmap(
        z=z, x=xvals, y=layers, text=ranks.tolist(),
        texttemplate="%{text}" if show_text else None,
        hovertemplate="layer %{y}<br>%{customdata}<br>rank %{text}<extra></extra>",
        customdata=[xticks for _ in layers], colorscale="Viridis_r", zmin=0,
        colorbar=_log_rank_colorbar(int(ranks.max()) if ranks.numel() else 1),
    ))
    fig.update_layout(
        title=title, yaxis=_layer_axis(layers),
        # fixed-width columns (34 px): a number every 10 columns still has room
        xaxis={"title": xtitle, **position_ticks(xticks, xvals, max(20, len(xvals) // 10))},
        height=max(320, 30 * len(layers) + 200),
    )
    return fig


def rankings_figure(result, generated_only: bool | None = None) -> go.Figure:
    """Rank of the actual next token per layer (rows) and position (columns), log colour."""
    rk = result.rankings(generated_only)
    ticks = [f"{html_label(result.label(result.tokens[p]))} → {html_label(result.label(result.tokens[p + 1]))}"
             for p in rk.positions]
    what = "generated tokens" if result.generated_from is not None and generated_only is not False \
        else "next tokens (teacher-forced)"
    fig = _rank_heatmap(rk.ranks, rk.layers, ticks,
                        f"Rank of the {what} per layer ({result.mode} lens; 1 = top)",
                        "position: input → next token", rk.positions)
    return wide(fig, len(rk.positions), RANK_CELL_PX)


def watch_figure(result, position: int | None = None) -> go.Figure:
    """Ranks of the watched tokens per layer at ``position`` (default: the last)."""
    rk = result.rankings_watch(position=position)
    p = rk.positions[0]
    context = html_label(result.label(result.tokens[p]))
    return _rank_heatmap(rk.ranks, rk.layers, [html_label(c) for c in rk.columns],
                         f"Rank of watched tokens per layer after position {p} ({context})",
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


COLOURS = {
    "probability": ("p(top-1)", "Blues"),
    "rank": ("rank of the next token", "Viridis_r"),
    "entropy": ("entropy (nats)", "Magma_r"),
    "kl": ("KL(final ‖ lens), nats", "Reds"),
}


def _grid_colours(result) -> dict[str, dict]:
    """The grid's colourings: z (layers × positions), range and colour bar of each."""
    probs = result.topk_probs[:, :, 0].float()
    ranks = result.ranks.clamp(min=1).double().log10()
    pad = torch.full((ranks.shape[0], 1), float("nan"), dtype=ranks.dtype)
    rank_z = torch.cat([ranks, pad], 1) if result.n_positions > 1 else pad
    max_rank = int(result.ranks.max()) if result.ranks.numel() else 1
    out = {
        "probability": {"z": probs, "zmin": 0.0, "zmax": 1.0, "colorbar": {"title": {"text": COLOURS["probability"][0]}}},
        "rank": {"z": rank_z, "zmin": 0.0, "zmax": max(1.0, float(ranks.max()) if ranks.numel() else 1.0),
                 "colorbar": {**_log_rank_colorbar(max_rank), "title": {"text": COLOURS["rank"][0]}}},
        "entropy": {"z": result.entropy.float(), "zmin": 0.0, "zmax": float(result.entropy.max()),
                    "colorbar": {"title": {"text": COLOURS["entropy"][0]}}},
        "kl": {"z": result.kl.float(), "zmin": 0.0, "zmax": max(1e-6, float(result.kl.max())),
               "colorbar": {"title": {"text": COLOURS["kl"][0]}}},
    }
    for name, c in out.items():  # the grid's bottom row holds the input tokens, uncoloured
        c["z"] = [[None] * result.n_positions] + [
            [None if v != v else round(v, 4) for v in row] for row in c["z"].tolist()]
        c["colorscale"] = COLOURS[name][1]
    return out


def top1_grid_figure(result, colour: str = "probability") -> go.Figure:
    """The logit-lens picture: layers (rows) × positions (columns), the top-1 token written in
    each cell, colour = its probability, the rank of the actual next token, the entropy or the
    KL to the final layer (buttons switch); top-k on hover; fixed-width cells."""
    L, P = result.topk_ids.shape[:2]
    ids = result.topk_ids.tolist()
    probs = result.topk_probs.float().tolist()
    # top-5 on hover (top-3 past 300 positions: the page stays small); a click shows all k
    k = min(HOVER_TOPK if P <= 300 else 3, result.topk_ids.shape[2])
    inputs = [html_label(result.label(t)) for t in result.tokens.tolist()]
    cell = [[html_label_short(result.label(ids[li][p][0])) for p in range(P)] for li in range(L)]
    rank = result.ranks.tolist()
    hover = [[f"position {p}: input {inputs[p]}" for p in range(P)]]
    for li in range(L):
        row = []
        for p in range(P):
            top = "<br>".join(f"{j + 1}. {html_label(result.label(ids[li][p][j]))}  {probs[li][p][j]:.3f}"
                              for j in range(k))
            nxt = (f"<br>next {html_label(result.label(result.tokens[p + 1]))}: rank {rank[li][p]}"
                   if p + 1 < P else "")
            row.append(f"{result.layer_labels[li]}, position {p} ({inputs[p]}){nxt}<br>{top}"
                       f"<br>entropy {float(result.entropy[li, p]):.2f}, KL {float(result.kl[li, p]):.3f}")
        hover.append(row)
    colours = _grid_colours(result)
    first = colours[colour]
    rows = ["input", *result.layer_labels]
    cell = [[html_label_short(result.label(t)) for t in result.tokens.tolist()], *cell]
    fig = go.Figure(go.Heatmap(
        z=first["z"], x=list(range(P)), y=rows, text=cell, texttemplate="%{text}",
        textfont={"size": 10}, hovertext=hover, hoverinfo="text", colorscale=first["colorscale"],
        zmin=first["zmin"], zmax=first["zmax"], colorbar=first["colorbar"], xgap=1, ygap=1,
    ))
    buttons = [{"label": name, "method": "restyle",
                "args": [{"z": [c["z"]], "zmin": c["zmin"], "zmax": c["zmax"],
                          "colorscale": [c["colorscale"]], "colorbar": c["colorbar"]}, [0]]}
               for name, c in colours.items()]
    fig.update_layout(
        title={"text": f"Top-1 prediction of every layer at every position ({result.mode} lens)",
               "x": 0.005, "xanchor": "left", "y": 0.985, "yanchor": "top"},
        # numbered columns: the tokens are in the grid's own input row
        xaxis={"title": "position", "tickmode": "linear", "tick0": 0,
               "dtick": 1 if P <= 30 else 5 if P <= 150 else 10 if P <= 1200 else 50},
        yaxis=_layer_axis(rows),
        height=max(340, 26 * (L + 1) + 230),
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "x": 0,
                      "xanchor": "left", "y": 1.0, "yanchor": "bottom", "pad": {"b": 8},
                      "showactive": True, "active": list(colours).index(colour)}],
        margin={"t": 110, "l": 70, "r": 20, "b": 110},
    )
    return wide(fig, P, CELL_PX)


def position_picker_html(result, grid_id: str, topk_id: str, watch_id: str | None) -> str:
    """A position box and a click on any grid cell: the top-k and watched-token figures below
    redraw for that position, from data in the page (nothing is fetched)."""
    wid = f"wb-lens-{next(_ids)}"
    ids = result.topk_ids.tolist()
    used = sorted({i for layer in ids for pos in layer for i in pos} | set(result.tokens.tolist()))
    index = {t: j for j, t in enumerate(used)}
    data = {
        "n": result.n_positions, "k": result.topk_ids.shape[2], "mode": result.mode,
        "grid": grid_id, "topk": topk_id, "watch": watch_id,
        "strs": [html_label(result.label(t)) for t in used],
        "ids": [[[index[i] for i in pos] for pos in layer] for layer in ids],
        "probs": [[[round(q, 4) for q in pos] for pos in layer]
                  for layer in result.topk_probs.float().tolist()],
        "tok": [index[t] for t in result.tokens.tolist()],
        "watchRanks": None if watch_id is None else result.watch_ranks.tolist(),
    }
    return (
        f'<div class="wb-lens-picker" id="{wid}" style="margin:8px 0">'
        f'<label>position <input type="number" min="0" max="{result.n_positions - 1}" '
        f'value="{result.n_positions - 1}" style="width:6em"></label> '
        '<span class="note">(or click a cell of the grid): the top-k and watched-token '
        'figures below show that position</span></div>'
        f'<script type="application/json" id="{wid}-data">{json_for_script(data)}</script>'
        f"<script type='text/javascript'>window.addEventListener('load',function(){{"
        f"wbLensPicker('{wid}');}});</script>"
    )


PICKER_JS = """
function wbLensPicker(id){
  var root=document.getElementById(id), D=JSON.parse(document.getElementById(id+'-data').textContent);
  var input=root.querySelector('input'), grid=document.getElementById(D.grid);
  function show(p){
    p=Math.max(0,Math.min(D.n-1,Math.round(+p)||0)); input.value=p;
    var z=[],text=[],hover=[];
    for(var l=0;l<D.ids.length;l++){
      var t=[],h=[];
      for(var j=0;j<D.k;j++){var s=D.strs[D.ids[l][p][j]];t.push(s);h.push(s+'<br>p = '+D.probs[l][p][j].toFixed(4));}
      z.push(D.probs[l][p]);text.push(t);hover.push(h);
    }
    var topk=document.getElementById(D.topk);
    Plotly.restyle(topk,{z:[z],text:[text],hovertext:[hover]},[0]);
    Plotly.relayout(topk,{'title.text':'Top-'+D.k+' predictions per layer after position '+p+' ('+D.strs[D.tok[p]]+'), '+D.mode+' lens'});
    if(D.watch){
      var wz=[],wt=[];
      for(var l2=0;l2<D.watchRanks.length;l2++){var r=D.watchRanks[l2][p];wt.push(r);wz.push(r.map(function(v){return Math.log10(Math.max(1,v));}));}
      var w=document.getElementById(D.watch);
      Plotly.restyle(w,{z:[wz],text:[wt]},[0]);
      Plotly.relayout(w,{'title.text':'Rank of watched tokens per layer after position '+p+' ('+D.strs[D.tok[p]]+')'});
    }
    root.setAttribute('data-wb-position',p);
  }
  input.addEventListener('change',function(){show(input.value);});
  if(grid&&grid.on){grid.on('plotly_click',function(ev){if(ev.points&&ev.points.length)show(ev.points[0].x);});}
}
"""


def figures(result, position: int | None = None) -> dict[str, go.Figure]:
    """All lens figures; ``position`` (default the last) for top-k and watch."""
    pos = -1 if position is None else position
    figs = {"grid": top1_grid_figure(result), "topk": topk_figure(result, pos)}
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
    "Top-1 grid: the token each layer would predict after each position, written in its cell; "
    "colour (buttons above the grid) = that token's probability (dark blue = sure), the rank of "
    "the token that actually comes next (yellow = rank 1, log scale), the lens's entropy or its "
    "KL to the final layer (darker = more); hover a cell for its top-5, click it (or type a "
    "position) for the top-k and watched-token figures at that position. "
    "Top-k: what each layer would predict after the chosen position. Rankings: the rank (1 = top) of "
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
    figs = figures(result, position)
    uid = next(_ids)
    ids = {"grid": f"wb-lens-grid-{uid}", "topk": f"wb-lens-topk-{uid}",
           "watch": f"wb-lens-watch-{uid}" if "watch" in figs else None}
    for name, div in ids.items():
        if div is not None:
            figs[name].update_layout(meta={**(figs[name].layout.meta or {}), "wb_id": div})
    items: list = []
    for name, fig in figs.items():
        if name == "topk":
            items.append(position_picker_html(result, ids["grid"], ids["topk"], ids["watch"]))
        items.append(fig)
    items.append(table_html(summary_rows(result)))
    return Section("Logit lens", items, note, scripts=[PICKER_JS])


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
