"""Semantics figures: t-SNE of lemma AMAPs per layer (coloured by domain, POS or lexname, hover =
lemma) and the permutation tests (effect size per layer and label, with p-values)."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from workbench.analyses.semantics import CONFOUND, LOW_COVERAGE, p_text
from workbench.views.html import Section, table_html

GREY = "rgba(160,160,160,0.35)"


def tsne_figure(result, layer_pos: int, kind: str = "domain", top: int = 5) -> go.Figure:
    emb = result.tsne[layer_pos]
    idx = result.tsne_index.tolist()
    labels = result.labels(kind, top)
    fig = go.Figure()
    groups: dict[str, list[int]] = {}
    for point, row in enumerate(idx):
        groups.setdefault(labels[row], []).append(point)
    # background labels first so the coloured groups are drawn on top
    order = sorted(groups, key=lambda g: (g not in ("(none)", "other"), -len(groups[g])))
    for name in order:
        pts = groups[name]
        background = name in ("(none)", "other")
        fig.add_scatter(
            x=emb[pts, 0].tolist(), y=emb[pts, 1].tolist(), mode="markers", name=name,
            text=[f"{html.escape(result.rows[idx[p]]['lemma'], quote=False)}<br>"
                  f"{html.escape(result.rows[idx[p]]['synset'], quote=False)}"
                  for p in pts],
            hoverinfo="text+name",
            marker={"size": 4 if background else 6, **({"color": GREY} if background else {})},
        )
    fig.update_layout(title=f"t-SNE of lemma AMAPs, layer {result.layers[layer_pos]}, by {kind}",
                      height=460, xaxis={"showticklabels": False},
                      yaxis={"showticklabels": False}, legend={"itemsizing": "constant"})
    return fig


def tests_figure(result) -> go.Figure:
    fig = go.Figure()
    for kind in ("domain", "pos", "lexname"):
        rows = [t for t in result.tests if t["label"] == kind]
        if not rows:
            continue
        fig.add_bar(name=kind, x=[f"layer {t['layer']}" for t in rows],
                    y=[t["effect_size"] for t in rows],
                    text=[p_text(t["p_value"], t["n_permutations"]) for t in rows],
                    textposition="outside",
                    hovertext=[f"T={t['statistic']:.4f} (within {t['within']:.4f}, between "
                               f"{t['between']:.4f}), n={t['n_items']}, groups={t['n_groups']}"
                               for t in rows], hoverinfo="text")
    fig.update_layout(title="Do lemmas sharing a label have more similar AMAPs? "
                      "(effect = z of the statistic against label permutations)",
                      yaxis_title="effect size (z vs permutation null)", barmode="group",
                      height=420)
    return fig


def figures(result, top: int = 5) -> dict[str, go.Figure]:
    out = {"tests": tests_figure(result)}
    for i, layer in enumerate(result.layers):
        for kind in ("domain", "pos", "lexname"):
            out[f"tsne_{kind}_layer{layer}"] = tsne_figure(result, i, kind, top)
    return out


def tests_table(result) -> str:
    cols = ["layer", "label", "statistic", "within", "between", "p", "effect_size",
            "n_items", "n_groups", "n_permutations"]
    rows = [{**t, "p": p_text(t["p_value"], t["n_permutations"])} for t in result.tests]
    return table_html(rows, cols)


def control_table(result) -> str:
    """The trained model's tests beside the random-init control's, with the verdicts."""
    if not result.control:
        return ("<p class='note'>No random-init control was run: the tests above do not tell "
                "learned semantics from surface form (<code>--control random-init</code>).</p>")
    rows = [{**r, "p trained": p_text(r["p trained"], r["n_permutations"]),
             "p control": p_text(r["p control"], r["n_permutations"])} for r in result.control]
    alpha = result.control[0]["alpha"]
    return (f"<h4>Against the random-init control</h4><p class='note'>supported: trained p "
            f"below {alpha:.3g} (0.05 / tests, Bonferroni) and a statistic at least twice the "
            "control's, a rule fixed before looking.</p>"
            + table_html(rows, ["layer", "label", "n", "T trained", "p trained", "T control",
                                "p control", "supported"]))


def section(result, top: int = 5) -> Section:
    c = result.counts
    counts = (f"<p class='note'>{c['lemmas']:,} distinct first lemmas in WordNet; "
              f"{c['dropped_unseen']:,} dropped (no token piece seen in the AMAP); "
              f"{c['kept']:,} kept; {c['sampled']:,} sampled for the figures and tests.</p>")
    coverage = c.get("coverage", c["kept"] / max(1, c["lemmas"]))
    if coverage < LOW_COVERAGE:
        counts += (f"<p class='warn'><b>Low coverage:</b> only {coverage:.0%} of the lemmas have "
                   "a token piece the AMAP saw; the tests speak for those words only. Build the "
                   "AMAP over more text for a wider cover.</p>")
    counts += f"<p class='note'><b>Confound.</b> {html.escape(CONFOUND)}</p>"
    figs = figures(result, top)
    items = [counts, figs.pop("tests"), tests_table(result), control_table(result),
             *figs.values()]
    return Section(
        "WordNet semantics of the AMAP", items,
        note="Each test asks whether lemmas that share a label (topic domain, part of speech, "
        "lexicographer file) have more similar AMAP vectors (cosine, after standardising each "
        "neuron across lemmas) than lemmas that do not. statistic = mean within-label minus "
        "mean between-label similarity; p = share of label shufflings reaching it; effect = "
        "its distance from the shuffled mean in shuffled standard deviations. t-SNE maps "
        "only suggest; the tests decide. Grey points have no label among the top ones.",
    )
