"""Logit lens kernels: project every residual layer through the unembedding and read it out.

1. ``unembed = Unembed.from_model(model)`` keeps the model's ``ln_final`` and ``W_U``/``b_U``.
2. ``project(resid, unembed, mode)`` gives the lens logits of any ``[..., d_model]`` residual:
   ``unembed(ln_final(resid))`` in mode ``final_ln`` (the LayerNorm recomputes its statistics on
   that residual, as TransformerLens' ``accumulated_resid(apply_ln=True)``), ``resid @ W_U + b_U``
   in mode ``raw`` (ecco's choice).
3. ``target_ranks(logits, targets)``: rank = 1 + count of logits strictly greater than the
   target's. O(vocab) per target, no sort: ties share the best rank.
4. ``logit_lens(stack, unembed, ...)`` runs the whole read-out (top-k ids and probabilities, ranks
   of targets, ranks of watched ids, entropy, KL(final || lens), top-1 agreement with the final
   lens) for a stack ``[lens, batch, pos, d_model]``, chunked over positions and lenses so the
   ``[lens, pos, vocab]`` logits never exist whole; ``budget_bytes`` bounds the transient chunk.

The dataset-level accumulator over many batches is ``workbench.kernels.lens_stats.LensStats``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from einops import einsum, rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

Mode = Literal["final_ln", "raw"]
MODES: tuple[str, ...] = ("final_ln", "raw")
DEFAULT_BUDGET = 256 * 2**20
# fp32 [rows, vocab] tensors alive at once per row while a chunk is read out: at most two of
# the logits / their max-shifted copy / its exp, plus the bool comparison and top-k temporaries;
# rounded up so the budget also covers the allocator's slack.
_ROW_COPIES = 4


@dataclass
class Unembed:
    """What a lens needs from a model: the final normalization and the unembedding."""

    W_U: Float[Tensor, "d_model vocab"]
    b_U: Float[Tensor, " vocab"] | None
    ln: Callable[[Tensor], Tensor] | None = None  # None: the model has no final normalization

    @classmethod
    def from_model(cls, model) -> Unembed:
        """``model.ln_final`` (whatever it is: LN, LNPre, RMS, folded) and ``model.unembed``."""
        return cls(model.W_U, getattr(model, "b_U", None), getattr(model, "ln_final", None))

    @property
    def d_vocab(self) -> int:
        return int(self.W_U.shape[1])


def project(
    resid: Float[Tensor, "*lead d_model"], unembed: Unembed, mode: str = "final_ln"
) -> Float[Tensor, "*lead vocab"]:
    """Lens logits of residual vectors, in fp32 whatever the model's dtype.

    >>> u = Unembed(torch.eye(3), torch.zeros(3))
    >>> project(torch.tensor([[1.0, 2.0, 3.0]]), u, "raw")
    tensor([[1., 2., 3.]])
    """
    if mode not in MODES:
        raise ValueError(f"lens mode {mode!r} is not one of {MODES}")
    x = resid
    if mode == "final_ln" and unembed.ln is not None:
        x = unembed.ln(x)
    logits = x @ unembed.W_U
    if unembed.b_U is not None:
        logits = logits + unembed.b_U
    return logits.float()


def target_ranks(
    logits: Float[Tensor, "*lead vocab"], targets: Int[Tensor, "*lead t"]
) -> Int[Tensor, "*lead t"]:
    """1 + number of logits strictly greater than each target's logit (ties share the best rank).

    Targets < 0 (no target: padding, the last position) get rank 0.

    >>> target_ranks(torch.tensor([[0.1, 0.5, 0.3]]), torch.tensor([[2, 1, -1]]))
    tensor([[2, 1, 0]])
    """
    valid = targets >= 0
    picked = logits.gather(-1, targets.clamp(min=0))
    ranks = torch.empty(targets.shape, dtype=torch.long, device=logits.device)
    # One target column at a time keeps the comparison temporary at [*lead, vocab] bools.
    for j in range(targets.shape[-1]):
        # int32 counts are exact (vocab < 2**31) and reduce ~1.5x faster than int64 on CPU.
        ranks[..., j] = (logits > picked[..., j : j + 1]).sum(-1, dtype=torch.int32)
    return torch.where(valid, ranks + 1, torch.zeros_like(ranks))


@dataclass
class LensOutput:
    """Per lens, window and position read-outs of one ``logit_lens`` call (on the stack's device)."""

    topk_ids: Int[Tensor, "lens batch pos k"]
    topk_probs: Float[Tensor, "lens batch pos k"]
    entropy: Float[Tensor, "lens batch pos"]  # nats
    kl: Float[Tensor, "lens batch pos"]  # KL(final || lens), nats; 0 on the final lens
    agreement: Bool[Tensor, "lens batch pos"]  # argmax equals the final lens' argmax
    ranks: Int[Tensor, "lens batch pos"] | None = None  # of ``targets``; 0 where no target
    watch_ranks: Int[Tensor, "lens batch pos w"] | None = None

    def window(self, b: int, length: int | None = None) -> LensOutput:
        """Window ``b`` alone (batch axis kept, size 1), trimmed to its first ``length`` positions."""
        sl = (slice(None), slice(b, b + 1), slice(0, length))
        return LensOutput(
            self.topk_ids[sl], self.topk_probs[sl], self.entropy[sl], self.kl[sl],
            self.agreement[sl], None if self.ranks is None else self.ranks[sl],
            None if self.watch_ranks is None else self.watch_ranks[sl],
        )


def chunk_sizes(n_lens: int, n_rows: int, vocab: int, budget_bytes: int) -> tuple[int, int]:
    """(positions, lenses) per chunk so the transient ``[lens, positions, vocab]`` fits the budget.

    Each (lens, position) row costs ~``_ROW_COPIES`` fp32 vocab vectors while it is read out; each
    position also holds the final lens' log-probabilities and probabilities (two more vectors).
    All lenses go in one chunk when at least ``min(n_rows, 64)`` positions still fit; otherwise
    fewer lenses per chunk keep the chunk that wide.

    >>> chunk_sizes(13, 1024, 50_000, 256 * 2**20)
    (74, 4)
    >>> chunk_sizes(3, 10, 257, 256 * 2**20)
    (10, 3)
    """
    row = _ROW_COPIES * 4 * vocab
    held = 2 * 4 * vocab
    want = min(n_rows, 64)
    lenses = n_lens
    if budget_bytes // (held + lenses * row) < want:
        lenses = max(1, min(n_lens, (budget_bytes // want - held) // row))
    positions = max(1, min(n_rows, budget_bytes // (held + lenses * row)))
    return positions, lenses


def logit_lens(
    stack: Float[Tensor, "lens batch pos d_model"],
    unembed: Unembed,
    *,
    mode: str = "final_ln",  # a Mode; checked with a clear ValueError
    k: int = 10,
    targets: Int[Tensor, "batch pos"] | None = None,
    watch: Int[Tensor, " w"] | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
) -> LensOutput:
    """Read out every lens of ``stack`` at every position; the last lens is the reference "final".

    ``targets[b, p]`` is the id whose rank is wanted at position p (e.g. ``tokens[b, p + 1]``);
    negative means none. ``watch`` ids are ranked at every lens and position.

    >>> u = Unembed(torch.randn(8, 50), None)
    >>> out = logit_lens(torch.randn(3, 2, 5, 8), u, mode="raw", k=4)
    >>> out.topk_ids.shape, out.kl[-1].abs().max().item()
    (torch.Size([3, 2, 5, 4]), 0.0)
    """
    if mode not in MODES:
        raise ValueError(f"lens mode {mode!r} is not one of {MODES}")
    n_lens, batch, pos, _ = stack.shape
    vocab = unembed.d_vocab
    if not 1 <= k <= vocab:
        raise ValueError(f"k={k} must be between 1 and the vocabulary size {vocab}")
    dev = stack.device
    rows = rearrange(stack, "lens batch pos d -> lens (batch pos) d")
    n_rows = rows.shape[1]
    flat_targets = None if targets is None else rearrange(targets, "batch pos -> (batch pos) 1")
    w = 0 if watch is None else int(watch.shape[0])

    topk_ids = torch.empty((n_lens, n_rows, k), dtype=torch.long, device=dev)
    topk_probs = torch.empty((n_lens, n_rows, k), dtype=torch.float32, device=dev)
    entropy = torch.empty((n_lens, n_rows), dtype=torch.float32, device=dev)
    kl = torch.empty((n_lens, n_rows), dtype=torch.float32, device=dev)
    agreement = torch.empty((n_lens, n_rows), dtype=torch.bool, device=dev)
    ranks = None if targets is None else torch.empty((n_lens, n_rows), dtype=torch.long, device=dev)
    watch_ranks = torch.empty((n_lens, n_rows, w), dtype=torch.long, device=dev) if w else None

    n_pos, n_grp = chunk_sizes(n_lens, n_rows, vocab, budget_bytes)
    for r0 in range(0, n_rows, n_pos):
        r = slice(r0, min(n_rows, r0 + n_pos))
        final_logits = project(rows[-1, r], unembed, mode)  # [rows, vocab]
        final_top1 = final_logits.topk(1, dim=-1).indices[..., 0]  # the same tie rule as below
        final_logp = final_logits.log_softmax(-1)
        del final_logits
        final_p = final_logp.exp()
        # sum p_f log p_f: KL(final || lens) = this - sum p_f log p_lens (no [rows, vocab] temp).
        final_neg_h = einsum(final_p, final_logp, "r v, r v -> r")
        del final_logp
        for l0 in range(0, n_lens, n_grp):
            ls = slice(l0, min(n_lens, l0 + n_grp))
            logits = project(rows[ls, r], unembed, mode)  # [lenses, rows, vocab]
            vals, ids = logits.topk(k, dim=-1)
            topk_ids[ls, r] = ids
            agreement[ls, r] = ids[..., 0] == final_top1
            if flat_targets is not None:
                tgt = flat_targets[r].expand(logits.shape[0], -1, -1)
                ranks[ls, r] = target_ranks(logits, tgt)[..., 0]
            if w:
                wid = watch.to(dev).expand(*logits.shape[:2], w)
                watch_ranks[ls, r] = target_ranks(logits, wid)
            # Softmax statistics from logits shifted by their max (= vals[..., 0]); with
            # z' = z - max, s = sum exp z': log p = z' - log s, H = log s - sum p z',
            # sum p_f log p = sum p_f z' - log s. Two [lenses, rows, vocab] tensors at most.
            shifted = logits - vals[..., :1]
            del logits
            p = shifted.exp()
            s = p.sum(-1, keepdim=True)
            log_s = s.log()
            p.div_(s)
            topk_probs[ls, r] = (vals - vals[..., :1] - log_s).exp()
            log_s = log_s[..., 0]
            entropy[ls, r] = log_s - einsum(p, shifted, "l r v, l r v -> l r")
            del p
            cross = einsum(shifted, final_p, "l r v, r v -> l r") - log_s
            kl[ls, r] = (final_neg_h - cross).clamp_(min=0.0)
            del shifted
        # Exactly, whatever the rounding of the two projections of the final lens.
        kl[-1, r] = 0.0
        agreement[-1, r] = True

    def unflat(x: Tensor | None, pattern: str) -> Tensor | None:
        return None if x is None else rearrange(x, pattern, batch=batch, pos=pos)

    return LensOutput(
        unflat(topk_ids, "l (batch pos) k -> l batch pos k"),
        unflat(topk_probs, "l (batch pos) k -> l batch pos k"),
        unflat(entropy, "l (batch pos) -> l batch pos"),
        unflat(kl, "l (batch pos) -> l batch pos"),
        unflat(agreement, "l (batch pos) -> l batch pos"),
        unflat(ranks, "l (batch pos) -> l batch pos"),
        unflat(watch_ranks, "l (batch pos) w -> l batch pos w"),
    )


def next_token_targets(
    tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]
) -> Int[Tensor, "batch pos"]:
    """``tokens[b, p + 1]`` where both p and p + 1 are real positions, else -1 (teacher forcing).

    >>> next_token_targets(torch.tensor([[5, 6, 7]]), torch.tensor([[True, True, False]]))
    tensor([[ 6, -1, -1]])
    """
    nxt = torch.full_like(tokens, -1)
    valid = mask[:, :-1] & mask[:, 1:]
    nxt[:, :-1] = torch.where(valid, tokens[:, 1:], torch.full_like(tokens[:, 1:], -1))
    return nxt
