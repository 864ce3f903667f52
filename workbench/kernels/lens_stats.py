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

from workbench.kernels.state import Accumulator

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


class LensStats(Accumulator):
    """Sums per lens: log-rank, rank-1 hits, rank histogram, agreement, KL, entropy; and counts."""

    def __init__(self, n_lens: int, vocab: int, device: str | torch.device = "cpu"):
        super().__init__()
        self.n_lens = n_lens
        self.vocab = vocab
        self.add_buffer("edges", rank_edges(vocab).to(device))
        bins = self.edges.numel() - 1
        f64 = {"dtype": torch.float64, "device": device}
        i64 = {"dtype": torch.long, "device": device}
        shapes = {"log_rank_sum": ((n_lens,), f64), "top1_hits": ((n_lens,), i64),
                  "rank_hist": ((n_lens, bins), i64), "agree_count": ((n_lens,), i64),
                  "kl_sum": ((n_lens,), f64), "entropy_sum": ((n_lens,), f64),
                  "n_targets": ((), i64), "n_positions": ((), i64)}
        for name in STATES:  # every state is a sum: merges and all-reduces are additions
            shape, kind = shapes[name]
            self.add_state(name, torch.zeros(shape, **kind), "sum")

    def update(
        self,
        ranks: Int[Tensor, "lens batch pos"],
        entropy: Float[Tensor, "lens batch pos"],
        kl: Float[Tensor, "lens batch pos"],
        agreement: Bool[Tensor, "lens batch pos"],
        mask: Bool[Tensor, "batch pos"],
    ) -> LensStats:
        dev = self.device
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

    def _check_mergeable(self, other) -> None:
        if (other.n_lens, other.vocab) != (self.n_lens, self.vocab):
            raise ValueError(
                f"cannot merge lens statistics of {other.n_lens} lenses / vocab {other.vocab} "
                f"into {self.n_lens} / {self.vocab}: they come from different models"
            )

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


class WindowRanks(Accumulator):
    """Per-window read-outs kept whole (int32: O(lenses x tokens), never logits), indexed by
    global window id.

    Padding and positions without a next token hold -1 (the kernel's 0 there is "no target"). A
    window is filled by exactly one batch and ranks are >= 1, so the states reduce by ``"max"``:
    shards and ranks that each filled their own windows merge into the whole.
    """

    def __init__(self, n_lens: int, n: int, width: int, n_watch: int | None,
                 device: str | torch.device = "cpu") -> None:
        """``n`` windows of ``width`` positions each; ``n_watch`` watched tokens (or None)."""
        super().__init__()
        self.add_state("ranks", torch.full((n_lens, n, max(0, width - 1)), -1, dtype=torch.int32,
                                           device=device), "max")
        if n_watch is not None:
            self.add_state("watch_ranks", torch.full((n_lens, n, width, n_watch), -1,
                                                     dtype=torch.int32, device=device), "max")

    def update(self, index: Int[Tensor, " b"], ranks: Int[Tensor, "lens b pos"],
               watch_ranks: Int[Tensor, "lens b pos w"] | None, mask: Bool[Tensor, "b pos"]) -> None:
        """Fold in one batch (batches are trimmed to their longest window: ``pos`` <= width)."""
        pos = ranks.shape[-1]
        dev = self.device
        idx = index.to(dev)
        # The batch's last column never has a next token; keep ranks as 1.. and -1 for none.
        got = torch.where(ranks > 0, ranks, -1)[..., : pos - 1]
        self.ranks[:, idx, : pos - 1] = got.to(device=dev, dtype=torch.int32)
        if "watch_ranks" in self.states and watch_ranks is not None:
            w = torch.where(mask[None, ..., None], watch_ranks, -1)
            self.watch_ranks[:, idx, :pos] = w.to(device=dev, dtype=torch.int32)

    def compute(self) -> dict[str, Tensor]:
        return self.state_dict()
