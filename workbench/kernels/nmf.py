"""Non-negative matrix factorization in torch (CPU and CUDA), for NMF factors of MLP activations.

1. ``x = activation_matrix(acts)``: MLP activations ``[layer, pos, neuron]`` → ``[pos, (layer
   neuron)]`` with negatives clipped at 0. GELU outputs dip below zero (down to about -0.17); NMF
   needs a nonnegative matrix, and clipping them is what ecco's ``activations().run_nmf`` does.
2. ``f = nmf(x, k=8)``: ``x ≈ f.w @ f.h`` with ``f.w`` ``[pos, k]`` ≥ 0 and ``f.h`` ``[k, cols]`` ≥ 0.
   ``f.factors`` ``[k, pos]`` is how strongly each factor is present at each token; ``f.h`` (the
   loadings) says which neurons make up each factor.
3. ``f.error`` is the Frobenius reconstruction error ``‖x − w h‖_F`` (scikit-learn's
   ``reconstruction_err_``), ``f.relative_error`` divides it by ``‖x‖_F``.

The solver is HALS (hierarchical alternating least squares: Cichocki & Phan 2009, "Fast local
algorithms for large scale nonnegative matrix and tensor factorizations"; Gillis & Glineur 2012,
"Accelerated multiplicative updates and hierarchical ALS algorithms for NMF"), the same exact
per-column coordinate update as scikit-learn's ``solver="cd"``, written as k rank-one updates on
whole columns so it runs on any device. The default start is NNDSVDa (Boutsidis & Gallopoulos 2008),
which is deterministic and invariant to the signs of singular vectors, so CPU and CUDA start from
the same point; ``init="random"`` draws from a seeded CPU generator (same numbers on any device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.errors import WorkbenchError

INITS = ("nndsvda", "nndsvd", "random")


@dataclass
class NMF:
    """``x ≈ w @ h``; both nonnegative."""

    w: Float[Tensor, "rows k"]
    h: Float[Tensor, "k cols"]
    error: float  # ‖x − w h‖_F
    relative_error: float  # error / ‖x‖_F
    n_iter: int
    converged: bool

    @property
    def factors(self) -> Float[Tensor, "k rows"]:
        """Factor strength per row (token): ecco's ``components`` layout."""
        return rearrange(self.w, "rows k -> k rows")


def activation_matrix(
    acts: Float[Tensor, "layer pos neuron"], mask: Bool[Tensor, " pos"] | None = None
) -> Float[Tensor, "kept cols"]:
    """Rows = (unmasked) positions, columns = (layer, neuron) pairs; negatives clipped at 0.

    >>> x = activation_matrix(torch.tensor([[[1.0, -2.0]], [[3.0, 4.0]]]))  # 2 layers, 1 pos, 2 neurons
    >>> x.tolist()
    [[1.0, 0.0, 3.0, 4.0]]
    """
    x = rearrange(acts, "layer pos neuron -> pos (layer neuron)")
    if mask is not None:
        x = x[mask]
    return x.clamp_min(0)


