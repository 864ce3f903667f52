"""Memory plans: what a pass or a build will hold, checked before anything runs.

- ``plan(model, hooks, batch, seq)``: the bytes each hook holds per batch (``MemoryPlan``),
  counting tensors that share storage once (e.g. ``resid_post`` of block l and ``resid_pre`` of
  l+1), from a probe forward at a small shape.
- ``check_fits(nbytes, device)``: refuse, with the ways out, what would not fit in 80% of the
  free memory of a device (``available_bytes``); ``human_bytes`` for the messages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workbench.errors import WorkbenchError


@dataclass
class MemoryPlan:
    per_hook: dict[str, int]
    unique_bytes: int
    shared: dict[str, str] = field(default_factory=dict)  # hook → hook whose storage it shares

    def __str__(self) -> str:
        rows = [f"{k}: {v / 2**20:.2f} MiB" for k, v in self.per_hook.items()]
        return "\n".join(rows + [f"total (unique storage): {self.unique_bytes / 2**20:.2f} MiB"])


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def human_bytes(n: int) -> str:
    """``3 * 2**30`` → ``"3.00 GiB"``; small sizes in MiB / KiB so they never read as 0.00 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def check_fits(nbytes: int, device: torch.device, limit: int | None = None,
               fraction: float = 0.8, what: str = "its sums") -> None:
    """Refuse (with the ways out) when the AMAP states would not fit in memory."""
    budget = limit if limit is not None else int(available_bytes(device) * fraction)
    if nbytes <= budget:
        return
    raise WorkbenchError(
        f"the AMAP needs about {human_bytes(nbytes)} for {what} on {device}, but only "
        f"{human_bytes(budget)} is available; reduce it: fewer layers (--layers 0,1), one "
        "mode (--modes input), sums in host memory while the model runs on the GPU "
        "(--sum-device cpu), or less data per build (--shard i/n, merged with `amap merge`)"
    )


def plan(model, hooks: Sequence[str], batch: int, seq: int, need_logits: bool = False) -> MemoryPlan:
    """Bytes each hook holds for a (batch, seq) forward, from a probe run at a small shape.

    The probe uses batch 1 and a probe length that matches no model dimension; every axis of the
    probe length scales to ``seq`` (attention patterns scale quadratically), axis 0 to ``batch``.
    """
    from workbench.capture import _check_hooks, _stop_layer, forward

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
