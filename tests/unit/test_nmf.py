"""NMF kernel against scikit-learn's NMF and numpy, on small matrices."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF as SklearnNMF

from tests.conftest import cuda_params
from workbench.errors import WorkbenchError
from workbench.kernels.nmf import activation_matrix, nmf


def gelu_like(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Sparse nonnegative matrix shaped like clipped MLP activations (tokens × neurons)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, cols, generator=g) + torch.randn(rows, 1, generator=g) * 0.5
    return torch.nn.functional.gelu(z + torch.randn(1, cols, generator=g)).clamp_min(0)


def sklearn_error(x: torch.Tensor, k: int, **kw) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter is fine for a reference
        model = SklearnNMF(k, max_iter=1000, tol=1e-5, **kw).fit(x.double().numpy())
    return float(model.reconstruction_err_)


@pytest.mark.parametrize("shape", [(48, 160), (30, 512)])
@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_reconstruction_error_within_5_percent_of_sklearn(shape, init):
    x = gelu_like(*shape)
    ours = nmf(x, 8, init=init, seed=0)
    ref = sklearn_error(x, 8, init=init, random_state=0)
    assert abs(ours.error / ref - 1) < 0.05, (ours.error, ref)


def test_factors_and_loadings_nonnegative_with_shapes():
    x = gelu_like(40, 96)
    f = nmf(x, 6)
    assert f.factors.shape == (6, 40) and f.h.shape == (6, 96)
    assert (f.w >= 0).all() and (f.h >= 0).all()
    assert torch.equal(f.factors, f.w.T)


def test_error_is_the_frobenius_norm_of_the_residual():
    x = gelu_like(20, 50)
    f = nmf(x, 4)
    resid = x.double().numpy() - f.w.double().numpy() @ f.h.double().numpy()
    assert f.error == pytest.approx(np.linalg.norm(resid, "fro"), rel=1e-9)
    assert f.relative_error == pytest.approx(f.error / np.linalg.norm(x.double().numpy()), rel=1e-9)


def test_exact_low_rank_matrix_is_recovered():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(30, 3, generator=g, dtype=torch.float64) @ torch.rand(3, 40, generator=g,
                                                                          dtype=torch.float64)
    assert nmf(x, 3, max_iter=100, tol=0.0).relative_error < 2e-3


def test_deterministic_for_a_seed():
    x = gelu_like(25, 60)
    a, b = nmf(x, 5, init="random", seed=3), nmf(x, 5, init="random", seed=3)
    assert torch.equal(a.w, b.w) and torch.equal(a.h, b.h)
    c = nmf(x, 5, init="random", seed=4)
    assert not torch.equal(a.w, c.w)


def test_activation_matrix_clips_negatives_and_drops_masked_positions():
    acts = torch.randn(3, 5, 7)  # layer pos neuron
    mask = torch.tensor([True, True, False, True, True])
    x = activation_matrix(acts, mask)
    ref = np.maximum(acts.numpy().transpose(1, 0, 2).reshape(5, 21), 0)[mask.numpy()]
    np.testing.assert_array_equal(x.numpy(), ref)
    # Columns are layer-major: column l * d_mlp + i is neuron i of layer l.
    np.testing.assert_array_equal(x[:, 7 + 2].numpy(), np.maximum(acts[1, mask, 2].numpy(), 0))


@pytest.mark.parametrize("bad, msg", [
    (-torch.ones(4, 4), "nonnegative"),
    (torch.full((4, 4), float("nan")), "NaN"),
    (torch.ones(0, 4), "non-empty"),
])
def test_bad_inputs_raise_with_what_to_do(bad, msg):
    with pytest.raises(WorkbenchError, match=msg):
        nmf(bad, 2)


def test_too_many_components_says_what_to_do():
    with pytest.raises(WorkbenchError, match="fewer components"):
        nmf(torch.rand(3, 10), 8)


@pytest.mark.parametrize("device", cuda_params())
def test_device_parity(device):
    x = gelu_like(40, 128)
    cpu = nmf(x, 6, init="random", seed=0)
    other = nmf(x.to(device), 6, init="random", seed=0)
    assert other.w.device.type == torch.device(device).type
    assert other.error == pytest.approx(cpu.error, rel=1e-3)
    torch.testing.assert_close(other.w.cpu(), cpu.w, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(other.h.cpu(), cpu.h, rtol=1e-2, atol=1e-3)