def _top_svd(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top-k singular triplets (fp64) from the Gram matrix of the short side.

    O(short² · long) instead of a full SVD's; on tokens × (layers · neurons) matrices that is
    what keeps the start from costing more than the whole fit. Accurate for the leading
    components, which are all an NMF start needs.
    """
    wide = x.shape[0] <= x.shape[1]
    a = x if wide else x.T  # [short, long]
    vals, vecs = torch.linalg.eigh((a @ a.T).double())  # ascending
    s = vals.flip(0)[:k].clamp_min(0).sqrt()
    u = vecs.flip(1)[:, :k]
    v = (u.T @ a.double()) / s.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    return (u, s, v) if wide else (v.T, s, u.T)


def _nndsvd(x: Tensor, k: int, fill: bool) -> tuple[Tensor, Tensor]:
    """NNDSVD (``fill``: NNDSVDa, zeros replaced by the mean of x), vectorized over components."""
    u, s, vh = _top_svd(x, k)
    up, un = u.clamp_min(0), (-u).clamp_min(0)
    vp, vn = vh.clamp_min(0), (-vh).clamp_min(0)
    upn, unn = torch.linalg.vector_norm(up, dim=0), torch.linalg.vector_norm(un, dim=0)
    vpn, vnn = torch.linalg.vector_norm(vp, dim=1), torch.linalg.vector_norm(vn, dim=1)
    mp, mn = upn * vpn, unn * vnn
    pos = mp > mn  # take the positive or the negative part, whichever carries more mass
    tiny = torch.finfo(torch.float64).tiny
    wu = torch.where(pos, up / upn.clamp_min(tiny), un / unn.clamp_min(tiny))
    hv = torch.where(pos[:, None], vp / vpn[:, None].clamp_min(tiny), vn / vnn[:, None].clamp_min(tiny))
    lam = torch.sqrt(s * torch.where(pos, mp, mn))
    # The leading singular pair of a nonnegative matrix is nonnegative up to a global sign.
    wu[:, 0], hv[0] = u[:, 0].abs(), vh[0].abs()
    lam[0] = s[0].sqrt()
    w, h = wu * lam, hv * lam[:, None]
    eps = 1e-6
    w, h = torch.where(w < eps, 0.0, w), torch.where(h < eps, 0.0, h)
    if fill:
        avg = x.double().mean()
        w, h = torch.where(w == 0, avg, w), torch.where(h == 0, avg, h)
    return w.to(x.dtype), h.to(x.dtype)


def _random_init(x: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """scikit-learn's ``init="random"`` scale: |N(0, 1)| · sqrt(mean(x) / k)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    avg = float(x.double().mean().clamp_min(0).sqrt()) / k**0.5
    w = torch.randn(x.shape[0], k, generator=gen, dtype=torch.float64).abs() * avg
    h = torch.randn(k, x.shape[1], generator=gen, dtype=torch.float64).abs() * avg
    return w.to(x.device, x.dtype), h.to(x.device, x.dtype)


def _frobenius(x: Tensor, w: Tensor, h: Tensor, rows: int = 1024) -> float:
    """‖x − w h‖_F in fp64 (the residual of a good fit is a small difference of large numbers),
    a block of rows at a time so memory stays at one block."""
    total = 0.0
    for i in range(0, x.shape[0], rows):
        r = x[i : i + rows].double() - w[i : i + rows].double() @ h.double()
        total += float(torch.linalg.vector_norm(r)) ** 2
    return total**0.5


def _hals_sweep(a: Tensor, b: Tensor, m: Tensor) -> None:
    """Update each row j of ``m`` [k, n] in place: m_j ← max(0, m_j + (a_j − b_j m) / b_jj).

    ``a`` [k, n] = (other factor)ᵀ x, ``b`` [k, k] = gram of the other factor. The loop is over k
    (small); every step is a whole-row tensor op, so it runs as is on CUDA.
    """
    diag = b.diagonal()
    floor = torch.finfo(m.dtype).eps * diag.max().clamp_min(torch.finfo(m.dtype).tiny)
    inv = diag.clamp_min(floor).reciprocal()
    mt = m.T
    for j in range(m.shape[0]):
        step = torch.addmv(a[j], mt, b[j], alpha=-1).mul_(inv[j])
        m[j].add_(step).clamp_min_(0)


def nmf(
    x: Float[Tensor, "rows cols"],
    k: int = 8,
    *,
    max_iter: int = 400,
    tol: float | int = 1e-4,
    init: str = "nndsvda",
    seed: int = 0,
) -> NMF:
    """Factorize a nonnegative ``x`` as ``w @ h`` with ``k`` components (HALS).

    Stops when the error improves by less than ``tol`` (relative to the first error) over 10
    iterations, or after ``max_iter`` iterations. Runs in ``x``'s dtype on ``x``'s device.

    >>> x = torch.rand(30, 4) @ torch.rand(4, 50)
    >>> f = nmf(x, k=4)
    >>> f.factors.shape, f.h.shape, f.relative_error < 0.05, bool((f.w >= 0).all())
    (torch.Size([4, 30]), torch.Size([4, 50]), True, True)
    """
    if x.ndim != 2 or 0 in x.shape:
        raise WorkbenchError(f"nmf needs a non-empty 2-D matrix, got shape {tuple(x.shape)}")
    if not 1 <= k <= min(x.shape):
        raise WorkbenchError(
            f"n_components must be between 1 and min(rows, cols) = {min(x.shape)}, got {k}; "
            "use fewer components or more tokens"
        )
    if not torch.isfinite(x).all():
        raise WorkbenchError("nmf input has NaN or inf values")
    if (x < 0).any():
        raise WorkbenchError(
            "nmf needs a nonnegative matrix; clip negatives first (activation_matrix does)"
        )
    if init not in INITS:
        raise WorkbenchError(f"unknown init {init!r}; use one of {INITS}")
    x = x if x.is_floating_point() else x.float()
    if init == "random":
        w, h = _random_init(x, k, seed)
    else:
        w, h = _nndsvd(x, k, fill=init == "nndsvda")
    # W is kept transposed (wt [k, rows], contiguous): each row is one factor, the unit the
    # sweep updates in place, and no matmul needs a transposed left operand.
    wt, h = w.T.contiguous(), h.contiguous()
    xx = float(torch.linalg.vector_norm(x.double())) ** 2
    first = previous = _frobenius(x, wt.T, h)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        _hals_sweep(wt @ x, wt @ wt.T, h)
        # The W step is the H step on the transposed problem: xᵀ ≈ hᵀ wᵀ.
        c, d = h @ x.T, h @ h.T  # (x hᵀ)ᵀ and the gram of h
        _hals_sweep(c, d, wt)
        if it % 10 == 0:
            # ‖x − wh‖² = ‖x‖² − 2⟨w, x hᵀ⟩ + ⟨wᵀw, h hᵀ⟩: no pass over x needed.
            sq = xx - 2 * float((wt.double() * c.double()).sum()) + float(
                ((wt @ wt.T).double() * d.double()).sum())
            err = max(sq, 0.0) ** 0.5
            if first > 0 and (previous - err) / first < tol:
                converged = True
                break
            previous = err
    w = wt.T.contiguous()
    err = _frobenius(x, w, h)
    norm = xx**0.5
    return NMF(w, h, err, err / norm if norm > 0 else 0.0, it, converged)
