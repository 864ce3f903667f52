"""Capture: the engine. One streaming pass over token windows feeds every reducer.

1. ``hooks = resid_hooks(model)`` (or any TransformerLens hook names).
2. ``for batch in stream(model, windows, hooks): acc.update(batch.acts[...], batch.mask)``, or
   ``run(model, windows, [reducer, ...])``: the union of the reducers' hooks, one forward per
   batch (stopped after the last block a hook needs unless a reducer needs logits), every
   reducer folding each batch into its accumulators (see ``Reducer``).
3. Batches are built by length (``batch_plan``: longest windows first, so a batch's windows are
   of about one length and little of what is forwarded is padding); ``Batch.index`` holds global
   window ids (the shard's offset added), so nothing a reducer keeps depends on the batching.
4. ``run`` checkpoints every reducer's states (every ``checkpoint_every`` batches or
   ``checkpoint_seconds``) and resumes them byte-identically; under ``torchrun`` it reduces them
   across processes (``workbench.distributed``) once every rank has run its slice.
5. ``workbench.memory.plan(model, hooks, batch, seq)`` estimates the bytes each hook holds per
   batch, counting tensors that share storage once.

Everything runs under ``torch.inference_mode()``; a batch's activations are dropped once the
reducers have seen it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from workbench.data import Windows
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.distributed import DistContext
    from workbench.kernels.state import Accumulator

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class Batch:
    """One batch of windows with the captured activations (on the model's device)."""

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    index: Int[Tensor, " batch"]  # global window ids (index into the Windows + the offset)
    acts: dict[str, Tensor]
    logits: Tensor | None = None


@dataclass
class Throughput:
    tokens: int = 0  # real positions forwarded
    seconds: float = 0.0
    batches: int = 0
    forwarded: int = 0  # positions forwarded, padding included

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def padding_share(self) -> float:
        return 1 - self.tokens / self.forwarded if self.forwarded else 0.0

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds, "tokens_per_s": self.tokens_per_s,
                "batches": self.batches, "padding_share": round(self.padding_share, 4)}


@runtime_checkable
class Reducer(Protocol):
    """What the engine needs of a corpus analysis.

    ``name`` prefixes its states in a checkpoint; ``hooks`` are the activations it reads;
    ``need_logits`` asks for the full forward; ``accumulators()`` are its states (declared on
    ``workbench.kernels.state.Accumulator``: checkpointed, reduced across processes and merged
    offline by the engine); ``update(batch)`` folds one batch in. After the pass the analysis's
    reducers turn their accumulators into its result with ``finish()`` (not called by the
    engine: a torchrun rank or a shard finishes with what it needs).
    """

    name: str
    hooks: Sequence[str]
    need_logits: bool

    def accumulators(self) -> dict[str, Accumulator]: ...

    def update(self, batch: Batch) -> None: ...


class CaptureInterrupted(WorkbenchError):
    """The pass stopped early on purpose (``max_batches``); its checkpoint can be resumed."""


def n_layers(model) -> int:
    return int(model.cfg.n_layers)


def resid_hooks(model) -> list[str]:
    """DESIGN.md's L+1 hidden states: ``emb`` = resid_pre of block 0, then resid_post of each.

    BERT-style encoders are post-LN: a block's output (what HF calls its hidden state and what
    the next block reads) is ``hook_normalized_resid_post``, so that hook is used for them.
    """
    post = "hook_normalized_resid_post" if is_encoder(model) else "hook_resid_post"
    return ["blocks.0.hook_resid_pre"] + [
        f"blocks.{layer}.{post}" for layer in range(n_layers(model))
    ]


def layer_labels(model) -> list[str]:
    """``["emb", "h.0", ..., "h.{L-1}"]``, ordered numerically."""
    return ["emb"] + [f"h.{layer}" for layer in range(n_layers(model))]


def mlp_hooks(model, layers: Sequence[int] | None = None) -> list[str]:
    layers = range(n_layers(model)) if layers is None else layers
    return [f"blocks.{layer}.mlp.hook_post" for layer in layers]


def is_encoder(model) -> bool:
    return getattr(model.cfg, "attention_dir", "causal") == "bidirectional"


def _check_hooks(model, hooks: Sequence[str]) -> None:
    known = model.hook_dict
    missing = [h for h in hooks if h not in known]
    if missing:
        raise WorkbenchError(
            f"hook(s) {missing} do not exist in {model.cfg.model_name}; "
            f"e.g. {list(known)[:4]} (see model.hook_dict)"
        )


def _stop_layer(model, hooks: Sequence[str], need_logits: bool) -> int | None:
    if need_logits or is_encoder(model):
        return None
    deepest = -1
    for h in hooks:
        m = _BLOCK.match(h)
        if m is None:
            return None  # ln_final / unembed hooks need the whole model
        deepest = max(deepest, int(m.group(1)))
    stop = deepest + 1
    return None if stop >= n_layers(model) and not hooks else stop


