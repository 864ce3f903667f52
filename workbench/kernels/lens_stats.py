"""``LensStats``: per-lens dataset aggregates of the logit lens, mergeable across batches/processes.

1. ``stats = LensStats(n_lens, vocab)``.
2. For each batch: ``stats.update(out.ranks, out.entropy, out.kl, out.agreement, mask)`` with a
   ``LensOutput`` of ``workbench.kernels.lens.logit_lens`` and the windows' padding mask.
3. ``stats.merge(other)`` adds another shard's state; every state is a sum (fp64 or int64), so
   single-process, multi-process (all-reduce SUM) and offline merges are the same operation.
4. ``stats.compute()`` reads out per-lens means and the rank histogram.

``WindowRanks`` keeps the per-window ranks whole (int32 on the CPU), for ``window_ranks``.

Targets are the positions with a rank (``ranks > 0``: a next token exists and is not padding);
entropy, KL and agreement average over every real position (``mask``).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.kernels.state import checked_state

STATES = ("log_rank_sum", "top1_hits", "rank_hist", "agree_count", "kl_sum", "entropy_sum",
          "n_targets", "n_positions")


def rank_edges(vocab: int) -> Int[Tensor, " edges"]:
    """Log2 rank bins ``[1, 2, 4, ..., 2**m]`` with ``2**m > vocab``: bin i holds ranks in
    ``[edges[i], edges[i + 1])``.

    >>> rank_edges(5).tolist()
    [1, 2, 4, 8]
    """
    m = max(1, math.ceil(math.log2(vocab + 1)))
    return 2 ** torch.arange(m + 1, dtype=torch.long)


class LensStats:
    """Sums per lens: log-rank, rank-1 hits, rank histogram, agreement, KL, entropy; and counts."""

    REDUCE = dict.fromkeys(STATES, "sum")  # see workbench.kernels.state

    def __init__(self, n_lens: int, vocab: int, device: str | torch.device = "cpu"):
        self.n_lens = n_lens
        self.vocab = vocab
        self.edges = rank_edges(vocab).to(device)
        bins = self.edges.numel() - 1
        f64 = {"dtype": torch.float64, "device": device}
        i64 = {"dtype": torch.long, "device": device}
        self.log_rank_sum = torch.zeros(n_lens, **f64)
        self.top1_hits = torch.zeros(n_lens, **i64)
        self.rank_hist = torch.zeros(n_lens, bins, **i64)
        self.agree_count = torch.zeros(n_lens, **i64)
        self.kl_sum = torch.zeros(n_lens, **f64)
        self.entropy_sum = torch.zeros(n_lens, **f64)
        self.n_targets = torch.zeros((), **i64)
        self.n_positions = torch.zeros((), **i64)

    def update(
        self,
        ranks: Int[Tensor, "lens batch pos"],
        entropy: Float[Tensor, "lens batch pos"],
        kl: Float[Tensor, "lens batch pos"],
        agreement: Bool[Tensor, "lens batch pos"],
        mask: Bool[Tensor, "batch pos"],
    ) -> LensStats:
        dev = self.log_rank_sum.device
        ranks, mask = ranks.to(dev), mask.to(dev)
        has = ranks > 0  # [lens, batch, pos]; the same positions on every lens
        r = ranks.clamp(min=1).double()
        self.log_rank_sum += torch.where(has, r.log(), torch.zeros_like(r)).sum((1, 2))
        self.top1_hits += (ranks == 1).sum((1, 2))
        bins = torch.bucketize(ranks, self.edges, right=True) - 1  # rank in [e_i, e_{i+1})
        bins = torch.where(has, bins, torch.full_like(bins, self.rank_hist.shape[1]))
        onehot = torch.zeros(self.n_lens, self.rank_hist.shape[1] + 1, dtype=torch.long, device=dev)
        onehot.scatter_add_(1, bins.flatten(1), torch.ones_like(bins.flatten(1)))
        self.rank_hist += onehot[:, :-1]  # the extra column collected positions with no target
        m = mask.unsqueeze(0)
        self.agree_count += (agreement.to(dev) & m).sum((1, 2))
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        self.kl_sum += torch.where(m, kl.to(dev).double(), zero).sum((1, 2))
        self.entropy_sum += torch.where(m, entropy.to(dev).double(), zero).sum((1, 2))
        self.n_targets += has[0].sum()
        self.n_positions += mask.sum()
        return self

    def merge(self, other: LensStats) -> LensStats:
        if (other.n_lens, other.vocab) != (self.n_lens, self.vocab):
            raise ValueError(
                f"cannot merge lens statistics of {other.n_lens} lenses / vocab {other.vocab} "
                f"into {self.n_lens} / {self.vocab}: they come from different models"
            )
        for name in STATES:
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))
        return self

    def compute(self) -> dict[str, Tensor]:
        """Per-lens means (NaN when nothing was seen), histogram, edges and counts."""
        nt = self.n_targets.double()
        npos = self.n_positions.double()
        return {
            "mean_log_rank": self.log_rank_sum / nt,
            "top1_accuracy": self.top1_hits.double() / nt,
            "top1_agreement": self.agree_count.double() / npos,
            "mean_kl": self.kl_sum / npos,
            "mean_entropy": self.entropy_sum / npos,
            "rank_hist": self.rank_hist.clone(),
            "rank_hist_edges": self.edges.clone(),
            "n_targets": self.n_targets.clone(),
            "n_positions": self.n_positions.clone(),
        }

    def state_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).clone() for name in STATES}

    def load_state_dict(self, state: dict[str, Tensor]) -> LensStats:
        """Load a ``state_dict`` of an accumulator of the same lenses and vocabulary (the rank
        histogram's width follows from the vocabulary)."""
        expected = {name: (tuple(getattr(self, name).shape), getattr(self, name).dtype)
                    for name in STATES}
        for name, t in checked_state("LensStats", state, expected, self.edges.device).items():
            setattr(self, name, t)
        return self

    def to(self, device: str | torch.device) -> LensStats:
        for name in (*STATES, "edges"):
            setattr(self, name, getattr(self, name).to(device))
        return self


class WindowRanks:
    """Per-window read-outs kept whole (int32 on the CPU: O(lenses x tokens), never logits).

    Padding and positions without a next token hold -1 (the kernel's 0 there is "no target").
    """

    def __init__(self, n_lens: int, n: int, width: int, n_watch: int | None) -> None:
        """``n`` windows of ``width`` positions each; ``n_watch`` watched tokens (or None)."""
        self.ranks = torch.full((n_lens, n, max(0, width - 1)), -1, dtype=torch.int32)
        self.watch_ranks = None if n_watch is None else \
            torch.full((n_lens, n, width, n_watch), -1, dtype=torch.int32)

    def update(self, index: Int[Tensor, " b"], ranks: Int[Tensor, "lens b pos"],
               watch_ranks: Int[Tensor, "lens b pos w"] | None, mask: Bool[Tensor, "b pos"]) -> None:
        """Fold in one batch (batches are trimmed to their longest window: ``pos`` <= width)."""
        pos = ranks.shape[-1]
        idx = index.cpu()
        # The batch's last column never has a next token; keep ranks as 1.. and -1 for none.
        got = torch.where(ranks > 0, ranks, -1)[..., : pos - 1]
        self.ranks[:, idx, : pos - 1] = got.to(device="cpu", dtype=torch.int32)
        if self.watch_ranks is not None and watch_ranks is not None:
            w = torch.where(mask[None, ..., None], watch_ranks, -1)
            self.watch_ranks[:, idx, :pos] = w.to(device="cpu", dtype=torch.int32)
