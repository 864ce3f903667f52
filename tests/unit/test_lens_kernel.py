"""Lens kernels against numpy references and naive loops (no model)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import WorkbenchError
from workbench.kernels.lens import (
    Unembed,
    chunk_sizes,
    logit_lens,
    next_token_targets,
    project,
    target_ranks,
)
from workbench.kernels.lens_stats import LensStats, rank_edges


def argsort_rank(row: np.ndarray, target: int) -> int:
    """ecco's rank: position of the target in the full descending sort, 1-based."""
    order = np.argsort(-row, kind="stable")
    return int(np.nonzero(order == target)[0][0]) + 1


def np_layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w + b


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), vocab=st.integers(2, 300), seed=st.integers(0, 2**16))
def test_ranks_equal_full_argsort_ranks_without_ties(rows, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    # A permutation of distinct values: no ties anywhere.
    logits = torch.stack([torch.randperm(vocab, generator=g).float() / 7 for _ in range(rows)])
    targets = torch.randint(0, vocab, (rows, 3), generator=g)
    got = target_ranks(logits, targets)
    ref = [[argsort_rank(logits[i].numpy(), int(t)) for t in targets[i]] for i in range(rows)]
    assert got.tolist() == ref


def test_ties_share_the_best_rank_and_negative_targets_get_zero():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0]])
    got = target_ranks(logits, torch.tensor([[0, 2, 3, 1, 4, -1]]))
    # sorted descending: 3,3,2,1,1 → the first index holding each value, 1-based
    srt = np.sort(logits.numpy()[0])[::-1]
    ref = [int(np.nonzero(srt == logits[0, t].item())[0][0]) + 1 for t in (0, 2, 3, 1, 4)]
    assert got.tolist() == [ref + [0]]


def test_project_modes_match_numpy():
    g = torch.Generator().manual_seed(0)
    d, v = 8, 20
    ln = torch.nn.LayerNorm(d, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(d, generator=g) + 0.5)
        ln.bias.copy_(torch.randn(d, generator=g))
    u = Unembed(torch.randn(d, v, generator=g), torch.randn(v, generator=g), ln)
    x = torch.randn(3, 4, d, generator=g) * 5 + 2
    with torch.no_grad():
        raw, fin = project(x, u, "raw"), project(x, u, "final_ln")
    W, b = u.W_U.numpy(), u.b_U.numpy()
    np.testing.assert_allclose(raw.numpy(), x.numpy() @ W + b, rtol=1e-5, atol=1e-4)
    normed = np_layernorm(x.numpy().astype(np.float64), ln.weight.detach().numpy(),
                          ln.bias.detach().numpy(), 1e-5)
    np.testing.assert_allclose(fin.numpy(), normed @ W + b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="lens mode"):
        project(x, u, "tuned")


def naive_lens(stack, u, k, targets, watch):
    """Loop over every (lens, window, position) in float64 numpy."""
    n_lens, batch, pos, _ = stack.shape
    W, b = u.W_U.double().numpy(), u.b_U.double().numpy()
    out = {n: [] for n in ("ids", "probs", "ranks", "watch", "ent", "kl", "agree")}
    logits = stack.double().numpy() @ W + b
    for i in range(n_lens):
        for j in range(batch):
            for p in range(pos):
                z = logits[i, j, p]
                zf = logits[-1, j, p]
                lp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
                lpf = zf - np.log(np.exp(zf - zf.max()).sum()) - zf.max()
                order = np.argsort(-z, kind="stable")
                out["ids"].append(order[:k])
                out["probs"].append(np.exp(lp[order[:k]]))
                t = int(targets[j, p])
                out["ranks"].append(argsort_rank(z, t) if t >= 0 else 0)
                out["watch"].append([argsort_rank(z, int(w)) for w in watch])
                out["ent"].append(-(np.exp(lp) * lp).sum())
                out["kl"].append((np.exp(lpf) * (lpf - lp)).sum())
                out["agree"].append(z.argmax() == zf.argmax())
    shape = (n_lens, batch, pos)
    return {n: np.array(v).reshape(*shape, *np.array(v).shape[1:]) for n, v in out.items()}


@settings(max_examples=25, deadline=None)
@given(n_lens=st.integers(1, 4), batch=st.integers(1, 3), pos=st.integers(1, 6),
       vocab=st.integers(5, 60), budget=st.sampled_from([1, 3000, 2**28]),
       seed=st.integers(0, 2**16))
