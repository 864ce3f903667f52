"""Max-activating contexts of AMAP units: each unit's top windows, read back token by token.

1. A build keeps, per unit, its ``top_k`` max-activating windows (``TopWindows``) and, from the
   same pass, the unit's activation at ``span`` positions around each one's peak.
2. ``read_contexts(model, windows, result, units=[(1, 17), (0, 3)])`` returns, per unit, each
   window's tokens around the peak and the unit's activation at every one of them
   (``blocks.{l}.mlp.hook_post[..., i]``), best window first; ``peak`` indexes the tokens shown,
   ``offset`` is the first one's position in the window. An AMAP written without the kept
   activations (older builds) has those windows run through the model again.
3. Without ``units`` it reads the ``per_layer`` units with the largest maximum of each layer (what a
   build writes to ``amap_contexts.json``).

>>> read_contexts(model, windows, result, units=[(1, 17)])[0]["windows"][0]["acts"]  # doctest: +SKIP
[0.01, -0.12, 2.31, ...]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from workbench import capture
from workbench.data import Windows
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.analyses.amap import AmapResult

_UNIT = re.compile(r"^\s*(\d+)\s*[_.:]\s*(\d+)\s*$")


def parse_unit(text: str) -> tuple[int, int]:
    """``"1_17"`` → ``(1, 17)`` (layer, neuron), as SYSIF names units."""
    m = _UNIT.match(text)
    if m is None:
        raise WorkbenchError(f"unit {text!r}: write units as LAYER_NEURON, e.g. 1_17")
    return int(m.group(1)), int(m.group(2))


def largest_units(result: AmapResult, per_layer: int) -> list[tuple[int, int]]:
    """The ``per_layer`` units with the largest max activation in each layer."""
    out = []
    for row, layer in enumerate(result.layers):
        k = min(per_layer, result.amap.d_mlp)
        out += [(layer, n) for n in result.amap.act_max[row].float().topk(k).indices.tolist()]
    return out


def check_units(result: AmapResult, units: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``units`` without repeats, after checking each layer and neuron is in ``result``."""
    out = []
    for layer, neuron in units:
        result._row(layer)
        if not 0 <= neuron < result.amap.d_mlp:
            raise WorkbenchError(
                f"unit {layer}_{neuron}: neuron {neuron} out of range 0..{result.amap.d_mlp - 1}")
        if (layer, neuron) not in out:
            out.append((int(layer), int(neuron)))
    return out


def read_contexts(model, windows: Windows, result: AmapResult, per_layer: int = 2,
                  window_offset: int = 0, *, units: Sequence[tuple[int, int]] | None = None,
                  batch_size: int = 32) -> list[dict]:
    """Max-activating windows of ``units`` (default: the ``per_layer`` largest per layer).

    ``windows`` must be the data the AMAP was built on; window ids in the AMAP minus
    ``window_offset`` index it. No forward pass when the build kept the activations; else one
    per ``batch_size`` windows read.
    """
    if result.top is None:
        if units is None:
            return []
        raise WorkbenchError("this AMAP holds no max-activating windows (a merge of AMAPs of "
                             "different data drops them); read contexts from a single build")
    if units is None:
        if per_layer <= 0:
            return []
        units = largest_units(result, per_layer)
    units = check_units(result, units)
    if not units:
        return []
    top = result.top.compute()
    tokenizer = getattr(model, "tokenizer", None) if model is not None else None
    picked = {u: [(rank, int(w)) for rank, w in
                  enumerate(top["windows"][result._row(u[0]), u[1]].tolist()) if w >= 0]
              for u in units}
    wanted = sorted({w - window_offset for ranks in picked.values() for _, w in ranks})
    if wanted and (wanted[0] < 0 or wanted[-1] >= len(windows)):
        raise WorkbenchError(
            f"the AMAP's max-activating windows go up to window {wanted[-1] + window_offset}, but "
            f"the data given has {len(windows)} windows: pass the data the AMAP was built on "
            "(same source, window, stride and BOS)")
    kept = "acts" in top  # the pass kept each window's activations around its peak
    acts = {} if kept else _unit_activations(model, windows, wanted, units, batch_size)
    out = []
    for layer, neuron in units:
        row = result._row(layer)
        items = []
        for rank, w in picked[(layer, neuron)]:
            i = w - window_offset
            n = int(windows.mask[i].sum())
            peak = int(top["positions"][row, neuron, rank])
            if kept:  # the snippet the pass kept: ``span`` positions from ``starts``
                lo = int(top["starts"][row, neuron, rank])
                hi = min(n, lo + top["acts"].shape[-1])
                unit_acts = top["acts"][row, neuron, rank, : hi - lo].tolist()
            else:
                lo, hi, unit_acts = 0, n, acts[(layer, neuron, i)]
            ids = windows.tokens[i, lo:hi].tolist()
            items.append({"window": w, "doc": int(windows.doc_ids[i]),
                          "start": int(windows.starts[i]), "offset": lo,
                          "max": float(top["values"][row, neuron, rank]), "peak": peak - lo,
                          "tokens": [result.label(t, tokenizer) for t in ids],
                          "acts": unit_acts})
        out.append({"layer": layer, "neuron": neuron, "unit": f"{layer}_{neuron}",
                    "windows": items})
    return out


def _unit_activations(model, windows: Windows, wanted: list[int], units: list[tuple[int, int]],
                      batch_size: int) -> dict[tuple[int, int, int], list[float]]:
    """``(layer, neuron, window) → activation per real token``, for every wanted window and unit:
    only the chosen neurons' columns are kept, so a big model's activations never pile up."""
    layers = sorted({layer for layer, _ in units})
    hooks = dict(zip(layers, capture.mlp_hooks(model, layers), strict=True))
    neurons = {layer: [n for lay, n in units if lay == layer] for layer in layers}
    device = next(model.parameters()).device
    stop = None if capture.is_encoder(model) else layers[-1] + 1
    sub = windows.select(torch.tensor(wanted, dtype=torch.long))
    out: dict[tuple[int, int, int], list[float]] = {}
    for first, tok, mask in sub.batches(batch_size):
        acts = capture.forward(model, tok.to(device), mask.to(device), list(hooks.values()),
                               stop_at_layer=stop)[0]
        lengths = mask.sum(1).tolist()
        for layer in layers:
            cols = acts[hooks[layer]][..., neurons[layer]].float().cpu()  # [batch, pos, chosen]
            for j, n in enumerate(lengths):
                for c, neuron in enumerate(neurons[layer]):
                    out[(layer, neuron, wanted[first + j])] = cols[j, :n, c].tolist()
    return out
