"""Permutation test (semantics): scipy against the workbench's group-sum statistic, one run.

``semantics-permutation``: do items sharing a label have more similar vectors than chance? The
statistic is the mean cosine of same-label pairs minus that of different-label pairs, under
``n`` label shufflings. scipy: ``scipy.stats.permutation_test`` (one sample, ``pairings``: the
labels' order is permuted) with the statistic read off the pairwise cosine matrix, O(items²)
per shuffle, which is how one writes it with numpy. Workbench: ``permutation_test``, O(items ·
dim) per shuffle from per-label sums. The items are lemma-AMAP-like rows ``[items, d_mlp]`` with
planted label structure, so both p-values must be the smallest possible, 1 / (n + 1).
"""

import numpy as np
import pytest
import torch
from conftest import QUICK, sync

from workbench.kernels.permutation import permutation_test, similarity_statistic

# (items, dim, labels, permutations)
SIZES = [(40, 16, 3, 99)] if QUICK else [(200, 512, 8, 1_000), (1_000, 512, 8, 1_000)]


def items(size):
    n, d, groups, _ = size
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % groups
    x = torch.randn(groups, d, generator=g)[labels] + 2 * torch.randn(n, d, generator=g)
    return x, labels


def scipy_test(scipy_permutation_test, x: np.ndarray, labels: np.ndarray, n_permutations: int):
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = z @ z.T
    off_diagonal = ~np.eye(len(x), dtype=bool)

    def statistic(lab):
        same = (lab[:, None] == lab[None, :]) & off_diagonal
        differ = lab[:, None] != lab[None, :]
        return cos[same].mean() - cos[differ].mean()

    return scipy_permutation_test((labels,), statistic, permutation_type="pairings",
                                  vectorized=False, n_resamples=n_permutations,
                                  alternative="greater", rng=np.random.default_rng(0))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"n{s[0]}-d{s[1]}-g{s[2]}-P{s[3]}")
@pytest.mark.benchmark(group="semantics-permutation")
def test_permutation_scipy(benchmark, size):
    scipy_stats = pytest.importorskip("scipy.stats")  # imported before the clock starts
    x, labels = items(size)
    xn, ln = x.double().numpy(), labels.numpy()
    r = benchmark.pedantic(scipy_test, args=(scipy_stats.permutation_test, xn, ln, size[3]),
                           rounds=1 if QUICK else 3, iterations=1)
    benchmark.extra_info.update({"role": "baseline", "items": size[0], "dim": size[1],
                                 "labels": size[2], "permutations": size[3],
                                 "statistic": float(r.statistic), "p_value": float(r.pvalue)})
    np.testing.assert_allclose(r.statistic, similarity_statistic(x, labels)[0], rtol=1e-9)
    assert r.pvalue == pytest.approx(1 / (size[3] + 1))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"n{s[0]}-d{s[1]}-g{s[2]}-P{s[3]}")
@pytest.mark.benchmark(group="semantics-permutation")
def test_permutation_workbench(benchmark, size, device):
    x, labels = items(size)
    xd, ld = x.to(device), labels.to(device)

    def go():
        r = permutation_test(xd, ld, n_permutations=size[3], seed=0)
        sync(device)
        return r

    r = benchmark.pedantic(go, rounds=1 if QUICK else 3, iterations=1)
    benchmark.extra_info.update({"role": "workbench", "items": size[0], "dim": size[1],
                                 "labels": size[2], "permutations": size[3], "device": device,
                                 "statistic": r.statistic, "p_value": r.p_value})
    assert r.p_value == pytest.approx(1 / (size[3] + 1))
