"""``TopWindows``: the k windows that activate each unit most (its max-activating contexts).

1. ``top = TopWindows(n_layers, d_mlp, k=8)``.
2. For each batch: ``top.update(acts, mask, window_ids)``; a window's score for a unit is the unit's
   largest activation over the window's real positions (one window counts once per unit).
3. ``top.merge(other)`` keeps the best k of both (bottom-k selection: REDUCE ``"merge"``).
4. ``top.compute()`` → ``values`` / ``windows`` / ``positions`` ``[layer, mlp, k]``, best first;
   slots never filled hold value -inf and window -1.

Equal scores are ordered by window id, so the selection does not depend on batching or merge order.

>>> top = TopWindows(n_layers=1, d_mlp=2, k=1)
>>> acts = torch.tensor([[[[1.0, 0.0], [3.0, -1.0]]]])            # [layer, batch, pos, mlp]
>>> _ = top.update(acts, torch.tensor([[True, True]]), torch.tensor([7]))
>>> top.compute()["positions"].tolist()                           # unit 0 peaks at pos 1
[[[1], [0]]]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.kernels.state import checked_state

STATES = ("values", "windows", "positions")


class TopWindows:
    REDUCE = {"values": "merge", "windows": "merge", "positions": "merge"}

    def __init__(self, n_layers: int, d_mlp: int, k: int = 8, device: str | torch.device = "cpu"):
        self.n_layers, self.d_mlp, self.k = int(n_layers), int(d_mlp), int(k)
        shape = (self.n_layers, self.d_mlp, self.k)
        self.values = torch.full(shape, -torch.inf, dtype=torch.float32, device=device)
        self.windows = torch.full(shape, -1, dtype=torch.long, device=device)
        self.positions = torch.full(shape, -1, dtype=torch.long, device=device)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def _keep_best(self, values: Tensor, windows: Tensor, positions: Tensor) -> None:
        # Equal maxima are common (a causal model's position 0 sees only its own token): order
        # ties by window id so that any batching or merge order selects the same windows.
        by_window = windows.argsort(dim=-1, stable=True)
        values, windows, positions = (t.gather(-1, by_window) for t in (values, windows, positions))
        idx = values.sort(dim=-1, descending=True, stable=True).indices[..., : self.k]
        self.values = values.gather(-1, idx)
        self.windows = windows.gather(-1, idx)
        self.positions = positions.gather(-1, idx)

    def update(
        self,
        acts: Float[Tensor, "layer batch pos mlp"],
        mask: Bool[Tensor, "batch pos"],
        window_ids: Int[Tensor, " batch"],
    ) -> TopWindows:
        dev = self.device
        a = acts.to(dev).float()
        neg = torch.tensor(-torch.inf, device=dev)
        a = torch.where(rearrange(mask.to(dev), "batch pos -> 1 batch pos 1"), a, neg)
        best, pos = a.max(dim=2)  # [layer, batch, mlp]
        best = rearrange(best, "layer batch mlp -> layer mlp batch")
        pos = rearrange(pos, "layer batch mlp -> layer mlp batch")
        win = window_ids.to(dev).expand(self.n_layers, self.d_mlp, -1)
        self._keep_best(torch.cat([self.values, best], -1), torch.cat([self.windows, win], -1),
                        torch.cat([self.positions, pos], -1))
        return self

    def merge(self, other: TopWindows) -> TopWindows:
        if (other.n_layers, other.d_mlp, other.k) != (self.n_layers, self.d_mlp, self.k):
            raise ValueError(
                f"cannot merge top windows of shape {(other.n_layers, other.d_mlp, other.k)} into "
                f"{(self.n_layers, self.d_mlp, self.k)}: build both with the same model and k"
            )
        o = {n: getattr(other, n).to(self.device) for n in STATES}
        self._keep_best(torch.cat([self.values, o["values"]], -1),
                        torch.cat([self.windows, o["windows"]], -1),
                        torch.cat([self.positions, o["positions"]], -1))
        return self

    def compute(self) -> dict[str, Tensor]:
        return self.state_dict()

    def state_dict(self) -> dict[str, Tensor]:
        return {n: getattr(self, n).clone() for n in STATES}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> TopWindows:
        shape = (self.n_layers, self.d_mlp, self.k)
        expected = {"values": (shape, torch.float32), "windows": (shape, torch.long),
                    "positions": (shape, torch.long)}
        for name, t in checked_state("TopWindows", dict(state), expected, self.device).items():
            setattr(self, name, t)
        return self

    def to(self, device: str | torch.device) -> TopWindows:
        for n in STATES:
            setattr(self, n, getattr(self, n).to(device))
        return self
