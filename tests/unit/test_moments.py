"""Moments and DimStats against numpy on the same samples (no model)."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import cuda_params
from workbench.errors import WorkbenchError
from workbench.kernels.dimstats import DimStats
from workbench.kernels.moments import Moments


def seed_matrix(n_layers=5, tokens=9, d=32, seed=0) -> np.ndarray:
    """Seed-shaped [layers, tokens*dims]: each row a layer flattened, with drifting layers."""
    rng = np.random.default_rng(seed)
    h = [rng.normal(size=(tokens, d))]
    for _ in range(n_layers - 1):
        h.append(h[-1] + rng.normal(scale=0.7, size=(tokens, d)) + rng.normal())
    return np.stack([x.reshape(-1) for x in h]).astype(np.float32)


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("device", cuda_params())
def test_cov_r2_match_numpy(device):
    x = seed_matrix()
    m = Moments(x.shape[0], device).update(torch.from_numpy(x).to(device).T)
    assert rel_err(m.cov().cpu(), np.cov(x)) < 1e-6
    assert rel_err(m.r2().cpu(), np.corrcoef(x) ** 2) < 1e-6
    assert rel_err(m.mean.cpu(), x.astype(np.float64).mean(1)) < 1e-12
    assert rel_err(m.std().cpu(), x.astype(np.float64).std(1, ddof=1)) < 1e-12
    assert int(m.count) == x.shape[1]


def test_row_major_and_chunked_input_agree():
    x = torch.from_numpy(seed_matrix(tokens=40))
    ref = Moments(x.shape[0]).update(x.T)  # variable-major view
    rowmajor = Moments(x.shape[0]).update(x.T.contiguous())
    small = Moments(x.shape[0])
    small.CHUNK = 7  # many centering chunks within one batch
    small.update(x.T)
    for other in (rowmajor, small):
        assert torch.allclose(other.cov(), ref.cov(), rtol=1e-12, atol=0)
        assert torch.allclose(other.mean, ref.mean, rtol=1e-12, atol=0)


def test_streaming_many_batches_equals_one():
    x = torch.from_numpy(seed_matrix(tokens=30)).T
    one = Moments(x.shape[1]).update(x)
    many = Moments(x.shape[1])
    for chunk in x.split(37):
        many.update(chunk)
    assert int(many.count) == int(one.count)
    assert torch.allclose(many.cov(), one.cov(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(many.r2(), one.r2(), rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(n_a=st.integers(0, 40), n_b=st.integers(0, 40), v=st.integers(1, 4),
       shift=st.floats(-1e3, 1e3), seed=st.integers(0, 2**16))
def test_merge_equals_one_pass_over_union(n_a, n_b, v, shift, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_a, v, generator=g, dtype=torch.float64) + shift
    b = torch.randn(n_b, v, generator=g, dtype=torch.float64) * 3
    merged = Moments(v).update(a).merge(Moments(v).update(b))
    union = Moments(v).update(torch.cat([a, b]))
    assert int(merged.count) == n_a + n_b
    if n_a + n_b == 0:
        return
    both = torch.cat([a, b]).numpy()
    assert np.allclose(merged.mean, both.mean(0), rtol=1e-9, atol=1e-9)
    assert torch.allclose(merged.mean, union.mean, rtol=1e-9, atol=1e-9)
    scale = max(1.0, float(union.comoment.abs().max()))
    assert float((merged.comoment - union.comoment).abs().max()) <= 1e-9 * scale


def test_fp32_large_mean_matches_fp64_reference():
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(20000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    x64 += 1e3
    x32 = x64.float()
    m = Moments(3)
    for chunk in x32.split(999):
        m.update(chunk)
    ref = x32.double().numpy()  # same values, fp64 numpy reference
    assert rel_err(m.cov(), np.cov(ref.T)) < 1e-6
    assert rel_err(m.mean, ref.mean(0)) < 1e-12
    # the naive fp32 E[x²] - E[x]² is far off here (DESIGN.md); the engine must not be
    naive = (x32 * x32).mean(0) - x32.mean(0) ** 2
    assert float((naive.double() - torch.from_numpy(ref.var(0))).abs().max()) > 1e-3


def test_half_precision_inputs_are_upcast_exactly():
    x = torch.randn(500, 3).to(torch.bfloat16)
    m = Moments(3).update(x)
    assert rel_err(m.cov(), np.cov(x.double().numpy().T)) < 1e-10


def test_constant_layer_gives_nan_r2_with_warning():
    x = torch.randn(100, 3, dtype=torch.float64)
    x[:, 1] = 4.0
    m = Moments(3).update(x)
    with pytest.warns(RuntimeWarning, match="constant"):
        r2 = m.r2()
    assert torch.isnan(r2[1]).all() and torch.isnan(r2[:, 1]).all()
    assert torch.isfinite(r2[0, 2]) and float(r2[0, 0]) == pytest.approx(1.0)
    assert float(m.cov()[1, 1]) == 0.0


def test_no_warning_without_constant_layers():
    m = Moments(2).update(torch.randn(50, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.r2()


def test_mismatched_merge_and_shapes_raise_clear_errors():
    with pytest.raises(WorkbenchError, match="3 variables with 4 variables"):
        Moments(3).merge(Moments(4))
    with pytest.raises(WorkbenchError, match=r"pass samples as \[n, 3\]"):
        Moments(3).update(torch.randn(10, 4))
    with pytest.raises(WorkbenchError, match="keys"):
        Moments(3).load_state_dict({"count": torch.tensor(1)})
    with pytest.raises(WorkbenchError, match="different sizes"):
        Moments(3).load_state_dict(Moments(2).state_dict())


def test_state_dict_round_trip_and_resume():
    x = torch.randn(300, 4)
    first = Moments(4).update(x[:100])
    resumed = Moments.from_state_dict(first.state_dict()).update(x[100:])
    whole = Moments(4).update(x)
    assert torch.allclose(resumed.cov(), whole.cov(), rtol=1e-12)
    assert set(whole.REDUCE) == set(whole.state_dict())


def test_fewer_than_two_samples_gives_nan_cov():
    m = Moments(2).update(torch.randn(1, 2))
    assert torch.isnan(m.cov()).all()


@pytest.mark.parametrize("device", cuda_params())
def test_dimstats_match_numpy(device):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 3, 8)).astype(np.float32) * rng.uniform(0.1, 9, size=(3, 8))
    s = DimStats(3, 8, device)
    for chunk in torch.from_numpy(x).to(device).split(13):
        s.update(chunk)
    x64 = x.astype(np.float64)
    assert np.allclose(s.mean.cpu(), x64.mean(0), rtol=1e-12, atol=1e-12)
    assert np.allclose(s.std().cpu(), x64.std(0, ddof=1), rtol=1e-10)
    assert np.array_equal(s.maxabs.cpu().numpy(), np.abs(x64).max(0))
    top = s.outliers(1, k=2)
    assert top[0]["dim"] == int(np.abs(x64[:, 1]).max(0).argmax())


def test_dimstats_merge_and_errors():
    x = torch.randn(40, 2, 5)
    merged = DimStats(2, 5).update(x[:15]).merge(DimStats(2, 5).update(x[15:]))
    whole = DimStats(2, 5).update(x)
    for key in ("mean", "m2", "maxabs"):
        assert torch.allclose(merged.state_dict()[key], whole.state_dict()[key], rtol=1e-10)
    with pytest.raises(WorkbenchError, match="same model"):
        DimStats(2, 5).merge(DimStats(2, 6))
    restored = DimStats(2, 5).load_state_dict(whole.state_dict())
    assert torch.equal(restored.maxabs, whole.maxabs)
