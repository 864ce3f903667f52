"""``Amap``: neuron activation maps (SYSIF), the mean MLP activation of each neuron per token.

1. ``amap = Amap(n_layers, d_vocab, d_mlp, modes=("input", "output"), n_positions=15)``.
2. For each batch: ``amap.update(acts, mask, {"input": tokens, "output": logits.argmax(-1)})``
   with ``acts`` the stacked ``blocks.{l}.mlp.hook_post`` activations ``[layer, batch, pos, mlp]``.
3. ``amap.merge(other)`` adds another shard; every state is a sum (fp32/fp64 sums, int64 counts),
   except ``act_max`` (elementwise max), so offline merges and an all-reduce share ``REDUCE``.
4. ``amap.compute()`` reads out ``mean.{mode}`` ``[layer, V+W, mlp]`` (NaN where the count is 0).

Keys (DESIGN.md): for layer l, neuron i and key t the state holds the sum of the activations over
every real position whose key is t, and how many positions that was. ``input``: the token at the
position; ``output``: the model's argmax prediction there; with ``n_positions=W`` the window
position k also counts under the pseudo-token ``[POS_k]`` = id ``V + k``. Padding never counts.

SYSIF kept an fp16 running mean re-rounded every batch and a dense one-hot matmul per batch: here
each batch is one ``index_add_`` per mode (O(positions · layers · d_mlp), independent of V) into
sums that are never re-rounded, and an unseen token is count 0 / mean NaN rather than 0.

>>> amap = Amap(n_layers=2, d_vocab=5, d_mlp=3, modes=("input",), n_positions=2)
>>> acts = torch.ones(2, 1, 2, 3)                                 # [layer, batch, pos, mlp]
>>> _ = amap.update(acts, torch.tensor([[True, True]]), {"input": torch.tensor([[4, 4]])})
>>> amap.state_dict()["count.input"].tolist()                     # ids 0..4, then [POS_0], [POS_1]
[0, 0, 0, 0, 2, 1, 1]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.kernels.state import Accumulator

MODES = ("input", "output")
SUM_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def estimate_bytes(n_layers: int, n_keys: int, d_mlp: int, n_modes: int,
                   dtype: torch.dtype = torch.float32) -> int:
    """Bytes the states of an ``Amap`` hold (sums dominate: layers · keys · d_mlp per mode).

    >>> estimate_bytes(6, 50304 + 15, 2048, 2) / 2**30  # pythia-70m, both modes, fp32
    4.6...
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return n_modes * (n_layers * n_keys * d_mlp * itemsize + n_keys * 8) + n_layers * d_mlp * 4


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
               fraction: float = 0.8) -> None:
    """Refuse (with the ways out) when the AMAP states would not fit in memory."""
    budget = limit if limit is not None else int(available_bytes(device) * fraction)
    if nbytes <= budget:
        return
    raise WorkbenchError(
        f"the AMAP needs {human_bytes(nbytes)} for its sums on {device}, but only "
        f"{human_bytes(budget)} is available; reduce it: fewer layers (--layers 0,1), one "
        "mode (--modes input), fp16 sums (--sum-dtype float16: less precise), or sums on the "
        "CPU while the model runs on the GPU (--sum-device cpu)"
    )


