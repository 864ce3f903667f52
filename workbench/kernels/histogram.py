"""Exact fixed-edge histograms of V variables, identical on CPU and CUDA.

1. ``h = Histogram(linear_edges(-15, 15, 300), n_vars=13)`` (or ``symlog_edges`` for heavy tails).
2. ``h.update(x)`` for each batch of samples ``[n, v]``; ``h.merge(other)`` for another shard.
3. Read ``h.counts`` ``[v, bins]`` (int64), ``h.under`` / ``h.over`` (values outside the edges)
   and ``h.nan`` per variable.

The bin rule is ``np.histogram``'s: bin i holds ``edges[i] <= x < edges[i+1]``, the last bin also
holds ``x == edges[-1]``. Every comparison is exact against the fp64 edges: uniform edges (the
default) use an arithmetic estimate settled by one comparison with the edge rounded up to the
input's precision (``_UniformRule``); other edges (symlog) use ``torch.searchsorted`` after an
exact upcast to fp64. Counts go through ``torch.bincount`` into int64, so they never depend on the
input dtype or device (``torch.histc`` counts in the input dtype and ``torch.histogram`` is
CPU-only; shared/DESIGN.md).
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.kernels.state import Accumulator

F64 = torch.float64
Real = float | int  # the runtime checker does not widen int to float by itself


def linear_edges(lo: Real = -15.0, hi: Real = 15.0, bins: int = 300) -> Float[Tensor, " e"]:
    """``np.linspace(lo, hi, bins + 1)``, bit for bit (the seed's bins are ``linspace(-15, 15, 301)``).

    >>> linear_edges(-1, 1, 4).tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    if bins < 1 or not lo < hi:
        raise WorkbenchError(f"need bins >= 1 and lo < hi, got bins={bins}, range=({lo}, {hi})")
    return torch.from_numpy(np.linspace(lo, hi, bins + 1))


def symlog_edges(limit: Real = 1000.0, bins: int = 300, linthresh: Real = 1.0) -> Float[Tensor, " e"]:
    """Edges uniform in ``sign(x) * log1p(|x| / linthresh)`` over ``[-limit, limit]``.

    About linear within ``±linthresh`` and logarithmic beyond, so one histogram resolves both the
    bulk and the heavy tails (outlier dimensions). Exactly symmetric; 0 is an edge for even bins.

    >>> symlog_edges(10, 4, 1.0).tolist()[2]
    0.0
    """
    if bins < 1 or limit <= 0 or linthresh <= 0:
        raise WorkbenchError(
            f"need bins >= 1, limit > 0, linthresh > 0; got {bins}, {limit}, {linthresh}")
    top = np.log1p(limit / linthresh)
    step = 2 * top / bins
    # Build the positive half and mirror it, so the edges are exactly symmetric.
    if bins % 2 == 0:
        pos = np.expm1(step * np.arange(bins // 2 + 1)) * linthresh  # starts at exactly 0
        edges = np.concatenate([-pos[:0:-1], pos])
    else:
        pos = np.expm1(step * (np.arange(bins // 2 + 1) + 0.5)) * linthresh
        edges = np.concatenate([-pos[::-1], pos])
    edges[0], edges[-1] = -limit, limit
    return torch.from_numpy(edges)


def _check_edges(edges) -> Tensor:
    e = torch.as_tensor(edges, dtype=F64).detach().cpu()
    if e.ndim != 1 or e.numel() < 2:
        raise WorkbenchError(f"histogram edges must be 1-D with at least 2 values, got {tuple(e.shape)}")
    if not bool(torch.isfinite(e).all()) or not bool((e[1:] > e[:-1]).all()):
        raise WorkbenchError("histogram edges must be finite and strictly increasing")
    return e


def bin_slots(x: Float[Tensor, "*shape"], edges: Float[Tensor, " e"]) -> Int[Tensor, "*shape"]:
    """Slot of each value: 0 under, 1..bins the bins, bins+1 over, bins+2 NaN.

    >>> bin_slots(torch.tensor([-2.0, 0.0, 1.0, 3.0]), torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
    [0, 1, 1, 2]
    """
    bins = edges.numel() - 1
    x64 = x.to(F64).contiguous()  # searchsorted copies strided input anyway
    # number of edges <= x: 0 → under, i in 1..bins → bin i-1 (slot i), bins+1 → at or past the top
    slot = torch.searchsorted(edges, x64, right=True)
    slot = torch.where(x64 == edges[-1], bins, slot)  # np.histogram closes the last bin
    return torch.where(torch.isnan(x64), bins + 2, slot)



def _ceil_to(edges: Float[Tensor, " e"], dtype: torch.dtype) -> Tensor:
    """The smallest ``dtype`` value >= each fp64 edge: for x of that dtype, x >= e ⟺ x >= ceil."""
    if dtype == F64:
        return edges.clone()
    near = edges.to(dtype)
    return torch.where(near.to(F64) < edges, torch.nextafter(near, torch.full_like(near, torch.inf)),
                       near)


class _UniformRule:
    """Exact slots for (nearly) uniform edges without a binary search.

    ``u = x * scale + base`` estimates ``slot - margin`` with an error below the margin (checked at
    construction from the working dtype's precision), so ``floor(u)`` is the slot or one below;
    one comparison with the slot's exact upper bound (the fp64 edge rounded up to the working
    dtype) settles it. Slot bounds past the top are NaN, which no comparison reaches.
    """

    MARGIN = 0.01

    def __init__(self, edges: Tensor, n_vars: int, dtype: torch.dtype):
        bins = edges.numel() - 1
        lo, hi = float(edges[0]), float(edges[-1])
        self.dtype, self.bins, self.width = dtype, bins, bins + 3
        self.scale = bins / (hi - lo)
        self.base = 1.0 - lo * self.scale - self.MARGIN
        ceil = _ceil_to(edges, dtype)
        top = ceil[-1:]
        above_top = torch.where(top.to(F64) > edges[-1:], top,
                                torch.nextafter(top, torch.full_like(top, torch.inf)))
        nan = torch.full((2,), torch.nan, dtype=dtype, device=edges.device)
        # upper bound of slot s: s=0 under → e0; s=i (bin i-1) → e_i; the last bin is closed.
        upper = torch.cat([ceil[:-1], above_top, nan])
        self.upper = upper.repeat(n_vars)
        # int32 ids: half the memory traffic of int64, and bincount / in-place adds run faster
        self.offsets = (torch.arange(n_vars, device=edges.device)[:, None] * self.width).int()

    @staticmethod
    def usable(edges: Tensor, n_vars: int, dtype: torch.dtype) -> bool:
        bins = edges.numel() - 1
        lo, hi = float(edges[0]), float(edges[-1])
        step = (hi - lo) / bins
        ideal = lo + torch.arange(bins + 1, dtype=F64, device=edges.device) * step
        if float((edges - ideal).abs().max()) > 1e-6 * step:
            return False
        # |x * scale| and |u| stay below 2^k: rounding error <= 2 ulps of 2^k, far below MARGIN
        magnitude = max(abs(lo), abs(hi)) / step + bins + 2
        limit = 2.0**12 if dtype == torch.float32 else 2.0**40
        return magnitude < limit and bins < 2**20 and n_vars * (bins + 3) < 2**31

    def slots(self, block: Float[Tensor, "v w"]) -> Int[Tensor, "v w"]:
        """Flattened ``variable * (bins + 3) + slot`` ids of a [v, w] block."""
        x = block.to(self.dtype)
        u = x * self.scale
        u += self.base
        u.clamp_(0, self.bins + 1).nan_to_num_(nan=self.bins + 2)
        ids = u.int()
        ids += self.offsets
        up = torch.index_select(self.upper, 0, rearrange(ids, "v w -> (v w)"))
        ids += x >= rearrange(up, "(v w) -> v w", v=x.shape[0])
        return ids


class Histogram(Accumulator):
    """Int64 counts of ``n_vars`` variables over fixed fp64 ``edges``, plus under/over/NaN.

    >>> h = Histogram(linear_edges(-1, 1, 4), n_vars=2)
    >>> _ = h.update(torch.tensor([[-0.7, 5.0], [1.0, 0.1]]))
    >>> h.counts.tolist(), h.over.tolist()
    ([[1, 0, 0, 1], [0, 0, 1, 0]], [0, 1])
    """

    CHUNK = 1 << 18  # values binned at a time on CPU

    def __init__(self, edges, n_vars: int, device: torch.device | str | None = None):
        if n_vars < 1:
            raise WorkbenchError(f"Histogram needs at least one variable, got n_vars={n_vars}")
        super().__init__()
        self.n_vars = n_vars
        # The edges are a state (saved, checked equal on load and merge), combined by "merge".
        self.add_state("edges", _check_edges(edges).to(device), "merge")
        self.bins = self.edges.numel() - 1
        z = {"dtype": torch.int64, "device": self.edges.device}
        self.add_state("counts", torch.zeros(n_vars, self.bins, **z), "sum")
        self.add_state("under", torch.zeros(n_vars, **z), "sum")
        self.add_state("over", torch.zeros(n_vars, **z), "sum")
        self.add_state("nan", torch.zeros(n_vars, **z), "sum")
        self._rules: dict = {}

    def _rule(self, dtype: torch.dtype) -> _UniformRule | None:
        """The arithmetic rule for this input dtype, or None to use the binary search."""
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16, torch.float32) else F64
        key = (work, self.device)
        if key not in self._rules:
            ok = _UniformRule.usable(self.edges, self.n_vars, work)
            self._rules[key] = _UniformRule(self.edges, self.n_vars, work) if ok else None
        return self._rules[key]

    @property
    def n_samples(self) -> Int[Tensor, " v"]:
        return self.counts.sum(1) + self.under + self.over + self.nan

    def update(self, x: Float[Tensor, "n v"]) -> Histogram:
        """Count a batch of ``n`` samples (rows) of the ``v`` variables (columns)."""
        if x.ndim != 2 or x.shape[1] != self.n_vars:
            raise WorkbenchError(
                f"Histogram over {self.n_vars} variables got a batch of shape {tuple(x.shape)}; "
                f"pass samples as [n, {self.n_vars}]"
            )
        if x.shape[0] == 0:
            return self
        # Variable-major, so callers holding [v, n] blocks (x = block.T) pay no copy here.
        per_var = rearrange(x.to(self.device), "n v -> v n")
        width = self.bins + 3
        rule = self._rule(x.dtype)
        tally = torch.zeros(self.n_vars * width, dtype=torch.int64, device=self.device)
        if rule is None:
            slots = bin_slots(per_var, self.edges)
            offset = torch.arange(self.n_vars, device=self.device)[:, None] * width
            tally += torch.bincount(rearrange(slots + offset, "v n -> (v n)"),
                                    minlength=self.n_vars * width)
        else:
            # Column chunks keep the temporaries cache-sized (and memory flat in the batch size).
            scale = 64 if self.device.type == "cuda" else 1
            step = max(1, self.CHUNK * scale // self.n_vars)
            for start in range(0, per_var.shape[1], step):
                ids = rule.slots(per_var[:, start : start + step])
                tally += torch.bincount(rearrange(ids, "v w -> (v w)"), minlength=tally.numel())
        tally = rearrange(tally, "(v s) -> v s", v=self.n_vars)
        self.under += tally[:, 0]
        self.counts += tally[:, 1 : self.bins + 1]
        self.over += tally[:, self.bins + 1]
        self.nan += tally[:, self.bins + 2]
        return self

    def _check_compatible(self, other: Histogram) -> None:
        if not isinstance(other, Histogram):
            raise WorkbenchError(f"cannot merge a Histogram with a {type(other).__name__}")
        if other.n_vars != self.n_vars:
            raise WorkbenchError(
                f"cannot merge a Histogram over {self.n_vars} variables with one over "
                f"{other.n_vars}; merge only histograms of the same model layers"
            )
        if other.bins != self.bins or not torch.equal(other.edges.cpu(), self.edges.cpu()):
            raise WorkbenchError(
                f"cannot merge histograms with different edges ({self.bins} bins over "
                f"[{float(self.edges[0])}, {float(self.edges[-1])}] vs {other.bins} bins over "
                f"[{float(other.edges[0])}, {float(other.edges[-1])}]); rebuild one with the "
                "other's edges (same --bins/--range/--symlog)"
            )

    _check_mergeable = _check_compatible

    def _merge(self, other: Histogram) -> None:
        """Nothing to fold: the sums are added by the base; equal edges were checked."""

    def compute(self) -> dict[str, Tensor]:
        return {**self.state_dict(), "n_samples": self.n_samples}

    def _check_loaded(self, state: dict[str, Tensor]) -> None:
        if not torch.equal(state["edges"], self.edges):
            raise WorkbenchError("the saved histogram has different edges than this one; build the "
                                 "Histogram with the saved edges (Histogram.from_state_dict)")

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor],
                        device: torch.device | str | None = None) -> Histogram:
        if "edges" not in state or "counts" not in state:
            raise WorkbenchError("not a Histogram state: needs 'edges' and 'counts'")
        return cls(state["edges"], int(state["counts"].shape[0]), device).load_state_dict(state)
