"""Amap and TopWindows against naive Python loops over positions (no model)."""

import math

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap, check_fits, estimate_bytes
from workbench.kernels.top_windows import TopWindows

L, V, D, W = 2, 7, 3, 5
SEEN = 5  # keys are drawn from 0..SEEN-1: ids SEEN..V-1 stay unseen


def make_batches(n_batches=3, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        acts = torch.randn(L, batch, W, D, generator=g)
        lengths = torch.randint(1, W + 1, (batch,), generator=g)
        mask = torch.arange(W)[None] < lengths[:, None]
        keys = {m: torch.randint(0, SEEN, (batch, W), generator=g) for m in ("input", "output")}
        out.append((acts, mask, keys))
    return out


def naive(batches, mode, positions):
    """Sums and counts by a plain loop over every (batch, position): the reference."""
    n_keys = V + (W if positions else 0)
    sums = [[[0.0] * D for _ in range(n_keys)] for _ in range(L)]
    counts = [0] * n_keys
    for acts, mask, keys in batches:
        for b in range(mask.shape[0]):
            for p in range(mask.shape[1]):
                if not mask[b, p]:
                    continue
                targets = [int(keys[mode][b, p])] + ([V + p] if positions else [])
                for t in targets:
                    counts[t] += 1
                    for layer in range(L):
                        for i in range(D):
                            sums[layer][t][i] += float(acts[layer, b, p, i])
    return sums, counts


@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_amap_equals_naive_loop(positions, dtype):
    batches = make_batches()
    amap = Amap(L, V, D, ("input", "output"), W if positions else 0, dtype)
    for acts, mask, keys in batches:
        amap.update(acts, mask, keys)
    out = amap.compute()
    for mode in ("input", "output"):
        sums, counts = naive(batches, mode, positions)
        assert out[f"count.{mode}"].tolist() == counts
        assert out[f"count.{mode}"].dtype == torch.int64
        mean = out[f"mean.{mode}"]
        for layer in range(L):
            for t, c in enumerate(counts):
                for i in range(D):
                    if c == 0:
                        assert math.isnan(mean[layer, t, i])
                    else:
                        want = sums[layer][t][i] / c
                        tol = 1e-12 if dtype == torch.float64 else 1e-5
                        assert abs(float(mean[layer, t, i]) - want) <= tol * max(1.0, abs(want))


def test_one_key_over_a_million_positions_keeps_its_mean():
    """Accumulation error shows only at large counts: 2**20 positions of one key, mean ~3.1, fp64
    sums against an exactly rounded fp64 reference (math.fsum over the same fp32 values). fp32
    sums miss by 1.3e-5 relative here (measured), 13x the tolerance."""
    g = torch.Generator().manual_seed(0)
    amap = Amap(1, 4, 2, ("input",), 0, torch.float64)
    chunks = []
    for _ in range(16):  # 16 batches of 64 windows x 1024 positions
        acts = (3.1 + torch.randn(1, 64, 1024, 2, generator=g)).float()
        mask = torch.ones(64, 1024, dtype=torch.bool)
        amap.update(acts, mask, {"input": torch.full((64, 1024), 2)})
        chunks.append(acts.double().reshape(-1, 2))
    out = amap.compute()
    assert int(out["count.input"][2]) == 2**20
    every = torch.cat(chunks)
    for i in range(2):
        exact = math.fsum(every[:, i].tolist()) / 2**20
        assert abs(float(out["mean.input"][0, 2, i]) - exact) <= 1e-6 * abs(exact)


def test_unseen_tokens_are_nan_with_count_zero():
    amap = Amap(L, V, D, ("input",))
    for acts, mask, keys in make_batches():
        amap.update(acts, mask, {"input": keys["input"]})
    out = amap.compute()
    assert out["count.input"][SEEN:].tolist() == [0] * (V - SEEN)
    assert out["mean.input"][:, SEEN:].isnan().all()
    assert not out["mean.input"][:, :SEEN].isnan().any()


def test_padding_never_counts():
    amap = Amap(1, V, 1, ("input",), W)
    acts = torch.full((1, 1, W, 1), 5.0)
    mask = torch.tensor([[True, True, False, False, False]])
    amap.update(acts, mask, {"input": torch.tensor([[1, 1, 2, 2, 2]])})
    assert amap.counts["input"].tolist() == [0, 2, 0, 0, 0, 0, 0] + [1, 1, 0, 0, 0]
    assert amap.act_max.item() == 5.0


def test_merge_of_two_halves_equals_one_pass():
    batches = make_batches(n_batches=4)
    whole, a, b = (Amap(L, V, D, ("input", "output"), W) for _ in range(3))
    for i, (acts, mask, keys) in enumerate(batches):
        whole.update(acts, mask, keys)
        (a if i < 2 else b).update(acts, mask, keys)
    a.merge(b)
    for name, t in whole.state_dict().items():
        if t.dtype == torch.int64:
            assert torch.equal(a.state_dict()[name], t), name
        else:
            torch.testing.assert_close(a.state_dict()[name], t, rtol=1e-6, atol=1e-6)


def test_reduce_declares_every_state_and_state_round_trips():
    amap = Amap(L, V, D, ("input", "output"), W, torch.float64)
    acts, mask, keys = make_batches(1)[0]
    amap.update(acts, mask, keys)
    state = amap.state_dict()
    assert set(amap.REDUCE) == set(state)
    assert amap.REDUCE["count.input"] == "sum" and amap.REDUCE["act_max"] == "max"
    again = Amap(L, V, D, ("input", "output"), W, torch.float64).load_state_dict(state)
    for k, v in again.state_dict().items():
        assert torch.equal(v, state[k])
    with pytest.raises(WorkbenchError, match="different sizes"):
        Amap(L, V + 1, D, ("input", "output"), W, torch.float64).load_state_dict(state)
    with pytest.raises(WorkbenchError, match="same model and settings"):
        amap.merge(Amap(L, V, D, ("input",), W, torch.float64))


def test_invariants_hold_and_detect_tampering():
    amap = Amap(L, V, D, ("input", "output"), W)
    batches = make_batches()
    for acts, mask, keys in batches:
        amap.update(acts, mask, keys)
    n_windows = sum(m.shape[0] for _, m, _ in batches)
    assert all(amap.invariants(n_windows).values())
    amap.counts["output"][0] += 1
    assert not amap.invariants(n_windows)["token_totals_equal"]
    assert not amap.invariants(n_windows + 1)["pos0_equals_windows.input"]


def test_key_out_of_vocabulary_is_refused():
    amap = Amap(1, 4, 1, ("input",))
    with pytest.raises(WorkbenchError, match="another vocabulary"):
        amap.update(torch.zeros(1, 1, 2, 1), torch.ones(1, 2, dtype=torch.bool),
                    {"input": torch.tensor([[0, 9]])})


def test_memory_estimate_and_refusal_names_the_ways_out():
    n = estimate_bytes(6, 50304 + 15, 2048, 2, torch.float32)
    assert n > 2 * 6 * 50319 * 2048 * 4
    assert estimate_bytes(6, 50319, 2048, 2, torch.float16) < n
    check_fits(1000, torch.device("cpu"), limit=2000)
    with pytest.raises(WorkbenchError) as err:
        check_fits(n, torch.device("cpu"), limit=2**30)
    msg = str(err.value)
    assert "--layers" in msg and "float16" in msg and "--sum-device cpu" in msg


def naive_top(batches, k):
    """Every (score, window) per unit sorted by score, by loops."""
    best = {}
    w0 = 0
    for acts, mask, _ in batches:
        for b in range(mask.shape[0]):
            for layer in range(L):
                for i in range(D):
                    vals = [float(acts[layer, b, p, i]) for p in range(W) if mask[b, p]]
                    p = max(range(len(vals)), key=lambda j: vals[j])
                    best.setdefault((layer, i), []).append((vals[p], w0 + b, p))
        w0 += mask.shape[0]
    return {u: sorted(v, key=lambda x: -x[0])[:k] for u, v in best.items()}


def test_top_windows_equal_naive_and_merge():
    batches = make_batches(n_batches=4)
    k = 3
    whole, a, b = (TopWindows(L, D, k) for _ in range(3))
    w0 = 0
    for i, (acts, mask, _) in enumerate(batches):
        ids = torch.arange(w0, w0 + mask.shape[0])
        whole.update(acts, mask, ids)
        (a if i % 2 else b).update(acts, mask, ids)
        w0 += mask.shape[0]
    ref = naive_top(batches, k)
    out = whole.compute()
    for (layer, i), rows in ref.items():
        assert out["windows"][layer, i].tolist() == [w for _, w, _ in rows]
        assert out["positions"][layer, i].tolist() == [p for _, _, p in rows]
        torch.testing.assert_close(out["values"][layer, i], torch.tensor([v for v, _, _ in rows]))
    a.merge(b)
    assert torch.equal(a.compute()["windows"], out["windows"])