def forward(model, tokens: Tensor, mask: Tensor, hooks: Sequence[str], need_logits: bool = False,
            stop_at_layer: int | None = None) -> tuple[dict[str, Tensor], Tensor | None]:
    """One forward pass keeping only ``hooks``; returns (activations, logits or None)."""
    acts: dict[str, Tensor] = {}

    def keep(tensor: Tensor, hook) -> None:
        acts[hook.name] = tensor

    fwd = [(h, keep) for h in hooks]
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd):
        if is_encoder(model):
            out = model(tokens, one_zero_attention_mask=mask.long())
        else:
            # Right padding under causal attention never reaches a real position: no mask needed.
            out = model(tokens, stop_at_layer=stop_at_layer)
    logits = out if need_logits else None
    return acts, logits


def batch_plan(windows: Windows, batch_size: int) -> list[Int[Tensor, " b"]]:
    """Window indices of each batch: longest windows first (ties in window order), ``batch_size``
    per batch, so each batch is trimmed to about its windows' own length. A pure function of the
    windows and the batch size (resume relies on it).

    >>> w = Windows(torch.zeros(4, 3, dtype=torch.long), torch.tensor([[1, 0, 0], [1, 1, 1],
    ...     [1, 1, 0], [1, 1, 1]]).bool(), torch.zeros(4, dtype=torch.long),
    ...     torch.zeros(4, dtype=torch.long), 3, 3, False, 0, "", "")
    >>> [b.tolist() for b in batch_plan(w, 2)]
    [[1, 3], [2, 0]]
    """
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    lengths = windows.mask.sum(1)
    order = torch.sort(-lengths, stable=True).indices
    return list(order.split(batch_size))


def padding_share(windows: Windows, plan: Sequence[Tensor]) -> float:
    """Share of the positions a plan forwards that are padding."""
    lengths = windows.mask.sum(1)
    forwarded = sum(int(lengths[b].max()) * len(b) for b in plan if len(b))
    return 1 - int(lengths.sum()) / forwarded if forwarded else 0.0


def stream(
    model,
    windows: Windows,
    hooks: Sequence[str],
    batch_size: int = 8,
    need_logits: bool = False,
    progress: bool = True,
    desc: str = "capture",
    start: int = 0,
    stats: Throughput | None = None,
    plan: Sequence[Tensor] | None = None,
    window_offset: int = 0,
) -> Iterator[Batch]:
    """Yield a ``Batch`` per batch of ``plan`` (default: ``batch_size`` windows in window order),
    from batch ``start``; ``window_offset`` is added to ``Batch.index`` (a shard's first id)."""
    from tqdm.auto import tqdm

    _check_hooks(model, hooks)
    if plan is None:
        if batch_size < 1:
            raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
        plan = list(torch.arange(len(windows)).split(batch_size))
    stop = _stop_layer(model, hooks, need_logits)
    device = next(model.parameters()).device
    stats = stats if stats is not None else Throughput()
    bar = tqdm(total=sum(len(b) for b in plan[start:]), desc=desc, unit="win",
               disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for idx in plan[start:]:
            t0 = time.perf_counter()
            m = windows.mask[idx]
            width = int(m.sum(1).max()) if m.numel() else 0
            tok, m = windows.tokens[idx, :width].to(device), m[:, :width].to(device)
            acts, logits = forward(model, tok, m, hooks, need_logits, stop)
            yield Batch(tok, m, idx + window_offset, acts, logits)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats.seconds += time.perf_counter() - t0
            stats.tokens += int(m.sum())
            stats.forwarded += m.numel()
            stats.batches += 1
            bar.update(len(idx))
            bar.set_postfix(tok_s=f"{stats.tokens_per_s:,.0f}", refresh=False)
    finally:
        bar.close()


def states_of(reducers: Sequence[Reducer]) -> dict[str, Tensor]:
    """Every reducer's accumulator states as ``{reducer}.{accumulator}.{state}`` keys: the live
    tensors, not copies (a checkpoint write then holds no second copy of the states)."""
    return {f"{r.name}.{a}.{k}": v for r in reducers for a, acc in r.accumulators().items()
            for k, v in acc.states.items()}


def load_states(reducers: Sequence[Reducer], state: dict[str, Tensor]) -> None:
    """Load ``states_of``'s keys back into the reducers' accumulators (every key checked)."""
    for r in reducers:
        for a, acc in r.accumulators().items():
            prefix = f"{r.name}.{a}."
            acc.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix)})