class Amap(Accumulator):
    """Per-mode sums ``[layer, V+W, mlp]`` and int64 counts ``[V+W]``, plus each unit's max."""

    def __init__(self, n_layers: int, d_vocab: int, d_mlp: int,
                 modes: Sequence[str] = ("input",), n_positions: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        bad = [m for m in modes if m not in MODES]
        if bad or not modes or len(set(modes)) != len(modes):
            raise WorkbenchError(f"modes {list(modes)}: give one or both of {', '.join(MODES)}")
        if dtype not in SUM_DTYPES.values():
            raise WorkbenchError(f"sum dtype {dtype} is not one of {', '.join(SUM_DTYPES)}")
        super().__init__()
        self.n_layers, self.d_vocab, self.d_mlp = int(n_layers), int(d_vocab), int(d_mlp)
        self.modes = tuple(modes)
        self.n_positions = int(n_positions)
        self.dtype = dtype
        device = torch.device(device)
        for m in self.modes:
            self.add_state(f"sum.{m}", torch.zeros(n_layers, self.n_keys, d_mlp, dtype=dtype,
                                                   device=device), "sum")
            self.add_state(f"count.{m}", torch.zeros(self.n_keys, dtype=torch.long, device=device),
                           "sum")
        self.add_state("act_max", torch.full((n_layers, d_mlp), -torch.inf, dtype=torch.float32,
                                             device=device), "max")

    @property
    def n_keys(self) -> int:
        return self.d_vocab + self.n_positions

    @property
    def sums(self) -> dict[str, Tensor]:
        """``{mode: [layer, key, mlp]}`` (the states themselves: in-place updates land)."""
        return {m: self.states[f"sum.{m}"] for m in self.modes}

    @property
    def counts(self) -> dict[str, Tensor]:
        return {m: self.states[f"count.{m}"] for m in self.modes}

    def position_keys(self, n_pos: int) -> Int[Tensor, " pos"]:
        """Key ids of the pseudo-tokens ``[POS_0..POS_{n_pos-1}]``."""
        if n_pos > self.n_positions:
            raise WorkbenchError(
                f"windows of {n_pos} positions but the AMAP has {self.n_positions} position "
                "pseudo-tokens; build with n_positions >= the window width"
            )
        return torch.arange(self.d_vocab, self.d_vocab + n_pos, device=self.device)

    def update(
        self,
        acts: Float[Tensor, "layer batch pos mlp"],
        mask: Bool[Tensor, "batch pos"],
        keys: Mapping[str, Int[Tensor, "batch pos"]],
        position_shift: int = 0,
    ) -> Amap:
        """Add one batch: ``keys[mode]`` is the token id keyed at each position, per mode.

        ``position_shift``: window position p counts as ``[POS_{p - shift}]`` (1 when the masked
        first position is a BOS that is no key, so ``[POS_0]`` is the first text token)."""
        if set(keys) != set(self.modes):
            raise WorkbenchError(f"update needs keys for modes {self.modes}, got {sorted(keys)}")
        dev = self.device
        mask = mask.to(dev)
        flat = rearrange(mask, "batch pos -> (batch pos)")
        vals = rearrange(acts.to(dev), "layer batch pos mlp -> layer (batch pos) mlp")[:, flat]
        if vals.shape[1]:
            torch.maximum(self.act_max, vals.float().amax(1), out=self.act_max)
        vals = vals.to(self.dtype)
        pos_keys = None
        if self.n_positions:
            pos = self.position_keys(mask.shape[1] - position_shift)
            pos = torch.cat([pos[:1].expand(position_shift), pos]) if position_shift else pos
            pos = pos.expand(mask.shape[0], -1)  # the shifted-out columns are masked
            pos_keys = rearrange(pos, "batch pos -> (batch pos)")[flat]
        for m in self.modes:
            k = rearrange(keys[m].to(dev), "batch pos -> (batch pos)")[flat]
            if k.numel() and (int(k.min()) < 0 or int(k.max()) >= self.d_vocab):
                raise WorkbenchError(
                    f"{m} key ids must be in 0..{self.d_vocab - 1} (got {int(k.min())}.."
                    f"{int(k.max())}): the AMAP was sized for another vocabulary"
                )
            total, count = self.states[f"sum.{m}"], self.states[f"count.{m}"]
            total.index_add_(1, k, vals)
            count += torch.bincount(k, minlength=self.n_keys)
            if pos_keys is not None:
                total.index_add_(1, pos_keys, vals)
                count += torch.bincount(pos_keys, minlength=self.n_keys)
        return self

    def _check_mergeable(self, other: Amap) -> None:
        mine = (self.n_layers, self.d_vocab, self.d_mlp, self.modes, self.n_positions, self.dtype)
        theirs = (other.n_layers, other.d_vocab, other.d_mlp, other.modes, other.n_positions,
                  other.dtype)
        if mine != theirs:
            raise WorkbenchError(
                f"cannot merge AMAPs of (layers, vocab, d_mlp, modes, positions, dtype) {theirs} "
                f"into {mine}: build both with the same model and settings"
            )

    def compute(self) -> dict[str, Tensor]:
        """``mean.{mode}`` [layer, V+W, mlp] fp32 or fp64 (NaN where unseen), ``count.{mode}``."""
        out: dict[str, Tensor] = {}
        for m in self.modes:
            s = self.sums[m] if self.dtype == torch.float64 else self.sums[m].float()
            c = self.counts[m].to(s.dtype)
            out[f"mean.{m}"] = s / rearrange(c, "key -> 1 key 1")  # 0/0 = NaN where unseen
            out[f"count.{m}"] = self.counts[m].clone()
        return out

    def unit_mean(self) -> Float[Tensor, "layer mlp"]:
        """Each unit's mean activation over every real position (from the token columns)."""
        m = self.modes[0]
        total = self.sums[m][:, : self.d_vocab].double().sum(1)
        return (total / self.counts[m][: self.d_vocab].sum().double()).float()

    def invariants(self, n_windows: int | None = None) -> dict[str, bool]:
        """SYSIF's sanity checks: equal token totals across modes; ``[POS_0]`` once per window."""
        totals = [int(self.counts[m][: self.d_vocab].sum()) for m in self.modes]
        out = {"token_totals_equal": len(set(totals)) <= 1}
        if self.n_positions:
            for m in self.modes:
                pos_total = int(self.counts[m][self.d_vocab :].sum())
                out[f"positions_cover_tokens.{m}"] = pos_total == totals[0]
                if n_windows is not None:
                    out[f"pos0_equals_windows.{m}"] = int(self.counts[m][self.d_vocab]) == n_windows
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor], n_positions: int, copy: bool = True) -> Amap:
        """An ``Amap`` rebuilt from its state dict (modes and sizes read off the tensors;
        ``copy=False`` adopts them, for tensors just read from an artifact)."""
        modes = tuple(m for m in MODES if f"sum.{m}" in state)
        if not modes:
            raise WorkbenchError("no sum.input / sum.output tensors: this is not an AMAP artifact")
        s = state[f"sum.{modes[0]}"]
        n_layers, n_keys, d_mlp = s.shape
        amap = cls(n_layers, n_keys - n_positions, d_mlp, modes, n_positions, s.dtype, "cpu")
        if "act_max" not in state:  # artifacts written without it still load
            state = {**state, "act_max": torch.full((n_layers, d_mlp), torch.nan)}
        return amap.load_state_dict({k: state[k] for k in amap.states}, copy=copy)
