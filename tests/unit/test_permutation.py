"""Permutation test against a naive pairwise loop (numpy) and on planted / null data."""

import numpy as np
import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.kernels.permutation import permutation_test, similarity_statistic


def naive_statistic(x: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Mean cosine over same-label pairs minus different-label pairs, by a double loop."""
    same, diff = [], []
    for i in range(len(x)):
        for j in range(len(x)):
            if i == j:
                continue
            ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
            cos = 0.0 if ni == 0 or nj == 0 else float(x[i] @ x[j] / (ni * nj))
            (same if labels[i] == labels[j] else diff).append(cos)
    return np.mean(same) - np.mean(diff), np.mean(same), np.mean(diff)


def test_statistic_equals_naive_pairwise_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5))
    x[4] = 0.0  # a zero vector has cosine 0 with everything
    labels = rng.integers(0, 4, size=23) * 7 + 3  # sparse label values
    ours = similarity_statistic(torch.tensor(x), torch.tensor(labels))
    np.testing.assert_allclose(ours, naive_statistic(x, labels), rtol=1e-10, atol=1e-12)


def test_planted_structure_is_found():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 8, generator=g) * 3
    labels = torch.arange(60) % 3
    x = centers[labels] + torch.randn(60, 8, generator=g)
    r = permutation_test(x, labels, n_permutations=199, seed=0)
    assert r.p_value == pytest.approx(1 / 200)
    assert r.effect_size > 5 and r.within > r.between


def test_null_p_values_are_roughly_uniform():
    g = torch.Generator().manual_seed(2)
    ps = []
    for s in range(40):
        x = torch.randn(30, 4, generator=g)
        labels = torch.randint(0, 3, (30,), generator=g)
        ps.append(permutation_test(x, labels, n_permutations=49, seed=s).p_value)
    ps = np.array(ps)
    assert 0.3 < ps.mean() < 0.7  # uniform mean 0.5; 40 draws: sd ~0.046
    assert (ps <= 0.05).mean() < 0.2


def test_null_distribution_matches_naive_on_the_same_permutations():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 3))
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 1])
    r = permutation_test(torch.tensor(x), torch.tensor(labels), n_permutations=30, seed=5)
    g = torch.Generator().manual_seed(5)
    null = [naive_statistic(x, labels[torch.randperm(12, generator=g).numpy()])[0]
            for _ in range(30)]
    assert r.null_mean == pytest.approx(np.mean(null), abs=1e-10)
    assert r.null_std == pytest.approx(np.std(null, ddof=1), abs=1e-10)
    assert r.p_value == pytest.approx((1 + sum(n >= r.statistic for n in null)) / 31)


def test_degenerate_labels_are_refused():
    with pytest.raises(WorkbenchError, match=">= 2 labels"):
        permutation_test(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(WorkbenchError, match=">= 2 labels"):
        permutation_test(torch.randn(3, 2), torch.arange(3))
