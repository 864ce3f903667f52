"""Permutation test: do items that share a label have more similar vectors than chance?

1. ``r = permutation_test(x, labels, n_permutations=1000, seed=0)`` with ``x`` [items, dim].
2. The statistic is the mean cosine similarity of pairs that share a label minus that of pairs that
   do not (pairs of distinct items). Under the null, labels are exchangeable: shuffling them gives
   the null distribution; ``p = (1 + #{T_perm >= T}) / (1 + n_permutations)`` (one-sided, the
   permutation p-value of Phipson & Smyth 2010, never 0).
3. Effect size: ``(T - mean(T_perm)) / std(T_perm)`` (a z-score against the null), and ``T`` itself
   in cosine units.

Each statistic costs O(items · dim) with group sums: for unit rows z_i, the ordered same-label pairs
sum to ``Σ_g ||Σ_{i∈g} z_i||² − Σ_i ||z_i||²`` and all pairs to ``||Σ_i z_i||² − Σ_i ||z_i||²``.

>>> x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
>>> r = permutation_test(x, torch.tensor([0, 0, 1, 1]), n_permutations=99, seed=0)
>>> round(r.statistic, 3), r.p_value <= 0.5
(0.896, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from einops import reduce
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import WorkbenchError


@dataclass
class PermutationResult:
    statistic: float  # mean same-label similarity minus mean different-label similarity
    p_value: float
    effect_size: float  # (statistic - null mean) / null std
    null_mean: float
    null_std: float
    within: float  # mean similarity of same-label pairs
    between: float  # mean similarity of different-label pairs
    n_items: int
    n_groups: int
    n_permutations: int

    def as_dict(self) -> dict:
        return asdict(self)


def unit_rows(x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    """Rows scaled to unit length (all-zero rows stay zero), in float64."""
    x = x.double()
    norm = reduce(x * x, "n d -> n 1", "sum").sqrt()
    return torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))


def _group_sq(z: Float[Tensor, "n d"], labels: Int[Tensor, " n"], n_groups: int) -> Tensor:
    sums = torch.zeros(n_groups, z.shape[1], dtype=z.dtype, device=z.device)
    sums.index_add_(0, labels, z)
    return (sums * sums).sum()


def similarity_statistic(
    x: Float[Tensor, "n d"], labels: Int[Tensor, " n"]
) -> tuple[float, float, float]:
    """``(T, within, between)``: mean cosine of same-label pairs, minus different-label pairs."""
    z = unit_rows(x)
    labels, n_groups = _dense(labels)
    return _stat(z, labels, n_groups, *_constants(z, labels, n_groups))


def _dense(labels: Tensor) -> tuple[Tensor, int]:
    uniq, dense = torch.unique(labels, return_inverse=True)
    return dense, int(uniq.numel())


def _constants(z, labels, n_groups):
    self_sq = (z * z).sum()
    total = z.sum(0)
    all_sq = (total * total).sum()
    sizes = torch.bincount(labels, minlength=n_groups).double()
    n = z.shape[0]
    within_pairs = float((sizes * (sizes - 1)).sum())
    between_pairs = float(n * (n - 1)) - within_pairs
    return self_sq, all_sq, within_pairs, between_pairs


def _stat(z, labels, n_groups, self_sq, all_sq, within_pairs, between_pairs):
    g = _group_sq(z, labels, n_groups)
    within = float(g - self_sq) / within_pairs
    between = float(all_sq - g) / between_pairs
    return within - between, within, between


def permutation_test(
    x: Float[Tensor, "n d"],
    labels: Int[Tensor, " n"],
    n_permutations: int = 1000,
    seed: int = 0,
) -> PermutationResult:
    """Label-permutation test of ``similarity_statistic`` (see the module docstring)."""
    if x.shape[0] != labels.shape[0]:
        raise WorkbenchError(f"{x.shape[0]} vectors but {labels.shape[0]} labels")
    z = unit_rows(x)
    dense, n_groups = _dense(labels.to(z.device))
    consts = _constants(z, dense, n_groups)
    if n_groups < 2 or consts[2] == 0:
        raise WorkbenchError(
            f"a permutation test needs >= 2 labels and a label shared by >= 2 items (got "
            f"{n_groups} labels over {x.shape[0]} items); use more items"
        )
    if n_permutations < 1:
        raise WorkbenchError(f"n_permutations must be >= 1, got {n_permutations}")
    t, within, between = _stat(z, dense, n_groups, *consts)
    g = torch.Generator().manual_seed(seed)
    null = torch.empty(n_permutations, dtype=torch.float64)
    for k in range(n_permutations):
        perm = dense[torch.randperm(dense.numel(), generator=g).to(dense.device)]
        null[k] = _stat(z, perm, n_groups, *consts)[0]
    mean, std = float(null.mean()), float(null.std()) if n_permutations > 1 else 0.0
    p = (1 + int((null >= t).sum())) / (1 + n_permutations)
    effect = (t - mean) / std if std > 0 else float("nan")
    return PermutationResult(t, p, effect, mean, std, within, between, int(x.shape[0]), n_groups,
                             n_permutations)
