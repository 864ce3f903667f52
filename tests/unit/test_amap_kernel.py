"""Amap and TopWindows against naive Python loops over positions (no model)."""

import math

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap, estimate_bytes
from workbench.kernels.top_windows import TopWindows
from workbench.memory import check_fits

L, V, D, W = 2, 7, 3, 5
SEEN = 5  # keys are drawn from 0..SEEN-1: ids SEEN..V-1 stay unseen


def make_batches(n_batches=3, batch=3, seed=0, shift=0):
    """Random batches; the second has no padding (the update's unpadded path), ``shift`` masks
    the first column (a BOS that is no key)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        acts = torch.randn(L, batch, W, D, generator=g)
        lengths = torch.randint(1, W + 1, (batch,), generator=g)
        lengths = lengths if i != 1 else torch.full_like(lengths, W)
        mask = torch.arange(W)[None] < lengths[:, None]
        mask[:, :shift] = False
        keys = {m: torch.randint(0, SEEN, (batch, W), generator=g) for m in ("input", "output")}
        out.append((acts, mask, keys))
    return out


def naive(batches, mode, positions, shift=0):
    """Sums and counts by a plain loop over every (batch, position): the reference."""
    n_keys = V + (W if positions else 0)
    sums = [[[0.0] * D for _ in range(n_keys)] for _ in range(L)]
    counts = [0] * n_keys
    for acts, mask, keys in batches:
        for b in range(mask.shape[0]):
            for p in range(mask.shape[1]):
                if not mask[b, p]:
                    continue
                targets = [int(keys[mode][b, p])] + ([V + p - shift] if positions else [])
                for t in targets:
                    counts[t] += 1
                    for layer in range(L):
                        for i in range(D):
                            sums[layer][t][i] += float(acts[layer, b, p, i])
    return sums, counts


def dense(amap, mode):
    """The sparse states spread over every key id by a plain loop: counts [n_keys] (0 unseen)
    and means [layer][key][mlp] (None unseen)."""
    counts = [0] * amap.n_keys
    means = [[[None] * D for _ in range(amap.n_keys)] for _ in range(L)]
    keys, count, total = amap.keys(mode).tolist(), amap.counts[mode], amap.sums[mode]
    for j, t in enumerate(keys):
        counts[t] = int(count[j])
        for layer in range(L):
            for i in range(D):
                means[layer][t][i] = float(total[layer, j, i]) / counts[t]
    return counts, means


@pytest.mark.parametrize(("positions", "shift"), [(False, 0), (True, 0), (True, 1)])
def test_sparse_amap_equals_naive_loop(positions, shift):
    batches = make_batches(shift=shift)
    amap = Amap(L, V, D, ("input", "output"), W if positions else 0)
    for acts, mask, keys in batches:
        amap.update(acts, mask, keys, position_shift=shift)
    for mode in ("input", "output"):
        sums, counts = naive(batches, mode, positions, shift)
        got_counts, got_means = dense(amap, mode)
        assert got_counts == counts
        assert amap.counts[mode].dtype == torch.int64 and bool((amap.counts[mode] > 0).all())
        assert amap.sums[mode].dtype == torch.float64
        assert sorted(amap.keys(mode).tolist()) == [t for t, c in enumerate(counts) if c]
        for layer in range(L):
            for t, c in enumerate(counts):
                for i in range(D):
                    if c:
                        want = sums[layer][t][i] / c
                        assert abs(got_means[layer][t][i] - want) <= 1e-12 * max(1.0, abs(want))
                    else:
                        assert got_means[layer][t][i] is None


def test_states_grow_with_the_keys_seen_not_the_vocabulary():
    """A 1M-token vocabulary, 40 keys seen over 20 batches (new keys in every one: the table
    grows several times): the states hold 40 keys and match a loop."""
    g = torch.Generator().manual_seed(1)
    amap = Amap(1, 1_000_000, 2, ("input",))
    ref: dict[int, list] = {}
    for step in range(20):
        ids = torch.tensor([[7 * step + 3, 999_999 - step]])
        acts = torch.randn(1, 1, 2, 2, generator=g)
        amap.update(acts, torch.ones(1, 2, dtype=torch.bool), {"input": ids})
        for p in range(2):
            ref.setdefault(int(ids[0, p]), []).append(acts[0, 0, p].double())
    state = amap.state_dict()
    assert state["keys.input"].shape == (40,) and state["sum.input"].shape == (1, 40, 2)
    assert sum(t.numel() * t.element_size() for t in state.values()) < 2000
    amap.sort_()
    assert amap.keys("input").tolist() == sorted(ref)
    for j, t in enumerate(sorted(ref)):
        assert int(amap.counts["input"][j]) == len(ref[t])
        torch.testing.assert_close(amap.sums["input"][0, j], torch.stack(ref[t]).sum(0))
    # after the sort the key table still finds every key
    assert amap.lookup("input", torch.tensor(sorted(ref))).tolist() == list(range(40))
    assert amap.lookup("input", torch.tensor([5, -1, 10**7])).tolist() == [-1, -1, -1]


def test_one_key_over_a_million_positions_keeps_its_mean():
    """Accumulation error shows only at large counts: 2**20 positions of one key, mean ~3.1,
    against an exactly rounded fp64 reference (math.fsum over the same fp32 values). fp32 sums
    missed by 1.3e-5 relative here (measured), 13x the tolerance; the fp64 totals do not."""
    g = torch.Generator().manual_seed(0)
    amap = Amap(1, 4, 2, ("input",), 0)
    chunks = []
    for _ in range(16):  # 16 batches of 64 windows x 1024 positions
        acts = (3.1 + torch.randn(1, 64, 1024, 2, generator=g)).float()
        mask = torch.ones(64, 1024, dtype=torch.bool)
        amap.update(acts, mask, {"input": torch.full((64, 1024), 2)})
        chunks.append(acts.double().reshape(-1, 2))
    out = amap.compute()
    assert out["keys.input"].tolist() == [2] and int(out["count.input"][0]) == 2**20
    every = torch.cat(chunks)
    for i in range(2):
        exact = math.fsum(every[:, i].tolist()) / 2**20
        assert abs(float(out["mean.input"][0, 0, i]) - exact) <= 1e-6 * abs(exact)


def test_unseen_tokens_are_absent():
    amap = Amap(L, V, D, ("input",))
    for acts, mask, keys in make_batches():
        amap.update(acts, mask, {"input": keys["input"]})
    out = amap.compute()
    assert sorted(out["keys.input"].tolist()) == list(range(SEEN))
    assert not out["mean.input"].isnan().any()
    assert amap.lookup("input", torch.arange(SEEN, V)).tolist() == [-1] * (V - SEEN)


def test_padding_never_counts():
    amap = Amap(1, V, 1, ("input",), W)
    acts = torch.full((1, 1, W, 1), 5.0)
    mask = torch.tensor([[True, True, False, False, False]])
    amap.update(acts, mask, {"input": torch.tensor([[1, 1, 2, 2, 2]])})
    amap.sort_()
    assert amap.keys("input").tolist() == [1, V, V + 1]
    assert amap.counts["input"].tolist() == [2, 1, 1]
    assert amap.act_max.item() == 5.0


def test_merge_of_two_halves_equals_one_pass():
    batches = make_batches(n_batches=4)
    whole, a, b = (Amap(L, V, D, ("input", "output"), W) for _ in range(3))
    for i, (acts, mask, keys) in enumerate(batches):
        whole.update(acts, mask, keys)
        (a if i < 2 else b).update(acts, mask, keys)
    a.merge(b)
    a.sort_(), whole.sort_()
    for name, t in whole.state_dict().items():
        if t.dtype == torch.int64:
            assert torch.equal(a.state_dict()[name], t), name
        else:
            torch.testing.assert_close(a.state_dict()[name], t, rtol=1e-12, atol=1e-12)


def test_state_round_trips_and_refuses_what_does_not_fit():
    amap = Amap(L, V, D, ("input", "output"), W)
    acts, mask, keys = make_batches(1)[0]
    amap.update(acts, mask, keys)
    state = amap.state_dict()
    assert set(amap.REDUCE) == set(state)
    assert amap.REDUCE["count.input"] == "merge" and amap.REDUCE["act_max"] == "max"
    again = Amap(L, V, D, ("input", "output"), W).load_state_dict(state)
    for k, v in again.state_dict().items():
        assert torch.equal(v, state[k])
    # the reloaded table keeps counting into the right slots
    again.update(acts, mask, keys)
    amap.update(acts, mask, keys)
    assert torch.equal(again.counts["input"], amap.counts["input"])
    with pytest.raises(WorkbenchError, match="different sizes"):
        Amap(L, V, D + 1, ("input", "output"), W).load_state_dict(state)
    with pytest.raises(WorkbenchError, match="distinct ids"):
        Amap(L, V, D, ("input", "output"), W).load_state_dict(
            {**state, "keys.input": torch.zeros_like(state["keys.input"])})
    with pytest.raises(WorkbenchError, match="counts <= 0"):
        Amap(L, V, D, ("input", "output"), W).load_state_dict(
            {**state, "count.input": torch.zeros_like(state["count.input"])})
    with pytest.raises(WorkbenchError, match="same model and settings"):
        amap.merge(Amap(L, V, D, ("input",), W))


def test_dense_v1_state_converts_to_the_sparse_form():
    dense_state = {"sum.input": torch.zeros(L, V + W, D), "count.input": torch.zeros(V + W,
                                                                                     dtype=torch.long)}
    dense_state["count.input"][[2, V]] = torch.tensor([4, 1])
    dense_state["sum.input"][:, 2] = 8.0
    dense_state["sum.input"][:, V] = 1.5
    amap = Amap.from_state(dense_state, V, W)
    assert amap.keys("input").tolist() == [2, V] and amap.counts["input"].tolist() == [4, 1]
    assert amap.compute()["mean.input"][:, :, 0].tolist() == [[2.0, 1.5]] * L


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
    n = estimate_bytes(18, 20_000, 2048, 2)
    assert n > 2 * 18 * 20_000 * 2048 * 8
    assert estimate_bytes(18, 20_000, 2048, 1) < n
    check_fits(1000, torch.device("cpu"), limit=2000)
    with pytest.raises(WorkbenchError) as err:
        check_fits(n, torch.device("cpu"), limit=2**30)
    msg = str(err.value)
    assert "--layers" in msg and "--modes input" in msg and "--sum-device cpu" in msg
    assert "--shard" in msg and "float16" not in msg


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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_windows_with_ties_shuffled_ids_and_snippets_equal_a_naive_sort(seed):
    """Many equal maxima (activations rounded to halves), window ids in no order (as a length
    batch plan gives them), padded ends and a masked first position, span-kept activations: every
    unit's k windows, peaks, starts and snippets equal a plain sort of every window (-value, id),
    whatever the batching and merge order."""
    g = torch.Generator().manual_seed(seed)
    n_layers, d, width, k, span, n = 2, 5, 6, 3, 4, 40
    acts = (torch.randn(n_layers, n, width, d, generator=g) * 2).round() / 2
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = torch.arange(width)[None] < lengths[:, None]
    mask[::5, 0] = False  # a BOS that is no key: masked, but still inside the window
    ids = torch.randperm(n, generator=g) + 100

    def naive_unit(layer, i):
        rows = []
        for w in range(n):
            real = [p for p in range(width) if mask[w, p]]
            if not real:
                continue
            vals = [float(acts[layer, w, p, i]) for p in real]
            peak = real[vals.index(max(vals))]
            length = int(mask[w].sum())
            start = min(max(peak - (span - 1 - span // 4), 0), max(length - span, 0))
            snip = [float(acts[layer, w, start + j, i]) if start + j < length else 0.0
                    for j in range(span)]
            rows.append((-max(vals), int(ids[w]), peak, start, snip))
        return sorted(rows)[:k]

    def feed(top, order, size):
        for s in range(0, n, size):
            b = order[s : s + size]
            top.update(acts[:, b], mask[b], ids[b])

    whole = TopWindows(n_layers, d, k, span=span)
    feed(whole, torch.arange(n), 7)
    a, b = TopWindows(n_layers, d, k, span=span), TopWindows(n_layers, d, k, span=span)
    order = torch.randperm(n, generator=g)
    feed(a, order[: n // 2], 3)
    feed(b, order[n // 2 :], 16)
    b.merge(a)
    for top in (whole, b):
        out = top.compute()
        for layer in range(n_layers):
            for i in range(d):
                ref = naive_unit(layer, i)
                assert out["values"][layer, i].tolist() == [-r[0] for r in ref]
                assert out["windows"][layer, i].tolist() == [r[1] for r in ref]
                assert out["positions"][layer, i].tolist() == [r[2] for r in ref]
                assert out["starts"][layer, i].tolist() == [r[3] for r in ref]
                assert out["acts"][layer, i].tolist() == [r[4] for r in ref]
