"""Per-dimension statistics of each variable: mean, std and max |x| per residual dimension.

1. ``s = DimStats(n_vars=13, d=768)``.
2. ``s.update(x)`` with ``x`` of shape ``[n, v, d]`` (n tokens, v layers, d residual dimensions).
3. ``s.mean``, ``s.std()``, ``s.maxabs`` are ``[v, d]``; ``s.outliers(layer, k)`` names the
   dimensions whose max |x| stands out, which scatter plots of a layer only hint at.

Means and sums of squares merge with Chan et al.'s formulas (see ``moments.py``); max |x| merges
by max. fp64 state whatever the input dtype.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.kernels.moments import chan_merge
from workbench.kernels.state import Accumulator

F64 = torch.float64


class DimStats(Accumulator):
    """Count, mean, centered sum of squares and max |x| for each (variable, dimension).

    >>> x = torch.randn(50, 2, 4)
    >>> s = DimStats(2, 4).update(x[:20]).update(x[20:])
    >>> bool(torch.allclose(s.std(), x.double().std(0)))
    True
    """

    CHUNK = 1 << 18  # fp64 elements centered at a time (2 MiB)

    def __init__(self, n_vars: int, d: int, device: torch.device | str | None = None):
        if n_vars < 1 or d < 1:
            raise WorkbenchError(f"DimStats needs n_vars >= 1 and d >= 1, got {n_vars}, {d}")
        super().__init__()
        self.n_vars, self.d = n_vars, d
        self.add_state("count", torch.zeros((), dtype=torch.int64, device=device), "merge")
        self.add_state("mean", torch.zeros(n_vars, d, dtype=F64, device=device), "merge")
        self.add_state("m2", torch.zeros(n_vars, d, dtype=F64, device=device), "merge")
        self.add_state("maxabs", torch.zeros(n_vars, d, dtype=F64, device=device), "max")

    def update(self, x: Float[Tensor, "n v d"]) -> DimStats:
        """Fold in ``n`` samples (tokens) of every (variable, dimension)."""
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_vars, self.d):
            raise WorkbenchError(
                f"DimStats over [{self.n_vars}, {self.d}] got a batch of shape {tuple(x.shape)}; "
                f"pass [n, {self.n_vars}, {self.d}]"
            )
        n = x.shape[0]
        if n == 0:
            return self
        mean_b, m2_b, maxabs_b = self._batch_stats(x.to(self.device))
        n_b = torch.tensor(n, dtype=torch.int64, device=self.device)
        self.count, self.mean, self.m2 = chan_merge(
            self.count, self.mean, self.m2, n_b, mean_b, m2_b, outer=False)
        self.maxabs = torch.maximum(self.maxabs, maxabs_b)
        return self

    def _batch_stats(self, x: Float[Tensor, "n v d"]) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, centered sum of squares and max |x| of one batch, reading it once.

        Token chunks are copied to a cache-sized fp64 buffer (an exact upcast) and centered on
        their own mean; the chunks' statistics then merge in one step (Chan et al.):
        ``m2 = sum_c m2_c + sum_c n_c (mean_c - mean)^2``. No temporary is ever [n, v, d]; max |x|
        is ``max(max x, -min x)`` (exact) of the same chunk.
        """
        n = x.shape[0]
        scale = 64 if self.device.type == "cuda" else 1
        step = min(n, max(1, self.CHUNK * scale // (self.n_vars * self.d)))
        starts = range(0, n, step)
        stack = (len(starts), self.n_vars, self.d)
        means, m2s = (torch.empty(stack, dtype=F64, device=self.device) for _ in range(2))
        # In the input dtype: its extremes are exact there, and amax/amin of the (still cached)
        # input are cheaper than of its fp64 copy; aminmax over dim 0 is ~10x slower on CPU.
        highs, lows = (torch.empty(stack, dtype=x.dtype, device=self.device) for _ in range(2))
        buf = torch.empty(step, self.n_vars, self.d, dtype=F64, device=self.device)
        for i, start in enumerate(starts):
            block = x[start : start + step]
            chunk = buf[: block.shape[0]]
            chunk.copy_(block)
            torch.amax(block, 0, out=highs[i])
            torch.amin(block, 0, out=lows[i])
            mean_c = torch.sum(chunk, 0, out=means[i]).div_(block.shape[0])
            chunk.sub_(mean_c).square_()
            torch.sum(chunk, 0, out=m2s[i])
        maxabs = torch.maximum(highs.amax(0), lows.amin(0).neg_()).to(F64)
        if len(starts) == 1:
            return means[0], m2s[0], maxabs
        counts = torch.full((len(starts), 1, 1), float(step), dtype=F64, device=self.device)
        counts[-1] = n - step * (len(starts) - 1)
        mean = (means * counts).sum(0) / n
        spread = (means - mean).square_().mul_(counts)
        return mean, m2s.sum(0) + spread.sum(0), maxabs

    def _check_mergeable(self, other) -> None:
        if not isinstance(other, DimStats) or (other.n_vars, other.d) != (self.n_vars, self.d):
            got = (f"[{other.n_vars}, {other.d}]" if isinstance(other, DimStats)
                   else type(other).__name__)
            raise WorkbenchError(
                f"cannot merge DimStats over [{self.n_vars}, {self.d}] with {got}; merge only "
                "statistics of the same model (same layers and width)"
            )

    def _merge(self, other: DimStats) -> None:
        dev = self.device  # maxabs ("max") is already folded by the base
        self.count, self.mean, self.m2 = chan_merge(
            self.count, self.mean, self.m2,
            other.count.to(dev), other.mean.to(dev), other.m2.to(dev), outer=False)

    def std(self) -> Float[Tensor, "v d"]:
        """Unbiased (n - 1) standard deviation; NaN with fewer than two samples."""
        if int(self.count) < 2:
            return torch.full_like(self.m2, float("nan"))
        return (self.m2 / (self.count.to(F64) - 1)).sqrt()

    def outliers(self, var: int, k: int = 5) -> list[dict]:
        """The ``k`` dimensions of variable ``var`` with the largest max |x|, with how far out.

        ``ratio`` = the dimension's max |x| over the median of all dimensions' max |x|.
        """
        maxabs = self.maxabs[var]
        median = maxabs.median().clamp(min=torch.finfo(F64).tiny)
        top = torch.topk(maxabs, min(k, self.d))
        std = self.std()[var]
        return [{"dim": int(i), "max_abs": float(v), "ratio": float(v / median),
                 "mean": float(self.mean[var, i]), "std": float(std[i])}
                for v, i in zip(top.values, top.indices, strict=True)]

    def compute(self) -> dict[str, Tensor]:
        return {"count": self.count.clone(), "mean": self.mean.clone(), "std": self.std(),
                "maxabs": self.maxabs.clone()}
