"""Histogram against np.histogram per variable (no model), and the deterministic sample."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import cuda_params
from workbench.errors import WorkbenchError
from workbench.kernels.histogram import Histogram, bin_slots, linear_edges, symlog_edges
from workbench.kernels.sample import BottomK, permute_ids

SEED_EDGES = np.linspace(-15, 15, 301)


def reference(x: np.ndarray, edges: np.ndarray):
    """np.histogram per column, plus the values outside the edges, counted by comparison."""
    counts = np.stack([np.histogram(x[:, v], bins=edges)[0] for v in range(x.shape[1])])
    x64 = x.astype(np.float64)
    return counts, (x64 < edges[0]).sum(0), (x64 > edges[-1]).sum(0), np.isnan(x64).sum(0)


def tricky_values(edges: np.ndarray, dtype) -> np.ndarray:
    """Every edge, its fp neighbours in ``dtype``, values outside, ±inf and NaN."""
    e = edges.astype(dtype)
    up, down = np.nextafter(e, dtype(np.inf)), np.nextafter(e, dtype(-np.inf))
    extra = np.array([edges[0] - 1, edges[-1] + 1, 1e30, -1e30, np.inf, -np.inf, np.nan, 0.0])
    return np.concatenate([edges.astype(dtype), e, up, down, extra.astype(dtype)])


def check(h: Histogram, x: np.ndarray, edges: np.ndarray) -> None:
    counts, under, over, nan = reference(x, edges)
    assert np.array_equal(h.counts.cpu().numpy(), counts)
    assert np.array_equal(h.under.cpu().numpy(), under)
    assert np.array_equal(h.over.cpu().numpy(), over)
    assert np.array_equal(h.nan.cpu().numpy(), nan)
    assert h.counts.dtype == torch.int64


def test_default_edges_are_the_seeds():
    assert np.array_equal(linear_edges().numpy(), SEED_EDGES)


@pytest.mark.parametrize("device", cuda_params())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_counts_equal_np_histogram_per_layer(device, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_t(3, size=(4000, 5)) * np.array([1, 3, 6, 10, 20])).astype(dtype)
    h = Histogram(SEED_EDGES, 5, device).update(torch.from_numpy(x).to(device))
    check(h, x, SEED_EDGES)
    assert int(h.over.sum()) > 0 and int(h.under.sum()) > 0


@pytest.mark.parametrize("device", cuda_params())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("edges", [SEED_EDGES, np.linspace(-1, 2, 7), symlog_edges(50, 40, 0.5).numpy()],
                         ids=["seed", "small", "symlog"])
def test_values_exactly_on_edges(device, dtype, edges):
    col = tricky_values(edges, dtype)
    x = np.stack([col, col[::-1]], axis=1)
    h = Histogram(edges, 2, device).update(torch.from_numpy(x).to(device))
    check(h, x, edges)


def test_half_precision_counts():
    x = torch.randn(3000, 2).mul(8).to(torch.bfloat16)
    h = Histogram(SEED_EDGES, 2).update(x)
    check(h, x.double().numpy(), SEED_EDGES)


def test_streaming_many_batches_equals_one():
    x = torch.randn(5000, 3) * 7
    one = Histogram(SEED_EDGES, 3).update(x)
    many = Histogram(SEED_EDGES, 3)
    for chunk in x.split(333):
        many.update(chunk)
    for key, value in one.state_dict().items():
        assert torch.equal(value, many.state_dict()[key]), key


@settings(max_examples=40, deadline=None)
@given(n_a=st.integers(0, 60), n_b=st.integers(0, 60), v=st.integers(1, 3),
       scale=st.floats(0.1, 40), seed=st.integers(0, 2**16))
def test_merge_equals_one_pass_over_union(n_a, n_b, v, scale, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n_a, v, generator=g) * scale, torch.randn(n_b, v, generator=g) * scale
    edges = np.linspace(-10, 10, 21)
    merged = Histogram(edges, v).update(a).merge(Histogram(edges, v).update(b))
    union = Histogram(edges, v).update(torch.cat([a, b]))
    for key, value in union.state_dict().items():
        assert torch.equal(value, merged.state_dict()[key]), key
    assert merged.n_samples.tolist() == [n_a + n_b] * v


def test_mismatched_merge_raises_clear_errors():
    with pytest.raises(WorkbenchError, match="different edges"):
        Histogram(SEED_EDGES, 2).merge(Histogram(np.linspace(-15, 15, 101), 2))
    with pytest.raises(WorkbenchError, match="different edges"):
        Histogram(SEED_EDGES, 2).merge(Histogram(np.linspace(-14, 15, 301), 2))
    with pytest.raises(WorkbenchError, match="2 variables with one over 3"):
        Histogram(SEED_EDGES, 2).merge(Histogram(SEED_EDGES, 3))
    with pytest.raises(WorkbenchError, match="strictly increasing"):
        Histogram([0.0, 1.0, 1.0], 2)
    with pytest.raises(WorkbenchError, match=r"pass samples as \[n, 2\]"):
        Histogram(SEED_EDGES, 2).update(torch.randn(5, 3))


def test_state_dict_round_trip():
    h = Histogram(symlog_edges(100, 30), 2).update(torch.randn(100, 2) * 30)
    back = Histogram.from_state_dict(h.state_dict())
    for key, value in h.state_dict().items():
        assert torch.equal(value, back.state_dict()[key])
    with pytest.raises(WorkbenchError, match="different edges"):
        Histogram(symlog_edges(99, 30), 2).load_state_dict(h.state_dict())


def test_symlog_edges_are_symmetric_and_increasing():
    for bins in (10, 11, 300):
        e = symlog_edges(1000, bins, 1.0)
        assert e.numel() == bins + 1 and torch.equal(e, -e.flip(0))
        assert bool((e[1:] > e[:-1]).all()) and float(e[-1]) == 1000.0
    assert 0.0 in symlog_edges(10, 4).tolist()


def test_bin_slots_reference_rule():
    edges = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, 2.5, float("nan")], dtype=torch.float64)
    assert bin_slots(x, edges).tolist() == [0, 1, 1, 2, 2, 3, 4]


# --- the deterministic sample used for scatter plots and the pairplot -----------------------

def test_permute_ids_is_a_bijection_and_device_free():
    ids = torch.cat([torch.arange(5000), torch.tensor([2**40 + 7, 2**62 - 1])])
    keys = permute_ids(ids, seed=3)
    assert keys.unique().numel() == ids.numel() and bool((keys >= 0).all())
    assert not torch.equal(permute_ids(ids, seed=4), keys)
    with pytest.raises(WorkbenchError):
        permute_ids(torch.tensor([-1]))


def test_bottom_k_is_independent_of_batching_and_merges():
    ids = torch.arange(3000)
    keys = permute_ids(ids, seed=0)
    values = torch.randn(3000, 2)

    def feed(sample, lo, hi, step):
        for s in range(lo, hi, step):
            sl = slice(s, min(hi, s + step))
            pos = sample.candidates(keys[sl])
            sample.update(keys[sl][pos], values[sl][pos], ids[sl][pos, None])
        return sample

    one = feed(BottomK(100, 2), 0, 3000, 3000)
    many = feed(BottomK(100, 2), 0, 3000, 77)
    halves = feed(BottomK(100, 2), 0, 1234, 50).merge(feed(BottomK(100, 2), 1234, 3000, 400))
    expected = torch.argsort(keys)[:100]
    for s in (one, many, halves):
        assert torch.equal(s.ids[:, 0], ids[expected])
        assert torch.equal(s.values, values[expected].double())
    with pytest.raises(WorkbenchError, match="different sizes"):
        one.merge(BottomK(50, 2))


@settings(max_examples=50, deadline=None)
@given(lo=st.floats(-1e3, 1e3), span=st.floats(1e-3, 1e3), bins=st.integers(1, 400),
       fp64=st.booleans(), seed=st.integers(0, 2**16))
def test_arithmetic_rule_equals_binary_search(lo, span, bins, fp64, seed):
    """The uniform-edge fast path against searchsorted on the fp64 edges, edges included."""
    edges = np.linspace(lo, lo + span, bins + 1)
    if not np.all(np.diff(edges) > 0):
        return
    dtype = np.float64 if fp64 else np.float32
    rng = np.random.default_rng(seed)
    col = np.concatenate([rng.uniform(lo - span / 4, lo + 1.25 * span, 500).astype(dtype),
                          tricky_values(edges, dtype)])
    x = torch.from_numpy(np.stack([col, col[::-1]], axis=1))
    h = Histogram(edges, 2).update(x)
    slots = bin_slots(x.T, torch.from_numpy(edges))
    expected = torch.stack([torch.bincount(s, minlength=bins + 3) for s in slots])
    assert torch.equal(h.counts, expected[:, 1 : bins + 1])
    assert torch.equal(h.under, expected[:, 0]) and torch.equal(h.over, expected[:, bins + 1])
    assert torch.equal(h.nan, expected[:, bins + 2])


def test_bottom_k_merge_keeps_equal_keys_of_two_builds_apart():
    """Two builds offer the same keys for different items: the merge is the k smallest of the
    multiset (old first on ties), as a sort of the union would give."""
    g = torch.Generator().manual_seed(1)
    keys = torch.randperm(40, generator=g)[:12]
    a, b = BottomK(8, 1, 1), BottomK(8, 1, 1)
    a.update(keys, torch.zeros(12, 1), torch.zeros(12, 1, dtype=torch.long))
    b.update(keys.clone(), torch.ones(12, 1), torch.ones(12, 1, dtype=torch.long))
    a.merge(b)
    union = sorted([(int(k), 0) for k in keys] + [(int(k), 1) for k in keys])[:8]
    assert a.keys.tolist() == [k for k, _ in union]
    assert a.ids[:, 0].tolist() == [src for _, src in union]
