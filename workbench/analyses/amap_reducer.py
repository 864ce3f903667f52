"""The AMAP as a reducer of the capture engine (``workbench.capture.run``).

``AmapReducer(model, windows, modes=..., positions=..., layers=...)`` reads the MLP hooks (and the
logits for ``output`` mode) of every batch into the ``Amap`` sums and counts and the
``TopWindows`` with each kept window's activations around its peak; ``finish()`` / ``result()``
return the ``AmapResult`` (``workbench.analyses.amap``, whose ``analyze`` runs it alone). A BOS
position (CLS / SEP for an encoder) is no key unless ``count_bos``.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor

from workbench import artifacts, capture
from workbench.analyses.amap import AmapResult, check_model, key_labels, resolve_layers
from workbench.analyses.amap_contexts import read_contexts
from workbench.data import Windows
from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap, estimate_bytes
from workbench.kernels.argmax import argmax_last
from workbench.kernels.top_windows import TopWindows
from workbench.memory import check_fits


def key_mask(windows: Windows, mask: Tensor, count_bos: bool) -> tuple[Tensor, int]:
    """Positions that count as AMAP keys (and the ``[POS_k]`` shift): the real positions, without
    the special tokens the windowing added (BOS / CLS first, SEP last) unless ``count_bos``."""
    if count_bos or not windows.bos:
        return mask, 0
    keep = mask.clone()
    keep[:, 0] = False
    if windows.tokens.shape[1] - windows.window == 2:  # [CLS] text [SEP]: drop the SEP too
        last = mask.sum(1) - 1
        keep[torch.arange(mask.shape[0], device=mask.device), last.clamp(min=0)] = False
    return keep, 1


class AmapReducer:
    """The AMAP as a reducer of the capture engine: MLP hooks (and logits for ``output`` mode) in;
    the ``Amap`` sums and counts and the ``TopWindows`` (with each kept window's activations
    around its peak, for the contexts) out."""

    name = "amap"

    def __init__(self, model, windows: Windows, *, modes=("input", "output"),
                 positions: bool = False, layers: list[int] | None = None,
                 sum_device: str | None = None, top_k: int = 8,
                 count_bos: bool = False, context_span: int | None = None,
                 memory_limit: int | None = None, context_units: int = 2, batch_size: int = 8,
                 processes: int = 1):
        modes = tuple(modes)
        check_model(model, modes)
        if top_k < 1:
            raise WorkbenchError("top_k must be >= 1")
        self.model, self.windows = model, windows
        self.modes, self.count_bos = modes, count_bos
        self.context_units, self.batch_size = context_units, batch_size
        self.layers = resolve_layers(model, layers)
        self.hooks = capture.mlp_hooks(model, self.layers)
        self.need_logits = "output" in modes
        width = int(windows.tokens.shape[1])
        self.n_pos = width if positions else 0
        span = min(width, CONTEXT_SPAN) if context_span is None else min(width, context_span)
        d_vocab, d_mlp = int(model.cfg.d_vocab), int(model.cfg.d_mlp)
        device = torch.device(sum_device) if sum_device else next(model.parameters()).device
        # the plan counts the keys of the whole data (the union a reduce ends with); under
        # torchrun the reduce holds this rank's states, the union so far and one rank's part
        copies = 3 if processes > 1 else 1
        check_fits(copies * estimate_bytes(len(self.layers), expected_keys(windows, self.n_pos),
                                           d_mlp, len(modes)), device, memory_limit,
                   what="its sums over the keys in this data" + (
                       f" (x3 for the reduce of {processes} processes)" if copies > 1 else ""))
        self.accs = {"amap": Amap(len(self.layers), d_vocab, d_mlp, modes, self.n_pos, device),
                     "top": TopWindows(len(self.layers), d_mlp, top_k, device, span=span)}
        self.settings = {"modes": list(modes), "positions": positions, "n_positions": self.n_pos,
                         "layers": self.layers, "top_k": top_k,
                         "count_bos": count_bos, "context_span": span}

    def accumulators(self) -> dict:
        return self.accs

    def update(self, batch) -> None:
        acts = torch.stack([batch.acts[h] for h in self.hooks])
        keep, shift = key_mask(self.windows, batch.mask, self.count_bos)
        keys = {"input": batch.tokens}
        if "output" in self.modes:
            keys["output"] = argmax_last(batch.logits)  # no [batch, pos, vocab] temporary
        self.accs["amap"].update(acts, keep, {m: keys[m] for m in self.modes}, shift)
        self.accs["top"].update(acts, keep, batch.index)

    def finish(self) -> AmapResult:
        """The result of a one-process pass over every window."""
        return self.result(len(self.windows), {"batch_size": self.batch_size}, self.context_units)

    def result(self, n_windows: int, extra: dict | None = None,
               context_units: int = 2) -> AmapResult:
        """The result over ``n_windows`` windows (a shard's, or the whole data's after a
        reduce), with the contexts of ``context_units`` units per layer read from the kept
        windows (global ids: they index ``self.windows``, the whole data)."""
        from workbench import identity

        model, amap = self.model, self.accs["amap"].sort_()
        meta = artifacts.run_metadata(model, self.windows, **self.settings)
        ids = torch.unique(torch.cat([amap.keys(m).cpu() for m in amap.modes])).tolist()
        labels = key_labels(model.tokenizer, amap.d_vocab, ids)
        meta["amap"] = {"format": 2, "n_positions": self.n_pos, "n_windows": n_windows,
                        "compat": identity.compat(meta), "fingerprint": identity.fingerprint(meta),
                        "window_offset": 0, **(extra or {}), "key_ids": ids, "key_strs": labels}
        # the same build (model, data, settings, slice) has the same id, whenever it is run:
        # merge refuses it twice, and a resumed build writes the same bytes as an unbroken one
        slice_ = [meta["amap"]["fingerprint"], meta["amap"]["window_offset"], n_windows]
        meta["amap"]["build_id"] = hashlib.sha256(json.dumps(slice_).encode()).hexdigest()[:32]
        result = AmapResult(amap, self.accs["top"], self.layers, dict(zip(ids, labels, strict=True)),
                            n_windows, meta)
        result.invariants = amap.invariants(n_windows)
        broken = [k for k, ok in result.invariants.items() if not ok]
        if broken:  # a bug in the accumulator or the reduce, not a user error
            raise RuntimeError(f"AMAP invariants failed: {broken}; please report this")
        result.contexts = read_contexts(model, self.windows, result, context_units)
        return result


def expected_keys(windows: Windows, n_pos: int) -> int:
    """Keys an AMAP of ``windows`` will hold per mode: the distinct input tokens (exact for
    ``input``, the planning figure for ``output``) and the ``[POS_k]`` pseudo-tokens."""
    return int(torch.unique(windows.tokens[windows.mask]).numel()) + n_pos


CONTEXT_SPAN = 32  # positions kept around a top window's peak (a 15-token window: all of it)
