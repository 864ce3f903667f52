"""AMAP figures: key coverage, unit means and dead units, top tokens per unit, position profiles,
and max-activating contexts (tokens shaded by the unit's activation)."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.views.html import Section, table_html
from workbench.views.tokens import html_label, html_label_short, html_running


def coverage_figure(result) -> go.Figure:
    """How many keys were seen 0, 1, 2-9, 10-99, ... times, per mode."""
    edges = [0, 1, 2, 10, 100, 1000, 10_000, 100_000, float("inf")]
    names = ["0 (unseen)", "1", "2-9", "10-99", "100-999", "1k-9k", "10k-99k", "100k+"]
    fig = go.Figure()
    V = result.amap.d_vocab
    for mode in result.modes:
        c = result.counts(mode)[result.keys(mode) < V].double()
        n = [int(((c >= lo) & (c < hi)).sum()) for lo, hi in zip(edges, edges[1:], strict=False)]
        n[0] = V - len(c)  # the tokens never seen are absent from a sparse AMAP
        fig.add_bar(name=mode, x=names, y=n, text=[f"{x:,}" if x else "" for x in n],
                    textposition="outside")
    seen = len(result.keys(result.modes[0]))
    # log counts: a paragraph sees ~50 of gemma's 262,144 tokens, a linear axis shows one bar
    fig.update_layout(title=f"Token coverage: how often each of the {V:,} vocabulary tokens was "
                      f"the key ({seen:,} keys seen in {result.modes[0]} mode)",
                      xaxis_title="positions keyed by the token", yaxis_title="tokens (log)",
                      yaxis_type="log", barmode="group", height=360)
    return fig


def unit_means_figure(result) -> go.Figure:
    means = result.amap.unit_mean()
    dead = result.dead_units()
    fig = go.Figure()
    for row, layer in enumerate(result.layers):
        fig.add_box(y=means[row].tolist(), name=f"layer {layer} ({int(dead[row].sum())} dead)",
                    boxpoints=False)
    fig.update_layout(title="Mean activation of each unit over all positions (dead: max <= 0)",
                      yaxis_title="mean activation", height=380, showlegend=False)
    return fig


def chosen_units(result, n: int = 12) -> list[tuple[int, int]]:
    """Units shown in detail: those with contexts, else the largest maxima of each layer."""
    if result.contexts:
        return [(c["layer"], c["neuron"]) for c in result.contexts][:n]
    per = max(1, n // len(result.layers))
    out = []
    for row, layer in enumerate(result.layers):
        out += [(layer, i) for i in result.amap.act_max[row].float().topk(per).indices.tolist()]
    return out[:n]


def top_tokens_figure(result, mode: str = "input", k: int = 8, min_count: int = 3) -> go.Figure:
    """The ``k`` tokens of highest mean per chosen unit, among tokens seen ``min_count``+ times;
    on short data (fewer than ``k`` tokens seen that often) every token seen counts, and the
    title says so."""
    units = chosen_units(result)
    tokens = result.keys(mode) < result.amap.d_vocab
    if int((result.counts(mode)[tokens] >= min_count).sum()) < k:
        min_count = 1
    z, text = [], []
    for layer, neuron in units:
        top = result.top_tokens(layer, neuron, mode, k, min_count)
        z.append([t["mean"] for t in top] + [None] * (k - len(top)))
        text.append([html_label_short(t["token"], 10) for t in top] + [""] * (k - len(top)))
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", colorscale="Viridis",
                               x=[str(j + 1) for j in range(k)],
                               y=[f"{layer}_{neuron}" for layer, neuron in units],
                               colorbar={"title": "mean act"}))
    fig.update_layout(title=f"Top {k} {mode} tokens of selected units (seen >= {min_count} times)",
                      xaxis={"title": "rank", "type": "category"},
                      yaxis={"title": "unit", "type": "category", "autorange": "reversed"},
                      height=max(300, 28 * len(units) + 140))
    return fig


def positions_figure(result, mode: str = "input") -> go.Figure | None:
    W = result.amap.n_positions
    if not W:
        return None
    units = chosen_units(result)
    V = result.amap.d_vocab
    means, _ = result.at(mode, list(range(V, V + W)))
    z = [means[result.layers.index(layer), :, neuron].tolist() for layer, neuron in units]
    fig = go.Figure(go.Heatmap(z=z, x=[f"POS_{k}" for k in range(W)],
                               y=[f"{layer}_{neuron}" for layer, neuron in units],
                               colorscale="RdBu", zmid=0, colorbar={"title": "mean act"}))
    fig.update_layout(title="Mean activation per window position ([POS_k] pseudo-tokens)",
                      yaxis={"type": "category", "autorange": "reversed"},
                      height=max(300, 28 * len(units) + 140))
    return fig


def contexts_html(result, max_units: int = 8) -> str:
    """Each unit's max-activating windows, tokens shaded by the unit's activation there."""
    if not result.contexts:
        return "<p class='note'>(no max-activating contexts were read for this AMAP)</p>"
    parts = []
    for unit in result.contexts[:max_units]:
        rows = []
        for w in unit["windows"]:
            top = max(w["max"], 1e-9)
            spans = []
            for tok, a in zip(w["tokens"], w["acts"], strict=True):
                alpha = min(1.0, max(0.0, a / top))
                spans.append(f"<span title='{html_label(tok)}: {a:.3f}' "
                             f"style='background:rgba(230,80,20,{alpha:.2f})'>"
                             f"{html_running(tok)}</span>")
            rows.append(f"<div><code>{w['max']:.3f}</code> {''.join(spans)}</div>")
        parts.append(f"<h4>unit {unit['unit']}</h4>" + "".join(rows))
    return ("<div style='font-family:monospace;font-size:13px;white-space:pre-wrap;"
            "overflow-wrap:anywhere'>" + "".join(parts) + "</div>")


def figures(result) -> dict[str, go.Figure]:
    out = {"coverage": coverage_figure(result), "unit_means": unit_means_figure(result)}
    for mode in result.modes:
        out[f"top_tokens_{mode}"] = top_tokens_figure(result, mode)
    pos = positions_figure(result, result.modes[0])
    if pos is not None:
        out["positions"] = pos
    return out


def pages_html(result, pages_dir: str | None) -> str:
    """Links to the neuron pages written beside the report, or how to write them."""
    if pages_dir:
        from workbench.analyses.neuron_pages import page_name

        units = [f"{layer}_{neuron}" for layer, neuron in chosen_units(result)]
        links = " · ".join(f"<a href='{pages_dir}/{page_name(u)}'>unit {u}</a>" for u in units)
        return (f"<p class='note'>Neuron pages (histogram over the data, contexts, top tokens, "
                f"direct effect on the output): {links} · <a href='{pages_dir}/index.html'>all</a>"
                "</p>")
    return ("<p class='note'>A page for any unit (histogram over the data, contexts, top tokens, "
            "direct effect on the output): <code>workbench amap pages DIR --unit L_N</code>.</p>")


def section(result, pages_dir: str | None = None) -> Section:
    inv = [{"check": k, "holds": "yes" if v else "NO"} for k, v in result.invariants.items()]
    dead = result.dead_units()
    summary = [{"layer": layer, "units": int(dead.shape[1]), "dead": int(dead[row].sum())}
               for row, layer in enumerate(result.layers)]
    items = list(figures(result).values())
    items += [table_html(summary), table_html(inv), pages_html(result, pages_dir),
              contexts_html(result)]
    return Section(
        "Neuron AMAPs", items,
        note="An AMAP cell is a unit's mean activation over every position whose key is that "
        "token (input: the token read there; output: the model's argmax prediction there). "
        "Top-token heatmaps list, per unit, the tokens with the highest mean among tokens seen at "
        "least 3 times (rare tokens have noisy means; on a short text, where fewer than 8 tokens "
        "were seen that often, every token seen, as the title says). Contexts show the windows where a unit "
        "peaked, each token shaded by the unit's activation: read a neuron from these, not from "
        "one token. Invariants are SYSIF's sanity checks and must all hold.",
    )
