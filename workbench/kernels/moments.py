"""Streaming first and second moments of V variables, exact in fp64 whatever the input dtype.

1. ``m = Moments(n_vars=13)`` (on the device where the data will live, or move it with ``.to``).
2. ``m.update(x)`` for each batch ``x`` of samples ``[n, v]`` (fp16/bf16/fp32/fp64).
3. ``m.merge(other)`` folds in an accumulator fed elsewhere (another shard, process or run).
4. Read out ``m.cov()`` (unbiased), ``m.corr()``, ``m.r2()``, ``m.mean``, ``m.std()``.
5. ``m.state_dict()`` / ``Moments.from_state_dict(sd)`` to save and resume.

Each batch is reduced to its own count, mean and centered co-moment (in fp64, centering each
cache-sized chunk on its own mean, so no cancellation; the batch is read once), then folded into
the running state with the pairwise update of Chan, Golub & LeVeque, "Algorithms for computing the sample variance: analysis and
recommendations", The American Statistician 37(3), 1983:

    n = na + nb,  d = mean_b - mean_a,
    mean = mean_a + d * nb / n,  C = C_a + C_b + d d^T * na * nb / n.

The naive E[x^2] - E[x]^2 in fp32 is off by 6.5% at mean 1e3, std 1 (shared/DESIGN.md); this is
exact to fp64 rounding.
"""

from __future__ import annotations

import warnings

import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.kernels.state import Accumulator

F64 = torch.float64


def chan_merge(
    n_a: Int[Tensor, ""], mean_a: Float[Tensor, "*v"], m_a: Tensor,
    n_b: Int[Tensor, ""], mean_b: Float[Tensor, "*v"], m_b: Tensor, outer: bool,
) -> tuple[Int[Tensor, ""], Float[Tensor, "*v"], Tensor]:
    """Chan et al.'s merge of (count, mean, centered second moment) pairs.

    ``outer=True``: ``m`` is a co-moment matrix ``[v, v]``; otherwise elementwise sums of squares.
    Either count may be zero (an empty side leaves the other unchanged).
    """
    n = n_a + n_b
    na, nb = n_a.to(F64), n_b.to(F64)
    safe = n.to(F64).clamp(min=1)  # both empty: every term below is 0, not 0/0
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / safe)
    if outer:
        spread = einsum(delta, delta, "v, w -> v w")
    else:
        spread = delta * delta
    return n, mean, m_a + m_b + spread * (na * nb / safe)