def test_logit_lens_matches_naive_loop(n_lens, batch, pos, vocab, budget, seed):
    g = torch.Generator().manual_seed(seed)
    d = 6
    u = Unembed(torch.randn(d, vocab, generator=g), torch.randn(vocab, generator=g))
    stack = torch.randn(n_lens, batch, pos, d, generator=g) * 2
    targets = torch.randint(-1, vocab, (batch, pos), generator=g)
    watch = torch.randint(0, vocab, (2,), generator=g)
    k = min(3, vocab)
    out = logit_lens(stack, u, mode="raw", k=k, targets=targets, watch=watch, budget_bytes=budget)
    ref = naive_lens(stack, u, k, targets, watch)
    # Random normal logits have no ties (almost surely), so ids and ranks compare exactly.
    assert out.topk_ids.numpy().tolist() == ref["ids"].tolist()
    assert out.ranks.numpy().tolist() == ref["ranks"].tolist()
    assert out.watch_ranks.numpy().tolist() == ref["watch"].tolist()
    assert out.agreement.numpy().tolist() == ref["agree"].tolist()
    np.testing.assert_allclose(out.topk_probs.numpy(), ref["probs"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.entropy.numpy(), ref["ent"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.kl.numpy(), ref["kl"], rtol=1e-3, atol=2e-5)
    assert (out.kl[-1] == 0).all()


def test_chunk_sizes_fit_the_budget():
    for n_lens, n_rows, vocab, budget in [(13, 1024, 50_000, 256 * 2**20), (3, 10, 257, 2**28),
                                          (40, 5000, 200_000, 64 * 2**20), (2, 7, 11, 1)]:
        positions, lenses = chunk_sizes(n_lens, n_rows, vocab, budget)
        assert 1 <= positions <= n_rows and 1 <= lenses <= n_lens
        cost = positions * (2 * 4 * vocab + lenses * 16 * vocab)
        assert cost <= budget or (positions, lenses) == (1, 1)
    assert chunk_sizes(3, 10, 257, 2**28) == (10, 3)  # small inputs: one chunk


def test_next_token_targets_matches_loop():
    tokens = torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    ref = [[tokens[b, p + 1].item() if p + 1 < 4 and mask[b, p] and mask[b, p + 1] else -1
            for p in range(4)] for b in range(2)]
    assert next_token_targets(tokens, mask).tolist() == ref


def _random_out(g, n_lens, batch, pos, vocab):
    ranks = torch.randint(0, vocab + 1, (n_lens, batch, pos), generator=g)
    ranks[:, :, -1] = 0
    ranks[:, :, :-1] = ranks[:, :, :-1].clamp(min=1)
    ent = torch.rand(n_lens, batch, pos, generator=g) * 5
    kl = torch.rand(n_lens, batch, pos, generator=g)
    agree = torch.rand(n_lens, batch, pos, generator=g) > 0.5
    mask = torch.ones(batch, pos, dtype=torch.bool)
    mask[0, pos // 2 :] = False
    ranks[:, 0, pos // 2 - 1 :] = 0  # no target where the next position is padding
    return ranks, ent, kl, agree, mask


def test_lens_stats_match_numpy_and_merge_equals_one_pass():
    g = torch.Generator().manual_seed(1)
    vocab = 100
    a = _random_out(g, 3, 4, 8, vocab)
    b = _random_out(g, 3, 2, 8, vocab)
    one = LensStats(3, vocab)
    for part in (a, b):
        one.update(*part)
    merged = LensStats(3, vocab).update(*a).merge(LensStats(3, vocab).update(*b))
    for key, v in one.compute().items():
        torch.testing.assert_close(merged.compute()[key], v)
    res = one.compute()
    ranks = np.concatenate([a[0].numpy(), b[0].numpy()], axis=1)
    mask = np.concatenate([a[4].numpy(), b[4].numpy()], axis=0)
    has = ranks[0] > 0
    for i in range(3):
        r = ranks[i][has]
        assert res["mean_log_rank"][i].item() == pytest.approx(np.log(r).mean())
        assert res["top1_accuracy"][i].item() == pytest.approx((r == 1).mean())
        edges = rank_edges(vocab).numpy()
        hist, _ = np.histogram(r, bins=edges)
        assert res["rank_hist"][i].tolist() == hist.tolist()
        for key, src in (("mean_kl", 2), ("mean_entropy", 1), ("top1_agreement", 3)):
            vals = np.concatenate([a[src].numpy()[i], b[src].numpy()[i]], axis=0)[mask]
            assert res[key][i].item() == pytest.approx(vals.astype(np.float64).mean(), rel=1e-6)
    assert int(res["n_targets"]) == has.sum() and int(res["n_positions"]) == mask.sum()
    assert res["mean_kl"].dtype == torch.float64 and res["rank_hist"].dtype == torch.int64


def test_lens_stats_state_roundtrip_and_mismatch():
    g = torch.Generator().manual_seed(2)
    s = LensStats(2, 50).update(*_random_out(g, 2, 3, 5, 50))
    t = LensStats(2, 50).load_state_dict(s.state_dict()).to("cpu")
    for key, v in s.compute().items():
        torch.testing.assert_close(t.compute()[key], v, equal_nan=True)
    with pytest.raises(ValueError, match="different models"):
        s.merge(LensStats(3, 50))
    with pytest.raises(WorkbenchError, match="rank_hist"):
        LensStats(2, 5000).load_state_dict(s.state_dict())
    assert set(s.REDUCE) == set(s.state_dict())