def run(
    model,
    windows: Windows,
    reducers: Sequence[Reducer],
    *,
    batch_size: int = 8,
    progress: bool = True,
    desc: str | None = None,
    window_offset: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_name: str = "capture",
    fingerprint: str | None = None,
    resume: bool = False,
    checkpoint_every: int = 50,
    checkpoint_seconds: float = 300.0,
    max_batches: int | None = None,
    ctx: DistContext | None = None,
) -> Throughput:
    """One pass of ``windows`` through ``model`` feeding every reducer; returns the throughput.

    ``checkpoint_dir``: save every reducer's states there every ``checkpoint_every`` batches or
    ``checkpoint_seconds`` (whichever comes first), as ``{checkpoint_name}.ckpt.safetensors``,
    under ``fingerprint`` (``workbench.identity``); ``resume`` continues from it, and ends
    byte-identical to an uninterrupted pass. ``max_batches`` stops after that many batches of
    this run (``CaptureInterrupted``), as a kill would. ``ctx``: under torchrun, the states are
    reduced across the processes after the pass (every rank ends with the whole).
    """
    from workbench import checkpoint as ckpt

    if not reducers:
        raise WorkbenchError("give at least one reducer")
    hooks = list(dict.fromkeys(h for r in reducers for h in r.hooks))
    need_logits = any(r.need_logits for r in reducers)
    batches = batch_plan(windows, batch_size)
    done_after = [0]
    for b in batches:
        done_after.append(done_after[-1] + len(b))
    start = 0
    if checkpoint_dir is not None and ctx is not None and ctx.is_distributed:
        ckpt.check_world(checkpoint_dir, checkpoint_name, ctx.world)
        checkpoint_dir = ckpt.where(checkpoint_dir, ctx)  # each rank resumes its own slice
    if checkpoint_dir is not None and ckpt.exists(checkpoint_dir, checkpoint_name):
        where = ckpt.path(checkpoint_dir, checkpoint_name)
        if not resume:
            raise WorkbenchError(f"{checkpoint_dir} holds a partial build ({where.name}); pass "
                                 f"--resume to continue it, or delete {where} to start over")
        state, start = ckpt.load(checkpoint_dir, checkpoint_name, str(fingerprint), batch_size,
                                 len(batches), done_after)
        try:
            load_states(reducers, state)
        except WorkbenchError as exc:
            from workbench.artifacts import damaged

            raise damaged(where, f"its states do not fit this build ({exc})",
                          ckpt.START_OVER) from None
    stats = Throughput()
    this_run, last_save = 0, time.monotonic()
    names = "+".join(r.name for r in reducers)
    for i, batch in enumerate(stream(model, windows, hooks, batch_size, need_logits, progress,
                                     desc or names, start, stats, batches, window_offset),
                              start=start):
        with torch.inference_mode():
            for r in reducers:
                r.update(batch)
        this_run += 1
        due = (i + 1) % checkpoint_every == 0 or time.monotonic() - last_save >= checkpoint_seconds
        if checkpoint_dir is not None and due and i + 1 < len(batches):
            ckpt.save(checkpoint_dir, checkpoint_name, states_of(reducers), i + 1,
                      done_after[i + 1], batch_size, str(fingerprint))
            last_save = time.monotonic()
        if max_batches is not None and this_run >= max_batches and i + 1 < len(batches):
            raise CaptureInterrupted(f"stopped after {this_run} batches (max_batches); continue "
                                     "with --resume")
    if ctx is not None and ctx.is_distributed:
        for r in reducers:
            accs = r.accumulators()
            ctx.reduce_all(accs)  # in place: every rank now holds the whole
    return stats


def run_reducer(model, windows: Windows, reducer: Reducer, *, batch_size: int = 8,
                progress: bool = True, shard: tuple[int, int] | None = None,
                ctx: DistContext | None = None, **options) -> tuple[Throughput, Windows, int]:
    """One analysis's pass: its slice of ``windows`` (``shard`` or this torchrun rank's), run
    with checkpoints named after the reducer under the one identity rule (``workbench.identity``:
    model, data, the reducer's ``settings``; + batch size, shard offset and process count, which
    a resume must replay). Returns the throughput, the slice and its first window id."""
    from workbench import artifacts, identity
    from workbench.sharding import local_part

    part, offset = local_part(windows, shard, ctx)
    world = ctx.world if ctx is not None else 1
    meta = artifacts.run_metadata(model, windows, **reducer.settings)
    fp = identity.fingerprint(meta, batch_size=batch_size, window_offset=offset, processes=world)
    stats = run(model, part, [reducer], batch_size=batch_size, progress=progress,
                desc=reducer.name, window_offset=offset, checkpoint_name=reducer.name,
                fingerprint=fp, ctx=ctx, **options)
    return stats, part, offset