class Moments(Accumulator):
    """Count, mean and centered co-moment of ``n_vars`` variables, mergeable and exact in fp64.

    >>> x = torch.randn(1000, 3, dtype=torch.float32)
    >>> m = Moments(3)
    >>> for chunk in x.split(100):
    ...     _ = m.update(chunk)
    >>> bool(torch.allclose(m.cov(), torch.cov(x.double().T)))
    True
    """

    CHUNK = 1 << 18  # fp64 elements centered at a time (2 MiB)

    def __init__(self, n_vars: int, device: torch.device | str | None = None):
        if n_vars < 1:
            raise WorkbenchError(f"Moments needs at least one variable, got n_vars={n_vars}")
        super().__init__()
        self.n_vars = n_vars
        self.add_state("count", torch.zeros((), dtype=torch.int64, device=device), "merge")
        self.add_state("mean", torch.zeros(n_vars, dtype=F64, device=device), "merge")
        self.add_state("comoment", torch.zeros(n_vars, n_vars, dtype=F64, device=device), "merge")

    def update(self, x: Float[Tensor, "n v"]) -> Moments:
        """Fold in a batch of ``n`` samples (rows) of the ``v`` variables (columns)."""
        if x.ndim != 2 or x.shape[1] != self.n_vars:
            raise WorkbenchError(
                f"Moments over {self.n_vars} variables got a batch of shape {tuple(x.shape)}; "
                f"pass samples as [n, {self.n_vars}]"
            )
        n = x.shape[0]
        if n == 0:
            return self
        # Variable-major rows make the copies and the Gram product stream through memory; callers
        # holding a [v, n] block pass block.T and pay no copy here.
        per_var = rearrange(x.to(self.device), "n v -> v n")
        if per_var.stride(-1) != 1:
            per_var = per_var.contiguous()
        mean_b, comoment_b = self._batch_moments(per_var)
        n_b = torch.tensor(n, dtype=torch.int64, device=self.device)
        self.count, self.mean, self.comoment = chan_merge(
            self.count, self.mean, self.comoment, n_b, mean_b, comoment_b, outer=True
        )
        return self

    def _batch_moments(self, per_var: Float[Tensor, "v n"]) -> tuple[Tensor, Tensor]:
        """Mean and centered co-moment of one batch, reading it once.

        Each column chunk is copied to a cache-sized fp64 buffer (an exact upcast), centered on
        its own mean (two passes over the buffer, no cancellation) and folded into one Gram
        product; the chunks' means are then combined in one step with Chan et al.'s merge,
        ``C = sum_c C_c + sum_c n_c (mean_c - mean)(mean_c - mean)^T``. Neither the fp64 copy nor
        any other temporary is ever [v, n].
        """
        v, n = per_var.shape
        scale = 64 if self.device.type == "cuda" else 1
        width = min(n, max(1, self.CHUNK * scale // v))
        starts = range(0, n, width)
        buf = torch.empty(v, width, dtype=F64, device=self.device)
        means = torch.empty(v, len(starts), dtype=F64, device=self.device)
        comoment = torch.zeros(v, v, dtype=F64, device=self.device)
        for i, start in enumerate(starts):
            block = per_var[:, start : start + width]
            chunk = buf[:, : block.shape[1]]
            chunk.copy_(block)
            mean_c = torch.sum(chunk, 1, keepdim=True, out=means[:, i : i + 1])
            mean_c.div_(block.shape[1])
            chunk.sub_(mean_c)
            comoment.addmm_(chunk, chunk.T)
        if len(starts) == 1:
            return means[:, 0], comoment
        counts = torch.full((len(starts),), float(width), dtype=F64, device=self.device)
        counts[-1] = n - width * (len(starts) - 1)
        mean = means @ counts / n
        spread = means - mean[:, None]
        comoment.addmm_(spread * counts, spread.T)
        return mean, comoment

    def _check_mergeable(self, other) -> None:
        if not isinstance(other, Moments) or other.n_vars != self.n_vars:
            got = f"{other.n_vars} variables" if isinstance(other, Moments) else type(other).__name__
            raise WorkbenchError(
                f"cannot merge Moments over {self.n_vars} variables with {got}; "
                "merge only accumulators built over the same variables (same model layers)"
            )

    def _merge(self, other: Moments) -> None:
        dev = self.device
        self.count, self.mean, self.comoment = chan_merge(
            self.count, self.mean, self.comoment,
            other.count.to(dev), other.mean.to(dev), other.comoment.to(dev), outer=True,
        )

    # read-outs -------------------------------------------------------------------------------

    def cov(self) -> Float[Tensor, "v v"]:
        """Unbiased (n - 1) covariance; NaN with fewer than two samples."""
        if int(self.count) < 2:
            return torch.full_like(self.comoment, float("nan"))
        return self.comoment / (self.count.to(F64) - 1)

    def var(self) -> Float[Tensor, " v"]:
        return torch.diagonal(self.cov()).clone()

    def std(self) -> Float[Tensor, " v"]:
        return self.var().sqrt()

    def corr(self) -> Float[Tensor, "v v"]:
        """Pearson correlation; NaN in the rows and columns of constant variables (warned)."""
        diag = torch.diagonal(self.comoment)
        constant = (diag <= 0).nonzero().flatten().tolist()
        if constant and int(self.count) >= 2:
            warnings.warn(
                f"variable(s) {constant} are constant (zero variance): their correlation and R² "
                "are NaN", RuntimeWarning, stacklevel=2,
            )
        scale = diag.sqrt()
        scale = torch.where(diag > 0, scale, torch.full_like(scale, float("nan")))
        corr = self.comoment / einsum(scale, scale, "v, w -> v w")
        return corr.clamp(-1.0, 1.0)  # rounding can step past ±1; NaN stays NaN

    def r2(self) -> Float[Tensor, "v v"]:
        """Shared variance: the squared Pearson correlation."""
        return self.corr().square()

    def compute(self) -> dict[str, Tensor]:
        return {"count": self.count.clone(), "mean": self.mean.clone(), "std": self.std(),
                "cov": self.cov(), "corr": self.corr(), "r2": self.r2()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor],
                        device: torch.device | str | None = None) -> Moments:
        if "mean" not in state:
            raise WorkbenchError("not a Moments state: no 'mean' tensor")
        return cls(int(state["mean"].shape[0]), device=device).load_state_dict(state)
