"""Add-k bigram baseline against a naive Python reference, and the evaluation windows."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.training.bigram import BigramModel, unigram_cross_entropy
from workbench.training.gloss_data import (
    doc_starts,
    eval_windows,
    pairs_of_windows,
    sample_windows,
    usable_starts,
)


def naive_bigram_ce(train: list[list[int]], prev: list[int], nxt: list[int], v: int, k: float):
    pair, row = Counter(), Counter()
    for seq in train:
        for a, b in zip(seq[:-1], seq[1:], strict=True):
            pair[a, b] += 1
            row[a] += 1
    total = 0.0
    for a, b in zip(prev, nxt, strict=True):
        total -= math.log((pair[a, b] + k) / (row[a] + k * v))
    return total / len(prev)


@pytest.mark.parametrize("k", [0.01, 0.5, 1.0])
@pytest.mark.parametrize("v", [3, 7, 50])
def test_matches_naive_reference(k, v):
    rng = np.random.default_rng(v)
    train = rng.integers(0, v, 300)
    prev, nxt = rng.integers(0, v, 80), rng.integers(0, v, 80)  # includes unseen pairs
    model = BigramModel.fit(train, v)
    want = naive_bigram_ce([train.tolist()], prev.tolist(), nxt.tolist(), v, k)
    assert model.cross_entropy(prev, nxt, k=k) == pytest.approx(want, rel=1e-12)


def test_sequences_do_not_bridge():
    seqs = [np.array([0, 1, 2]), np.array([2, 0]), np.array([1])]
    model = BigramModel.fit(seqs, 3)
    assert model.count_matrix().tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    prev, nxt = np.array([0, 2, 1, 1]), np.array([1, 0, 0, 2])
    want = naive_bigram_ce([s.tolist() for s in seqs], prev.tolist(), nxt.tolist(), 3, 0.1)
    assert model.cross_entropy(prev, nxt, k=0.1) == pytest.approx(want, rel=1e-12)


def test_count_matrix_matches_naive():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 6, 500)
    dense = BigramModel.fit(train, 6).count_matrix()
    naive = np.zeros((6, 6), dtype=np.int64)
    for a, b in zip(train[:-1], train[1:], strict=True):
        naive[a, b] += 1
    np.testing.assert_array_equal(dense, naive)
    assert dense.sum() == len(train) - 1


def test_mask_and_2d_inputs():
    rng = np.random.default_rng(1)
    model = BigramModel.fit(rng.integers(0, 5, 200), 5)
    prev, nxt = rng.integers(0, 5, (4, 6)), rng.integers(0, 5, (4, 6))
    mask = rng.random((4, 6)) < 0.5
    got = model.cross_entropy(prev, nxt, k=0.2, mask=mask)
    assert got == pytest.approx(model.cross_entropy(prev[mask], nxt[mask], k=0.2))


def test_probabilities_sum_to_one():
    model = BigramModel.fit(np.random.default_rng(2).integers(0, 9, 400), 9)
    for a in range(9):
        logp = model.log_prob(np.full(9, a), np.arange(9), k=0.05)
        assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-12)


def test_unigram_reference():
    train, targets = np.array([0, 0, 1, 2]), np.array([0, 2])
    want = -(math.log(2.5 / 5.5) + math.log(1.5 / 5.5)) / 2
    assert unigram_cross_entropy(train, targets, 3, k=0.5) == pytest.approx(want)


def test_user_errors():
    model = BigramModel.fit(np.array([0, 1, 1]), 2)
    with pytest.raises(WorkbenchError, match="k > 0"):
        model.cross_entropy(np.array([0]), np.array([1]), k=0.0)
    with pytest.raises(WorkbenchError, match="token ids"):
        model.cross_entropy(np.array([0]), np.array([5]))
    with pytest.raises(WorkbenchError, match="empty"):
        model.cross_entropy(np.array([0]), np.array([1]), mask=np.array([False]))


# --- evaluation windows ----------------------------------------------------------------------


def random_stream(seed: int, n_docs: int, eot: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, 20, rng.integers(1, 12)) for _ in range(n_docs)]
    return np.concatenate([np.concatenate([[eot], d]) for d in docs]).astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eval_windows_score_each_target_once(seed):
    stream = random_stream(seed, 60)
    n_ctx = 16
    windows, mask = eval_windows(stream, eot_id=0, n_ctx=n_ctx)
    assert windows.shape[1:] == (n_ctx + 1,) and mask.shape == (len(windows), n_ctx)
    prev, nxt = pairs_of_windows(windows, mask)
    assert sorted(zip(prev.tolist(), nxt.tolist(), strict=True)) == sorted(
        zip(stream[:-1].tolist(), stream[1:].tolist(), strict=True)
    )
    assert mask.sum() == len(stream) - 1
    # Windows open at a document boundary unless the previous document filled a whole window.
    assert (windows[:, 0] == 0).mean() > 0.8


def test_training_windows_open_at_document_boundaries():
    stream = random_stream(3, 80)
    starts = usable_starts(len(stream), doc_starts(stream, 0), n_ctx=16)
    gen = torch.Generator().manual_seed(0)
    batch = sample_windows(torch.from_numpy(stream), torch.from_numpy(starts), 8, 16, gen)
    assert batch.shape == (8, 17)
    assert (batch[:, 0] == 0).all()
    again = sample_windows(
        torch.from_numpy(stream), torch.from_numpy(starts), 8, 16, torch.Generator().manual_seed(0)
    )
    assert torch.equal(batch, again)
