"""The accumulator base: each state declared once, everything else follows from the declaration.

In the spirit of torchmetrics' ``add_state``::

    class Count(Accumulator):
        def __init__(self, n, device=None):
            super().__init__()
            self.add_state("total", torch.zeros(n, dtype=torch.int64, device=device), "sum")

        def update(self, x):
            self.total += x.to(self.device)
            return self

``state_dict``, ``load_state_dict`` (keys, shapes and dtypes checked), ``reset``, ``to`` and
``merge`` come from the base. How two copies of a state combine (``REDUCE``):

- ``"sum"`` / ``"max"`` / ``"min"``: elementwise, in place (and ``all_reduce`` with that op across
  processes, ``workbench.distributed``);
- ``"merge"``: the state only combines together with the others through the class's ``_merge``
  (Chan's formulas for count, mean and co-moment; a bottom-k selection): across processes every
  rank's ``state_dict`` is gathered, rebuilt with ``load_state_dict`` and folded with ``merge``.

A single process merging two accumulators, an offline merge of shard files and N processes
reducing them therefore share one code path: ``merge``. Tensors that are not states but move with
the accumulator (histogram edges) are declared with ``add_buffer``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from workbench.errors import WorkbenchError

REDUCE_OPS = ("sum", "max", "min", "merge")


def checked_state(owner: str, state: Mapping[str, torch.Tensor],
                  expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
                  device: torch.device, copy: bool = True) -> dict[str, torch.Tensor]:
    """``state`` copied onto ``device`` after checking its keys, shapes and dtypes
    (``copy=False``: tensors already on ``device`` are taken as they are)."""
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
        out[name] = t.detach().to(device=device, copy=copy)
    return out


class Accumulator:
    """States declared with ``add_state``; subclasses write ``update``, ``compute`` and, for
    ``"merge"`` states, ``_merge``. Names with a dot (``sum.input``) live in ``self.states`` only;
    the others are attributes too."""

    def __init__(self) -> None:
        object.__setattr__(self, "states", {})
        object.__setattr__(self, "_reduce", {})
        object.__setattr__(self, "_defaults", {})
        object.__setattr__(self, "_buffers", [])

    # declaration -----------------------------------------------------------------------------

    def add_state(self, name: str, default: torch.Tensor, reduce: str) -> None:
        """Declare a state; ``default`` (a fresh tensor filled with one value, as ``torch.full``
        makes) becomes its initial tensor, and ``reset`` refills it. Only its shape, dtype and
        fill value are remembered: no second copy of a big state is kept."""
        if reduce not in REDUCE_OPS:
            raise ValueError(f"state {name!r}: reduce {reduce!r} is not one of {REDUCE_OPS}")
        fill = default.reshape(-1)[0].item() if default.numel() else 0
        self._defaults[name] = (tuple(default.shape), default.dtype, fill)
        self._reduce[name] = reduce
        self.states[name] = default.detach()

    def add_buffer(self, name: str, value: torch.Tensor) -> None:
        """A tensor that moves with ``to`` but is no state (not saved, not reduced)."""
        self._buffers.append(name)
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str):  # called only when normal lookup fails
        states = self.__dict__.get("states")
        if states is not None and name in states:
            return states[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        states = self.__dict__.get("states")
        if states is not None and name in states:
            states[name] = value
        else:
            object.__setattr__(self, name, value)

    @property
    def REDUCE(self) -> dict[str, str]:  # noqa: N802 (torchmetrics-style declaration)
        return dict(self._reduce)

    @property
    def device(self) -> torch.device:
        return next(iter(self.states.values())).device

    # what follows from the declaration -------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in self.states.items()}

    def expected(self, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...],
                                                                             torch.dtype]]:
        """Shape and dtype each saved state must have (default: those of the current states)."""
        return {n: (tuple(t.shape), t.dtype) for n, t in self.states.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], copy: bool = True):
        """Load saved states (checked against the declaration). ``copy=False`` adopts the given
        tensors (e.g. just read from a file) instead of copying them: the caller gives them up."""
        checked = checked_state(type(self).__name__, state, self.expected(state), self.device,
                                copy)
        self._check_loaded(checked)
        self.states.update(checked)
        return self

    def _check_loaded(self, state: dict[str, torch.Tensor]) -> None:
        """Refuse a state whose values (not only shapes) cannot belong here (e.g. other edges)."""

    def reset(self):
        """Back to the declared defaults (on the current device)."""
        dev = self.device
        for n, (shape, dtype, fill) in self._defaults.items():
            self.states[n] = torch.full(shape, fill, dtype=dtype, device=dev)
        return self

    def to(self, device: torch.device | str):
        for n, t in self.states.items():
            self.states[n] = t.to(device)
        for n in self._buffers:
            object.__setattr__(self, n, getattr(self, n).to(device))
        return self

    def _check_mergeable(self, other: Accumulator) -> None:
        if type(other) is not type(self):
            raise WorkbenchError(f"cannot merge a {type(self).__name__} with a "
                                 f"{type(other).__name__}")
        mine, theirs = self.expected({}), other.expected({})
        if mine != theirs:
            diff = sorted(n for n in mine if mine[n] != theirs.get(n))
            raise WorkbenchError(
                f"cannot merge {type(self).__name__} states of different sizes ({diff}: "
                f"{[theirs.get(n) for n in diff]} into {[mine[n] for n in diff]}); build both "
                "with the same model and settings")

    def merge(self, other: Accumulator):
        """Fold ``other`` in, in place: the same as having seen its data too."""
        self._check_mergeable(other)
        dev = self.device
        for n, op in self._reduce.items():
            mine, theirs = self.states[n], other.states[n].to(dev)
            if op == "sum":
                mine.add_(theirs)
            elif op == "max":
                torch.maximum(mine, theirs, out=mine)
            elif op == "min":
                torch.minimum(mine, theirs, out=mine)
        if "merge" in self._reduce.values():
            self._merge(other)
        return self

    def _merge(self, other: Accumulator) -> None:
        raise NotImplementedError(f"{type(self).__name__} declares 'merge' states but no _merge")
