"""``TopWindows``: the k windows that activate each unit most (its max-activating contexts).

1. ``top = TopWindows(n_layers, d_mlp, k=8, span=16)``.
2. For each batch: ``top.update(acts, mask, window_ids)``; a window's score for a unit is the unit's
   largest activation over the window's real positions (one window counts once per unit).
3. ``top.merge(other)`` keeps the best k of both (bottom-k selection: REDUCE ``"merge"``).
4. ``top.compute()`` → ``values`` / ``windows`` / ``positions`` ``[layer, mlp, k]``, best first;
   slots never filled hold value -inf and window -1. With ``span > 0`` it also keeps, from the same
   pass, the unit's activation at ``span`` positions of each kept window around its peak
   (``acts`` ``[layer, mlp, k, span]``, from window position ``starts`` ``[layer, mlp, k]``; 0 past
   the window's end): the contexts need no second run of the model.

Equal scores are ordered by window id, so the selection does not depend on batching or merge order.

>>> top = TopWindows(n_layers=1, d_mlp=2, k=1, span=2)
>>> acts = torch.tensor([[[[1.0, 0.0], [3.0, -1.0]]]])            # [layer, batch, pos, mlp]
>>> _ = top.update(acts, torch.tensor([[True, True]]), torch.tensor([7]))
>>> top.compute()["positions"].tolist()                           # unit 0 peaks at pos 1
[[[1], [0]]]
>>> top.compute()["acts"][0, 0, 0].tolist()                       # unit 0 at positions 0, 1
[1.0, 3.0]
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.kernels.state import Accumulator


def snippet_starts(peak: Tensor, length: Tensor, span: int) -> Tensor:
    """First position of the ``span`` kept around ``peak``: mostly what led to it (a quarter of
    the span after it), inside ``[0, length)`` where the window is long enough.

    >>> snippet_starts(torch.tensor([0, 10, 14]), torch.tensor([15, 15, 15]), 8).tolist()
    [0, 5, 7]
    """
    after = span // 4
    start = (peak - (span - 1 - after)).clamp(min=0)
    return torch.minimum(start, (length - span).clamp(min=0))


class TopWindows(Accumulator):
    def __init__(self, n_layers: int, d_mlp: int, k: int = 8, device: str | torch.device = "cpu",
                 span: int = 0):
        super().__init__()
        self.n_layers, self.d_mlp, self.k, self.span = int(n_layers), int(d_mlp), int(k), int(span)
        shape = (self.n_layers, self.d_mlp, self.k)
        self.add_state("values", torch.full(shape, -torch.inf, dtype=torch.float32, device=device),
                       "merge")
        self.add_state("windows", torch.full(shape, -1, dtype=torch.long, device=device), "merge")
        self.add_state("positions", torch.full(shape, -1, dtype=torch.long, device=device), "merge")
        if self.span:
            self.add_state("starts", torch.full(shape, -1, dtype=torch.long, device=device), "merge")
            self.add_state("acts", torch.zeros(*shape, self.span, dtype=torch.float32,
                                               device=device), "merge")

    def _best_of(self, cand: dict[str, Tensor]) -> dict[str, Tensor]:
        """The best ``k`` of the candidates along their last axis (``acts``: the one before it)."""
        # Equal maxima are common (a causal model's position 0 sees only its own token): order
        # ties by window id so that any batching or merge order selects the same windows.
        by_window = cand["windows"].argsort(dim=-1, stable=True)
        order = cand["values"].gather(-1, by_window).sort(dim=-1, descending=True,
                                                          stable=True).indices[..., : self.k]
        sel = by_window.gather(-1, order)
        out = {}
        for name, t in cand.items():
            if t.ndim == sel.ndim:
                out[name] = t.gather(-1, sel)
            else:
                out[name] = t.gather(-2, sel[..., None].expand(*sel.shape, t.shape[-1]))
        return out

    def update(
        self,
        acts: Float[Tensor, "layer batch pos mlp"],
        mask: Bool[Tensor, "batch pos"],
        window_ids: Int[Tensor, " batch"],
    ) -> TopWindows:
        dev = self.device
        acts, mask = acts.to(dev).float(), mask.to(dev)
        padded = not bool(mask.all())  # with length batching most batches have no padding
        scored = acts.masked_fill(~rearrange(mask, "b p -> 1 b p 1"), -torch.inf) if padded else acts
        best = scored.amax(dim=2)  # [layer, batch, mlp]; amax, not max: 25x faster on a CPU
        values = rearrange(best, "layer batch mlp -> (layer mlp) batch")
        wid = window_ids.to(dev)
        # Only the units where some window of the batch outranks the k-th window kept can change
        # (outranks: a higher value, or an equal one and a lower window id); late in a pass that
        # is a small share of the units, and only their rows are gathered and sorted.
        for n, t in self.states.items():
            if not t.is_contiguous():
                self.states[n] = t.contiguous()
        flat = {n: t.view(self.n_layers * self.d_mlp, *t.shape[2:]) for n, t in self.states.items()}
        kth_v, kth_w = flat["values"][:, -1:], flat["windows"][:, -1:]
        enters = (values > kth_v) | ((values == kth_v) & (wid < kth_w))
        rows = enters.any(-1).nonzero().squeeze(-1)
        if not len(rows):
            return self
        layer, unit = rows // self.d_mlp, rows % self.d_mlp
        per_row = acts[layer, :, :, unit]  # [row, batch, pos]
        peak = (per_row.masked_fill(~mask, -torch.inf) if padded else per_row).argmax(-1)
        new = {"values": values[rows], "windows": wid.expand(len(rows), -1), "positions": peak}
        if self.span:
            length = mask.sum(1)  # [batch]
            start = snippet_starts(peak, length, self.span)  # [row, batch]
            idx = start[..., None] + torch.arange(self.span, device=dev)  # [row, batch, span]
            got = per_row.gather(2, idx.clamp(max=acts.shape[2] - 1))
            new["starts"] = start
            new["acts"] = torch.where(idx < length[:, None], got, 0.0)  # 0 past the end
        best_of = self._best_of({n: torch.cat([flat[n][rows], new[n]], 1) for n in flat})
        for n, t in best_of.items():
            flat[n][rows] = t  # views of the states: written in place
        return self

    def _check_mergeable(self, other) -> None:
        mine = (self.n_layers, self.d_mlp, self.k, self.span)
        theirs = (other.n_layers, other.d_mlp, other.k, other.span)
        if mine != theirs:
            raise ValueError(
                f"cannot merge top windows of (layers, mlp, k, span) {theirs} into {mine}: build "
                "both with the same model, k and span"
            )

    def _merge(self, other: TopWindows) -> None:
        self.states.update(self._best_of({n: torch.cat([t, other.states[n].to(self.device)], 2)
                                          for n, t in self.states.items()}))

    def compute(self) -> dict[str, Tensor]:
        return self.state_dict()
