"""A deterministic uniform sample of a stream, the same whatever the batching, device or sharding.

1. Give every item a unique id (e.g. ``(window * width + position) * d_model + dim``).
2. ``keys = permute_ids(ids, seed)``: a keyed pseudo-random permutation of the ids (a 4-round
   Feistel network on two 31-bit halves), so keys are unique and look uniformly random.
3. ``s = BottomK(k, n_values=13, n_ids=3)``; per batch, ``pos = s.candidates(keys)`` picks the
   few items that can still enter, then ``s.update(keys[pos], values[pos], ids[pos])``.
4. ``s.keys / s.values / s.ids`` hold the k items with the smallest keys, sorted by key: a uniform
   sample without replacement (bottom-k sampling), and any prefix of it is one too.

Keeping the k smallest keys is order-free, so merging two samples equals sampling their union.
All arithmetic stays below 2^62 in int64, so CPU and CUDA give the same keys.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.kernels.state import Accumulator

MASK31 = (1 << 31) - 1
_MULT = (0x5BD1E995, 0x2C1B3C6D, 0x297A2D39, 0x6B43A9B5)  # odd, < 2^31: products stay < 2^62


def _round(x: Int[Tensor, "*s"], key: int, mult: int) -> Int[Tensor, "*s"]:
    y = ((x ^ key) * mult) & MASK31
    y = y ^ (y >> 15)
    y = (y * 0x3C6EF35F) & MASK31
    return y ^ (y >> 13)


def permute_ids(ids: Int[Tensor, "*s"], seed: int = 0) -> Int[Tensor, "*s"]:
    """A bijection of ``[0, 2^62)`` keyed by ``seed``: unique, well-mixed sampling keys.

    >>> k = permute_ids(torch.arange(1000))
    >>> k.unique().numel(), bool((k >= 0).all())
    (1000, True)
    """
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 1 << 62):
        raise WorkbenchError("sample ids must lie in [0, 2^62)")
    hi, lo = (ids >> 31) & MASK31, ids & MASK31
    for r, mult in enumerate(_MULT):
        round_key = (seed * 0x9E3779B1 + r * 0x7F4A7C15) & MASK31
        hi, lo = lo, hi ^ _round(lo, round_key, mult)
    return (hi << 31) | lo


class BottomK(Accumulator):
    """The ``k`` items with the smallest keys, with their values (fp64) and ids (int64)."""

    def __init__(self, k: int, n_values: int, n_ids: int = 1,
                 device: torch.device | str | None = None):
        if k < 0:
            raise WorkbenchError(f"sample size must be >= 0, got {k}")
        super().__init__()
        self.k, self.n_values, self.n_ids = k, n_values, n_ids
        # Up to k items, sorted by key (the sample grows until it is full).
        self.add_state("keys", torch.zeros(0, dtype=torch.int64, device=device), "merge")
        self.add_state("values", torch.zeros(0, n_values, dtype=torch.float64, device=device),
                       "merge")
        self.add_state("ids", torch.zeros(0, n_ids, dtype=torch.int64, device=device), "merge")

    def candidates(self, keys: Int[Tensor, " n"]) -> Int[Tensor, " m"]:
        """Positions in ``keys`` that can still enter the sample (at most k, smallest first)."""
        keys = keys.to(self.device)
        if self.k == 0:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        if self.keys.numel() < self.k:
            if keys.numel() <= self.k:
                return torch.arange(keys.numel(), device=self.device)
            return torch.topk(keys, self.k, largest=False, sorted=True).indices
        pos = (keys < self.keys[-1]).nonzero().squeeze(1)  # kept sorted: the last key is the bar
        if pos.numel() > self.k:
            pos = pos[torch.topk(keys[pos], self.k, largest=False, sorted=True).indices]
        return pos

    def update(self, keys: Int[Tensor, " m"], values: Float[Tensor, "m nv"],
               ids: Int[Tensor, "m ni"]) -> BottomK:
        """Offer items. Keys are unique within one build; an equal key from another build (two
        whole builds number their windows alike) is a different item: kept after the old one."""
        dev = self.device
        keys, values, ids = self._sorted(keys.to(dev), values.to(dev, torch.float64),
                                         ids.to(dev, torch.int64))
        # Merge two sorted runs: an item's place is its index in its own run plus the number of
        # keys before it in the other (old first on equal keys), so no sort of the union is needed.
        old, total = self.keys, min(self.k, self.keys.numel() + keys.numel())
        place_old = torch.arange(old.numel(), device=dev) + torch.searchsorted(keys, old)
        place_new = torch.arange(keys.numel(), device=dev) + torch.searchsorted(old, keys,
                                                                                right=True)
        n_old = int((place_old < total).sum())  # a prefix of each run stays
        n_new = total - n_old
        # One gather per state from the two kept prefixes, through the inverse of their places.
        source = torch.empty(total, dtype=torch.int64, device=dev)
        source[place_old[:n_old]] = torch.arange(n_old, device=dev)
        source[place_new[:n_new]] = torch.arange(n_old, total, device=dev)
        self.keys, self.values, self.ids = (
            torch.cat([mine[:n_old], theirs[:n_new]]).index_select(0, source)
            for mine, theirs in ((self.keys, keys), (self.values, values), (self.ids, ids)))
        return self

    @staticmethod
    def _sorted(keys: Tensor, values: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The items in key order (keys are unique, so this is deterministic on any device)."""
        if keys.numel() > 1 and not bool((keys[1:] >= keys[:-1]).all()):
            keys, order = torch.sort(keys, stable=True)
            values, ids = values.index_select(0, order), ids.index_select(0, order)
        return keys, values, ids

    def _check_mergeable(self, other) -> None:
        if not isinstance(other, BottomK) or (other.k, other.n_values, other.n_ids) != (
                self.k, self.n_values, self.n_ids):
            raise WorkbenchError("cannot merge samples of different sizes or widths; build both "
                                 "with the same k and the same layers")

    def _merge(self, other: BottomK) -> None:
        self.update(other.keys, other.values, other.ids)

    def compute(self) -> dict[str, Tensor]:
        return self.state_dict()

    def expected(self, state) -> dict:
        m = int(state["keys"].shape[0]) if "keys" in state else 0
        if m > self.k:
            raise WorkbenchError(f"saved sample holds {m} items, more than k={self.k}")
        return {"keys": ((m,), torch.int64), "values": ((m, self.n_values), torch.float64),
                "ids": ((m, self.n_ids), torch.int64)}

    def _check_loaded(self, state: dict[str, Tensor]) -> None:
        state["keys"], state["values"], state["ids"] = self._sorted(
            state["keys"], state["values"], state["ids"])
