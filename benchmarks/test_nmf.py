"""NMF: scikit-learn (baseline) against the workbench's torch HALS on the same matrix, one run.

The matrix is shaped like ecco's NMF input: tokens × (layers · neurons) of clipped GELU
activations. Both solvers get the same k, iteration cap and tolerance; the reconstruction errors
are recorded next to the timings (and checked to agree within 5%).
"""

import warnings

import pytest
import torch
from conftest import QUICK, sync

from workbench.kernels.nmf import nmf

K = 8
# (tokens, layers * neurons): 4 layers of tiny-gloss-lm's 512 neurons; gpt2-small's 12 × 3072.
SIZES = [(64, 256)] if QUICK else [(128, 4 * 512), (512, 12 * 3072)]
MAX_ITER, TOL = 200, 1e-4
_errors: dict = {}


def matrix(rows: int, cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(rows, cols, generator=g) + torch.randn(rows, 1, generator=g) * 0.5
    return torch.nn.functional.gelu(z + torch.randn(1, cols, generator=g)).clamp_min(0)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.benchmark(group="nmf")
def test_nmf_sklearn(benchmark, size):
    from sklearn.decomposition import NMF

    x = matrix(*size).numpy()

    def go():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return NMF(K, max_iter=MAX_ITER, tol=TOL, init="nndsvda").fit(x)

    model = benchmark.pedantic(go, rounds=1 if QUICK else 3, iterations=1)
    _errors[("sklearn", size)] = model.reconstruction_err_
    benchmark.extra_info.update({"role": "baseline", "shape": list(size), "k": K,
                                 "reconstruction_err": float(model.reconstruction_err_),
                                 "n_iter": int(model.n_iter_)})


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.benchmark(group="nmf")
def test_nmf_workbench(benchmark, size, device):
    x = matrix(*size).to(device)

    def go():
        f = nmf(x, K, max_iter=MAX_ITER, tol=TOL)
        sync(device)
        return f

    go()  # warm-up (CUDA context, LAPACK first call)
    f = benchmark.pedantic(go, rounds=1 if QUICK else 3, iterations=1)
    benchmark.extra_info.update({"role": "workbench", "shape": list(size), "k": K,
                                 "device": device, "reconstruction_err": f.error,
                                 "n_iter": f.n_iter})
    ref = _errors.get(("sklearn", size))
    if ref is not None:
        assert abs(f.error / ref - 1) < 0.05, (f.error, ref)
