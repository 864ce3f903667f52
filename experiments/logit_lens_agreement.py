"""Logit lens agreement: does each layer's top-1 prediction agree more with the final layer as
depth grows, and does the final LayerNorm make intermediate layers agree earlier than ecco's raw
projection?

Data: held-out WordNet glosses (``wordnet-glosses-validation``), teacher-forced, every position.
The windows are split into G contiguous groups; each group is analysed in both lens modes.

- H1 (depth): in ``final_ln`` mode, top-1 agreement with the final layer rises with depth.
  Statistic: Spearman rho between depth and agreement over the L non-final lenses (the final lens
  agrees with itself by definition), on all positions, and the share of groups with rho > 0.
- H2 (final LayerNorm): ``final_ln`` agrees earlier than ``raw``. Statistic: mean agreement over
  the non-final lenses, ``final_ln`` minus ``raw``; mean and standard error over the G groups,
  and the number of groups where the difference is positive (a sign test).
- Watched tokens: ranks of chosen tokens per layer at the last position of a prompt (ecco's
  "The keys to the cabinet" → " is" / " are"), for every candidate whose tokens are single pieces.

    .venv/bin/python experiments/logit_lens_agreement.py [--model tiny-gloss-lm] [--docs 1000]
    .venv/bin/python experiments/logit_lens_agreement.py --model gemma-3-270m --docs 40

Writes ``experiments/results/logit_lens_agreement.md`` (tiny-gloss-lm) or
``logit_lens_agreement.<model>.md`` and ``.html`` (figures) beside it. Case study (the seeds'
own prompts): per-layer top-k at the last position of "Heathrow airport is in the city of".
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from workbench import load_model
from workbench.analyses.lens import LensResult, analyze
from workbench.data import load_windows
from workbench.errors import WorkbenchError
from workbench.identity import weights_hash
from workbench.views.html import Page, Section, table_html
from workbench.views.lens import mode_comparison_figure, section, watch_figure

RESULTS = Path(__file__).parent / "results"
MODES = ("final_ln", "raw")
TOPK_PROMPT = "Heathrow airport is in the city of"
WATCH_CASES = [
    ("The keys to the cabinet", [" is", " are"]),
    ("cat, true cat: feline mammal usually having thick soft", [" fur", " skin", " hair"]),
    ("dog, domestic dog, Canis familiaris: a member of the genus", [" Canis", " Felis"]),
]


def spearman(y: np.ndarray) -> float:
    """Spearman rho between position (depth) and ``y`` (ranks; ties averaged)."""
    if len(y) < 2:
        return float("nan")
    order = np.argsort(np.argsort(y, kind="stable"), kind="stable").astype(float)
    for v in np.unique(y):  # average the ranks of ties
        order[y == v] = order[y == v].mean()
    x = np.arange(len(y), dtype=float)
    if order.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, order)[0, 1])


def combine(results: list[LensResult]) -> dict[str, torch.Tensor]:
    """Dataset aggregates of several groups as if computed in one pass (weighted by counts)."""
    npos = torch.stack([r.dataset["n_positions"] for r in results]).double()
    ntgt = torch.stack([r.dataset["n_targets"] for r in results]).double()
    out = {}
    for key, weight in [("top1_agreement", npos), ("mean_kl", npos), ("mean_entropy", npos),
                        ("mean_log_rank", ntgt), ("top1_accuracy", ntgt)]:
        vals = torch.stack([r.dataset[key] for r in results])
        out[key] = (vals * weight[:, None]).sum(0) / weight.sum()
    out["rank_hist"] = torch.stack([r.dataset["rank_hist"] for r in results]).sum(0)
    out["rank_hist_edges"] = results[0].dataset["rank_hist_edges"]
    out["n_positions"] = npos.sum().long()
    out["n_targets"] = ntgt.sum().long()
    return out


def watched(model, mode: str) -> tuple[list[dict], list, list[str]]:
    rows, figs, skipped = [], [], []
    for prompt, watch in WATCH_CASES:
        try:
            res = analyze(model, load_windows(model, text=prompt), k=5, watch=watch, mode=mode,
                          progress=False)
        except WorkbenchError as exc:
            skipped.append(f"`{prompt}` / {watch}: {exc}")
            continue
        rk = res.rankings_watch(position=-1)
        for i, layer in enumerate(rk.layers):
            rows.append({"prompt": prompt, "layer": layer,
                         **{repr(c): int(rk.ranks[i, j]) for j, c in enumerate(rk.columns)}})
        figs.append(watch_figure(res))
    return rows, figs, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-gloss-lm")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="a tiny-gloss-lm folder written by the training script (instead of --model)")
    ap.add_argument("--docs", type=int, default=1000, help="validation gloss documents")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    note = ""
    try:
        if args.model_dir is not None:
            from workbench.models.gloss import build_model

            model = build_model(args.model_dir)
        else:
            model = load_model(args.model, device="cpu")
    except WorkbenchError as exc:
        note = (f"**{args.model} could not be loaded ({exc}); this run uses `random-tiny` (random "
                "weights, never trained), so the numbers only show the pipeline, not a finding.**")
        model = load_model("random-tiny", device="cpu")
    name = model.cfg.model_name
    windows = load_windows(model, dataset="wordnet-glosses-validation", limit=args.docs,
                           window=args.window)
    groups = [windows.shard(g, args.groups) for g in range(args.groups)]
    per_mode: dict[str, list[LensResult]] = {m: [] for m in MODES}
    for mode in MODES:
        for w in groups:
            per_mode[mode].append(analyze(model, w, k=5, mode=mode, progress=False))
    total = {m: dataclasses.replace(per_mode[m][0], dataset=combine(per_mode[m])) for m in MODES}
    L = len(total["final_ln"].layer_labels) - 1

    # H1: agreement rises with depth (non-final lenses).
    agree_all = total["final_ln"].dataset["top1_agreement"].numpy()
    rho = spearman(agree_all[:L])
    rho_groups = [spearman(r.dataset["top1_agreement"].numpy()[:L]) for r in per_mode["final_ln"]]
    h1_pos = sum(r > 0 for r in rho_groups)
    # H2: final_ln agrees earlier than raw (mean over non-final lenses), paired over groups.
    diffs = np.array([
        float(a.dataset["top1_agreement"][:L].mean() - b.dataset["top1_agreement"][:L].mean())
        for a, b in zip(per_mode["final_ln"], per_mode["raw"], strict=True)
    ])
    d_all = float(total["final_ln"].dataset["top1_agreement"][:L].mean()
                  - total["raw"].dataset["top1_agreement"][:L].mean())
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    n_pos = int((diffs > 0).sum())
    sign_p = sum(math.comb(len(diffs), j) for j in range(n_pos, len(diffs) + 1)) / 2 ** len(diffs)

    rows = []
    for i, layer in enumerate(total["final_ln"].layer_labels):
        f, r = total["final_ln"].dataset, total["raw"].dataset
        rows.append({"layer": layer, "agree final_ln": float(f["top1_agreement"][i]),
                     "agree raw": float(r["top1_agreement"][i]),
                     "KL final_ln": float(f["mean_kl"][i]), "KL raw": float(r["mean_kl"][i]),
                     "top-1 acc final_ln": float(f["top1_accuracy"][i]),
                     "top-1 acc raw": float(r["top1_accuracy"][i]),
                     "mean ln rank final_ln": float(f["mean_log_rank"][i]),
                     "mean ln rank raw": float(r["mean_log_rank"][i])})
    watch_rows, watch_figs, skipped = watched(model, "final_ln")
    case = analyze(model, load_windows(model, text=TOPK_PROMPT), k=5, progress=False)
    topk_rows = []
    for layer in case.layer_labels:
        preds = case.predictions(position=-1, k=5, layer=layer)
        topk_rows.append({"layer": layer, **{f"top {p['rank']}": f"{p['token']!r} {p['prob']:.3f}"
                                             for p in preds}})
    emerge = first_stable_layer(total["final_ln"].dataset["top1_agreement"].numpy())

    args.out.mkdir(parents=True, exist_ok=True)
    page = Page(f"Logit lens agreement ({name})", {"model": name, "data": windows.source,
                                                   "windows": len(windows),
                                                   "positions": int(total["final_ln"].dataset["n_positions"])})
    page.add(Section("final_ln vs raw", [mode_comparison_figure(total), table_html(rows)]))
    for mode in MODES:
        sec = section(total[mode])
        page.add(Section(f"Logit lens ({mode})", sec.items, sec.note))
    if watch_figs:
        page.add(Section("Watched tokens", watch_figs, "Ranks at the prompt's last position."))
    stem = "logit_lens_agreement" + ("" if name == "tiny-gloss-lm" else f".{name}")
    html = page.write(args.out / f"{stem}.html")

    verdict1 = "supported" if rho > 0 and h1_pos > len(rho_groups) / 2 else "not supported"
    verdict2 = "supported" if d_all > 0 and sign_p < 0.05 else "not supported"
    if note:  # random weights test the pipeline, not the hypotheses
        verdict1 = verdict2 = "no verdict (untrained model)"
    md = [
        "# Logit lens agreement", "",
        f"Model `{name}` (weights sha256 {weights_hash(model)}…, {L} blocks, {L + 1} lenses); data `{windows.source}` "
        f"({len(windows)} windows of ≤{args.window} tokens from {args.docs} documents, "
        f"{int(total['final_ln'].dataset['n_positions'])} positions), split into "
        f"{args.groups} contiguous groups. Produced by `experiments/logit_lens_agreement.py`; "
        f"figures in `{html.name}`.", "",
    ]
    if note:
        md += [note, ""]
    md += [
        "## H1: top-1 agreement with the final layer rises with depth (final_ln)", "",
        f"Statistic: Spearman rho(depth, agreement) over the {L} non-final lenses. All positions: "
        f"rho = {rho:.3f}; groups with rho > 0: {h1_pos}/{len(rho_groups)}. **{verdict1}**.", "",
        "## H2: final_ln agrees earlier than raw", "",
        f"Statistic: mean agreement over non-final lenses, final_ln − raw. All positions: "
        f"{d_all:+.4f}; over groups: {diffs.mean():+.4f} ± {se:.4f} (s.e.); positive in "
        f"{n_pos}/{len(diffs)} groups (one-sided sign test p = {sign_p:.4f}). **{verdict2}**.", "",
        "Reading: top-1 is invariant to the positive per-position scale the final LayerNorm "
        "divides by, so the two modes can only disagree on the argmax through the LN's mean "
        "centering, its learned gain and bias, and the relative weight of the unembedding bias. "
        "Ranks are scale-invariant too. The scale does set the softmax temperature, so KL and "
        "entropy can differ much more between the modes than agreement and ranks do.", "",
        "Each mode's agreement is with its own last lens. In `final_ln` mode that is the model's "
        "prediction; in `raw` mode it is `resid @ W_U` without the final norm, which is not: "
        f"its next-token top-1 accuracy is {float(total['raw'].dataset['top1_accuracy'][-1]):.4f} "
        f"against {float(total['final_ln'].dataset['top1_accuracy'][-1]):.4f}. Where a few "
        "residual dimensions carry most of the norm (gemma-3-270m: dimension 163 reaches 4e4), "
        "every raw lens is dominated by the same direction and raw lenses agree with each other "
        "without predicting anything: read raw agreement beside raw accuracy.", "",
        "## Where the final prediction emerges", "",
        f"First lens from which top-1 agreement with the final layer stays at or above 0.5: "
        f"**{emerge}** (of {L + 1} lenses; agreement per layer below).", "",
        "## Per layer (all positions)", "", markdown_table(rows), "",
        f"## Case study: top-5 per layer at the last position of `{TOPK_PROMPT}` (final_ln)", "",
        markdown_table(topk_rows), "",
        "## Watched tokens (final_ln, last position of the prompt)", "",
        markdown_table(watch_rows) if watch_rows else "(no candidate tokenized to single pieces)",
        "",
    ]
    if skipped:
        md += ["Skipped (the lens refuses watch strings that are not single tokens):", ""]
        md += [f"- {s}" for s in skipped] + [""]
    out_md = args.out / f"{stem}.md"
    out_md.write_text("\n".join(md))
    print(f"wrote {out_md} and {html}")
    return 0


def first_stable_layer(agreement: np.ndarray, level: float = 0.5) -> str:
    """Index of the first lens from which agreement never drops below ``level`` again."""
    above = agreement >= level
    for i in range(len(above)):
        if above[i:].all():
            return f"lens {i}"
    return "none"


def markdown_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]

    def fmt(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
