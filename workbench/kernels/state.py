"""What every accumulator shares: how its states reduce across processes, and loading them safely.

Each accumulator class declares ``REDUCE``: state name → how two copies of that state combine:

- ``"sum"`` / ``"max"`` / ``"min"``: elementwise (``all_reduce`` with that op);
- ``"merge"``: the state only combines together with the others through the class's ``merge``
  (e.g. Chan's formulas for count, mean and co-moment, or a bottom-k selection): gather every
  rank's ``state_dict``, rebuild with ``load_state_dict`` and fold them with ``merge``.

A single process merging two accumulators and N processes reducing them therefore share one code
path: ``merge``.
"""

from __future__ import annotations

import torch

from workbench.errors import WorkbenchError

REDUCE_OPS = ("sum", "max", "min", "merge")


def checked_state(owner: str, state: dict[str, torch.Tensor],
                  expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
                  device: torch.device) -> dict[str, torch.Tensor]:
    """``state`` copied onto ``device`` after checking its keys, shapes and dtypes."""
    if set(state) != set(expected):
        raise WorkbenchError(
            f"{owner} state has keys {sorted(state)}, expected {sorted(expected)}; "
            "load a state_dict written by the same accumulator class"
        )
    out = {}
    for name, (shape, dtype) in expected.items():
        t = state[name]
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise WorkbenchError(
                f"{owner} state {name!r} is {tuple(t.shape)} {t.dtype}, expected {tuple(shape)} "
                f"{dtype}; the accumulator was built with different sizes than the saved one"
            )
        out[name] = t.detach().to(device=device, copy=True)
    return out
