"""Neuron pages: everything about one AMAP unit on one page, over your own data, offline.

For unit ``L_N`` (layer L, neuron N of ``blocks.L.mlp.hook_post``):

1. its activation histogram over every position the AMAP counted (the build's windows without
   the BOS position unless it was built with ``count_bos``; one pass over the data, keeping only
   the chosen neurons' columns);
2. its max-activating windows with the activation at every token (``read_contexts``);
3. its top tokens by mean activation: the AMAP row, with how often each token was seen;
4. its direct effect on the output: ``W_out[L][N] · W_U``, the logits one unit of its activation
   adds directly (not through later layers; the final norm's scale is left out), top and bottom.

>>> units = unit_pages(model, windows, amap, [(1, 17)])        # doctest: +SKIP
>>> write_pages(units, "out/amap/pages", amap.meta)            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workbench import capture
from workbench.analyses.amap_contexts import check_units, read_contexts
from workbench.data import Windows

BINS = 80


def activations(model, windows: Windows, units: Sequence[tuple[int, int]], batch_size: int = 16,
                progress: bool = True, count_bos: bool = True) -> dict[tuple[int, int], np.ndarray]:
    """Every real position's activation of each unit (float32), in window order (without the
    BOS position unless ``count_bos``: the positions an AMAP built so counts)."""
    from workbench.analyses.amap_reducer import key_mask

    layers = sorted({layer for layer, _ in units})
    hooks = capture.mlp_hooks(model, layers)
    neurons = {layer: [n for lay, n in units if lay == layer] for layer in layers}
    parts: dict[tuple[int, int], list[np.ndarray]] = {u: [] for u in units}
    for batch in capture.stream(model, windows, hooks, batch_size, progress=progress,
                                desc="neuron pages"):
        mask, _ = key_mask(windows, batch.mask, count_bos)
        for layer, hook in zip(layers, hooks, strict=True):
            cols = batch.acts[hook][..., neurons[layer]][mask].float().cpu().numpy()  # [pos, n]
            for c, neuron in enumerate(neurons[layer]):
                parts[(layer, neuron)].append(cols[:, c])
    return {u: np.concatenate(v) if v else np.zeros(0, np.float32) for u, v in parts.items()}


def direct_effect(model, layer: int, neuron: int, k: int = 15) -> dict:
    """Top and bottom ``k`` tokens of ``W_out[layer][neuron] · W_U``."""
    w_out = model.blocks[layer].mlp.W_out[neuron].detach().float()
    effect = (w_out @ model.W_U.detach().float()).cpu()
    n = min(int(model.cfg.d_vocab), len(model.tokenizer)) if model.tokenizer is not None else 0
    effect = effect[:n] if n else effect
    top, bottom = effect.topk(k), (-effect).topk(k)

    def rows(vals, ids, sign):
        return [{"token": model.tokenizer.decode([int(i)]), "id": int(i), "logit": sign * float(v)}
                for v, i in zip(vals, ids, strict=True)]

    return {"top": rows(top.values, top.indices, 1), "bottom": rows(bottom.values, bottom.indices, -1)}


def unit_pages(model, windows: Windows, result, units: Sequence[tuple[int, int]], *,
               mode: str = "input", k: int = 20, min_count: int = 1, batch_size: int = 16,
               progress: bool = True, window_offset: int = 0) -> list[dict]:
    """The data of each unit's page (see the module docstring)."""
    units = check_units(result, units)
    count_bos = bool(result.meta.get("settings", {}).get("count_bos", True))  # older: counted
    acts = activations(model, windows, units, batch_size, progress, count_bos)
    contexts = {(c["layer"], c["neuron"]): c for c in
                read_contexts(model, windows, result, window_offset=window_offset, units=units)} \
        if result.top is not None else {}
    out = []
    for layer, neuron in units:
        values = acts[(layer, neuron)]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        counts, edges = np.histogram(values, bins=BINS, range=(lo, hi if hi > lo else lo + 1))
        out.append({
            "unit": f"{layer}_{neuron}", "layer": layer, "neuron": neuron, "mode": mode,
            "n_positions": int(values.size), "mean": float(values.mean()) if values.size else None,
            "max": hi, "min": lo, "share_positive": float((values > 0).mean()) if values.size else None,
            "hist_counts": counts.tolist(), "hist_edges": edges.tolist(),
            "top_tokens": result.top_tokens(layer, neuron, mode, k, min_count),
            "contexts": contexts.get((layer, neuron), {}).get("windows", []),
            "direct_effect": direct_effect(model, layer, neuron),
        })
    return out


def page_name(unit: str) -> str:
    return f"unit-{unit}.html"


def write_pages(pages: list[dict], out_dir: str | Path, header: dict | None = None) -> list[Path]:
    """One HTML page per unit and ``index.html`` linking them, in ``out_dir``."""
    from workbench.views.neuron import index_page, unit_page

    out_dir = Path(out_dir)
    paths = [unit_page(p, header).write(out_dir / page_name(p["unit"])) for p in pages]
    index = index_page(pages, header).write(out_dir / "index.html")
    return [*paths, index]

