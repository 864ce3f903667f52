"""Capture: run a model over token windows and hand each batch's activations to reducers.

1. ``hooks = resid_hooks(model)`` (or any TransformerLens hook names).
2. ``for batch in stream(model, windows, hooks): acc.update(batch.acts[...], batch.mask)``
   or ``run(model, windows, hooks, [reducer, ...])`` with callables taking a ``Batch``.
3. Only the named hooks are kept; the forward stops after the last block a hook needs unless
   logits are asked for; everything runs under ``torch.inference_mode()``. Nothing grows with the
   dataset: a batch's activations are dropped once the reducers have seen it.
4. ``plan(model, hooks, batch, seq)`` estimates the bytes each hook holds per batch, counting
   tensors that share storage once (e.g. ``resid_post`` of block l and ``resid_pre`` of l+1).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from workbench.data import Windows
from workbench.errors import WorkbenchError

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class Batch:
    """One batch of windows with the captured activations (on the model's device)."""

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    index: Int[Tensor, " batch"]  # window indices into the Windows
    acts: dict[str, Tensor]
    logits: Tensor | None = None


@dataclass
class Throughput:
    tokens: int = 0
    seconds: float = 0.0
    batches: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class MemoryPlan:
    per_hook: dict[str, int]
    unique_bytes: int
    shared: dict[str, str] = field(default_factory=dict)  # hook → hook whose storage it shares

    def __str__(self) -> str:
        rows = [f"{k}: {v / 2**20:.2f} MiB" for k, v in self.per_hook.items()]
        return "\n".join(rows + [f"total (unique storage): {self.unique_bytes / 2**20:.2f} MiB"])


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
) -> Iterator[Batch]:
    """Yield a ``Batch`` per ``batch_size`` windows (from window ``start``)."""
    from tqdm.auto import tqdm

    _check_hooks(model, hooks)
    stop = _stop_layer(model, hooks, need_logits)
    device = next(model.parameters()).device
    stats = stats if stats is not None else Throughput()
    bar = tqdm(total=len(windows) - start, desc=desc, unit="win", disable=not progress,
               dynamic_ncols=True, leave=False)
    try:
        for first, tok, m in windows.batches(batch_size, start=start):
            t0 = time.perf_counter()
            tok, m = tok.to(device), m.to(device)
            acts, logits = forward(model, tok, m, hooks, need_logits, stop)
            idx = torch.arange(first, first + tok.shape[0])
            yield Batch(tok, m, idx, acts, logits)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats.seconds += time.perf_counter() - t0
            stats.tokens += int(m.sum())
            stats.batches += 1
            bar.update(tok.shape[0])
            bar.set_postfix(tok_s=f"{stats.tokens_per_s:,.0f}", refresh=False)
    finally:
        bar.close()


def run(model, windows: Windows, hooks: Sequence[str],
        reducers: Sequence[Callable[[Batch], None]], **kwargs) -> Throughput:
    """Feed every batch to every reducer; returns the throughput."""
    stats = kwargs.pop("stats", None) or Throughput()
    for batch in stream(model, windows, hooks, stats=stats, **kwargs):
        with torch.inference_mode():
            for reduce in reducers:
                reduce(batch)
    return stats


def plan(model, hooks: Sequence[str], batch: int, seq: int, need_logits: bool = False) -> MemoryPlan:
    """Bytes each hook holds for a (batch, seq) forward, from a probe run at a small shape.

    The probe uses batch 1 and a probe length that matches no model dimension; every axis of the
    probe length scales to ``seq`` (attention patterns scale quadratically), axis 0 to ``batch``.
    """
    _check_hooks(model, hooks)
    dims = {model.cfg.d_model, model.cfg.d_head, model.cfg.n_heads, model.cfg.d_vocab,
            getattr(model.cfg, "d_mlp", None) or 0, model.cfg.n_layers}
    probe = next(p for p in (7, 11, 13, 17, 19, 23) if p not in dims)
    device = next(model.parameters()).device
    tokens = torch.zeros((1, probe), dtype=torch.long, device=device)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    acts, logits = forward(model, tokens, mask, hooks, need_logits, _stop_layer(model, hooks, need_logits))
    if logits is not None:
        acts = {**acts, "logits": logits}
    per_hook: dict[str, int] = {}
    seen: dict[int, str] = {}
    shared: dict[str, str] = {}
    unique = 0
    for name, t in acts.items():
        shape = [batch if i == 0 else (seq if s == probe else s) for i, s in enumerate(t.shape)]
        nbytes = t.element_size() * int(torch.tensor(shape).prod())
        per_hook[name] = nbytes
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            shared[name] = seen[ptr]
        else:
            seen[ptr] = name
            unique += nbytes
    return MemoryPlan(per_hook, unique, shared)
