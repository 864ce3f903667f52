"""Add-k smoothed bigram language model: the baseline ``tiny-gloss-lm`` must beat.

1. ``bigram = BigramModel.fit(train_ids, vocab_size)`` counts every adjacent pair of a token
   stream (or of each sequence in a list of streams).
2. ``bigram.cross_entropy(prev, nxt, k=0.01)`` is the mean of ``-log P(nxt | prev)`` in nats, with
   ``P(b | a) = (c(a, b) + k) / (c(a, ·) + k V)``; ``c(a, ·)`` counts pairs starting with ``a``.

Counting is a bincount over pair ids ``a * V + b``. For a real vocabulary a dense ``V × V`` count
matrix is wasteful (8192² int64 = 512 MiB, almost all zeros), so the counts are kept sparse: the
sorted distinct pair ids with their counts (``np.unique``), looked up by binary search. For a small
vocabulary :meth:`BigramModel.count_matrix` gives the dense matrix (``np.bincount``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float, Int

from workbench.errors import WorkbenchError

IdArray = Int[np.ndarray, " n"]


def _pairs(sequences: Sequence[np.ndarray]) -> tuple[IdArray, IdArray]:
    prev = [np.asarray(s, dtype=np.int64)[:-1] for s in sequences]
    nxt = [np.asarray(s, dtype=np.int64)[1:] for s in sequences]
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(prev) if prev else empty, np.concatenate(nxt) if nxt else empty)


@dataclass(frozen=True)
class BigramModel:
    """Bigram counts of a training stream, stored sparse (see the module docstring)."""

    vocab_size: int
    pair_ids: Int[np.ndarray, " pairs"]  # sorted distinct a * V + b
    pair_counts: Int[np.ndarray, " pairs"]
    row_counts: Int[np.ndarray, " vocab"]  # c(a, ·): pairs that start with a

    @classmethod
    def fit(cls, sequences: np.ndarray | Sequence[np.ndarray], vocab_size: int) -> BigramModel:
        """Count the adjacent pairs of one token stream, or of each stream in a list.

        >>> m = BigramModel.fit(np.array([0, 1, 0, 1, 2]), vocab_size=3)
        >>> m.count_matrix().tolist()
        [[0, 2, 0], [1, 0, 1], [0, 0, 0]]
        """
        if isinstance(sequences, np.ndarray) and sequences.ndim == 1:
            sequences = [sequences]
        prev, nxt = _pairs(list(sequences))
        _check_ids(prev, vocab_size)
        _check_ids(nxt, vocab_size)
        ids, counts = np.unique(prev * vocab_size + nxt, return_counts=True)
        rows = np.bincount(prev, minlength=vocab_size)
        return cls(vocab_size, ids, counts.astype(np.int64), rows.astype(np.int64))

    def count_matrix(self) -> Int[np.ndarray, "vocab vocab"]:
        """The dense ``[V, V]`` count matrix (``[a, b]`` = pairs a→b); small vocabularies only."""
        v = self.vocab_size
        if v * v > 2**26:
            raise WorkbenchError(f"a dense {v}x{v} bigram matrix is too large; use pair_counts")
        dense = np.bincount(self.pair_ids, weights=self.pair_counts, minlength=v * v)
        return dense.astype(np.int64).reshape(v, v)

    def counts(self, prev: IdArray, nxt: IdArray) -> IdArray:
        """``c(prev[i], nxt[i])`` for each i, by binary search in the sorted pair ids."""
        query = np.asarray(prev, dtype=np.int64) * self.vocab_size + np.asarray(nxt, np.int64)
        if len(self.pair_ids) == 0:
            return np.zeros_like(query)
        pos_clipped = np.minimum(np.searchsorted(self.pair_ids, query), len(self.pair_ids) - 1)
        found = self.pair_ids[pos_clipped] == query
        return np.where(found, self.pair_counts[pos_clipped], 0)

    def log_prob(self, prev: IdArray, nxt: IdArray, k: float) -> Float[np.ndarray, " n"]:
        """``log P(nxt | prev)`` in nats under add-``k`` smoothing (float64)."""
        if k <= 0:
            raise WorkbenchError(f"add-k smoothing needs k > 0 (got {k}); try k=0.01")
        _check_ids(np.asarray(prev), self.vocab_size)
        _check_ids(np.asarray(nxt), self.vocab_size)
        num = self.counts(prev, nxt).astype(np.float64) + k
        den = self.row_counts[np.asarray(prev, dtype=np.int64)].astype(np.float64)
        den += k * self.vocab_size
        return np.log(num) - np.log(den)

    def cross_entropy(
        self,
        prev: Int[np.ndarray, "*shape"],
        nxt: Int[np.ndarray, "*shape"],
        k: float = 0.01,
        mask: Bool[np.ndarray, "*shape"] | None = None,
    ) -> float:
        """Mean ``-log P(nxt | prev)`` in nats/token over the pairs (those where ``mask``).

        >>> m = BigramModel.fit(np.array([0, 1, 0, 1]), vocab_size=2)
        >>> round(m.cross_entropy(np.array([0]), np.array([1]), k=1.0), 4)  # -log (2+1)/(2+2)
        0.2877
        """
        prev = np.asarray(prev, dtype=np.int64).reshape(-1)
        nxt = np.asarray(nxt, dtype=np.int64).reshape(-1)
        if mask is not None:
            keep = np.asarray(mask, dtype=bool).reshape(-1)
            prev, nxt = prev[keep], nxt[keep]
        if len(prev) == 0:
            raise WorkbenchError("no token pairs to evaluate: the evaluation data is empty")
        return float(-self.log_prob(prev, nxt, k).mean())


def unigram_cross_entropy(
    train: np.ndarray, targets: np.ndarray, vocab_size: int, k: float = 0.01
) -> float:
    """Add-k unigram cross-entropy of ``targets`` (nats/token): the no-context reference."""
    counts = np.bincount(np.asarray(train, np.int64).reshape(-1), minlength=vocab_size)
    logp = np.log(counts + k) - np.log(counts.sum() + k * vocab_size)
    return float(-logp[np.asarray(targets, np.int64).reshape(-1)].mean())


def _check_ids(ids: np.ndarray, vocab_size: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise WorkbenchError(
            f"token ids must lie in [0, {vocab_size}); got {ids.min()}..{ids.max()}. "
            "Use the same tokenizer (and vocab_size) for counting and evaluating."
        )
