"""``Amap``: neuron activation maps (SYSIF), the mean MLP activation of each neuron per key, sparse.

1. ``amap = Amap(n_layers, d_vocab, d_mlp, modes=("input", "output"), n_positions=15)``.
2. For each batch: ``amap.update(acts, mask, {"input": tokens, "output": logits.argmax(-1)})``
   with ``acts`` the stacked ``blocks.{l}.mlp.hook_post`` activations ``[layer, batch, pos, mlp]``.
3. ``amap.merge(other)`` folds another shard in (the union of their keys).
4. ``amap.compute()`` reads out, per mode, ``keys.{mode}`` [K], ``count.{mode}`` [K] and
   ``mean.{mode}`` [layer, K, mlp] for the K keys seen (a key never seen is absent: mean NaN).

Keys (DESIGN.md): for layer l, neuron i and key t the state holds the sum of the activations over
every real position whose key is t, and how many positions that was. ``input``: the token at the
position; ``output``: the model's argmax prediction there; with ``n_positions=W`` the window
position k also counts under the pseudo-token ``[POS_k]`` = id ``V + k``. Padding never counts.

Sparse: the states hold only the keys seen (a key → slot table grows by half as new keys come),
so memory grows with the keys seen, not the vocabulary (gemma's 262k tokens would take 36 GiB per
mode dense). Exact: sums are fp64 totals (each batch's fp32 activations added in fp64), so a key
seen 10M times keeps its mean to fp64 rounding; SYSIF's fp16 running mean stalls long before.

>>> amap = Amap(n_layers=2, d_vocab=5, d_mlp=3, modes=("input",), n_positions=2)
>>> acts = torch.ones(2, 1, 2, 3)                                 # [layer, batch, pos, mlp]
>>> _ = amap.update(acts, torch.tensor([[True, True]]), {"input": torch.tensor([[4, 4]])})
>>> s = amap.state_dict(); s["keys.input"].tolist(), s["count.input"].tolist()  # 4, [POS_0..1]
([4, 5, 6], [2, 1, 1])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.kernels.state import Accumulator

MODES = ("input", "output")
SUM_DTYPE = torch.float64
_MIN_CAPACITY = 256


def estimate_bytes(n_layers: int, n_keys: int, d_mlp: int, n_modes: int) -> int:
    """Bytes the states of an ``Amap`` holding ``n_keys`` keys per mode take (fp64 sums dominate:
    layers · keys · d_mlp · 8 per mode), with the room a growing key table keeps (up to half).

    >>> estimate_bytes(18, 20_000, 2048, 1) / 2**30  # gemma-3-270m, 20k keys seen, input mode
    8.2...
    """
    per_mode = n_layers * n_keys * d_mlp * 8 + n_keys * 16
    return int(n_modes * per_mode * 1.5) + n_layers * d_mlp * 4


class Amap(Accumulator):
    """Per mode: the keys seen ``keys.{mode}`` [K], their int64 counts [K] and fp64 sums
    [layer, K, mlp] (K grows as keys come); plus each unit's max over every position."""

    def __init__(self, n_layers: int, d_vocab: int, d_mlp: int,
                 modes: Sequence[str] = ("input",), n_positions: int = 0,
                 device: str | torch.device = "cpu"):
        bad = [m for m in modes if m not in MODES]
        if bad or not modes or len(set(modes)) != len(modes):
            raise WorkbenchError(f"modes {list(modes)}: give one or both of {', '.join(MODES)}")
        super().__init__()
        self.n_layers, self.d_vocab, self.d_mlp = int(n_layers), int(d_vocab), int(d_mlp)
        self.modes = tuple(modes)
        self.n_positions = int(n_positions)
        device = torch.device(device)
        for m in self.modes:
            self.add_state(f"keys.{m}", torch.zeros(0, dtype=torch.long, device=device), "merge")
            self.add_state(f"count.{m}", torch.zeros(0, dtype=torch.long, device=device), "merge")
            self.add_state(f"sum.{m}", torch.zeros(n_layers, 0, d_mlp, dtype=SUM_DTYPE,
                                                   device=device), "merge")
        self.add_state("act_max", torch.full((n_layers, d_mlp), -torch.inf, dtype=torch.float32,
                                             device=device), "max")
        self._adopt()

    # the key table ---------------------------------------------------------------------------

    def _adopt(self) -> None:
        """Take the states as the (full) buffers and rebuild each mode's key → slot table."""
        self._buf = {m: [self.states[f"{s}.{m}"] for s in ("keys", "count", "sum")]
                     for m in self.modes}
        self._n = {m: int(self.states[f"keys.{m}"].shape[0]) for m in self.modes}
        self._slot = {}
        for m in self.modes:
            slot = torch.full((self.n_keys,), -1, dtype=torch.long, device=self.device)
            keys = self._buf[m][0][: self._n[m]]
            slot[keys] = torch.arange(len(keys), device=self.device)
            self._slot[m] = slot

    def _sync(self, m: str) -> None:
        """Point the states at the first K slots of the buffers (views, no copies)."""
        k = self._n[m]
        keys, count, total = self._buf[m]
        self.states[f"keys.{m}"], self.states[f"count.{m}"] = keys[:k], count[:k]
        self.states[f"sum.{m}"] = total[:, :k]

    def _grow(self, m: str, need: int) -> None:
        keys, count, total = self._buf[m]
        if need <= keys.shape[0]:
            return
        cap = min(self.n_keys, max(need, keys.shape[0] * 3 // 2, _MIN_CAPACITY))
        k, dev = self._n[m], self.device
        with torch.inference_mode(False):  # states stay normal tensors when grown in a pass
            new_keys = torch.zeros(cap, dtype=torch.long, device=dev)
            new_count = torch.zeros(cap, dtype=torch.long, device=dev)
            new_total = torch.zeros(self.n_layers, cap, self.d_mlp, dtype=SUM_DTYPE, device=dev)
        new_keys[:k], new_count[:k] = keys[:k], count[:k]
        for layer in range(self.n_layers):  # one layer at a time: no second temporary
            new_total[layer, :k] = total[layer, :k]
        self._buf[m] = [new_keys, new_count, new_total]

    def slots(self, mode: str, keys: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        """The slot of each key id in ``mode``'s states, making room for the ones not seen yet."""
        slot = self._slot[mode][keys]
        new = slot < 0
        if bool(new.any()):
            fresh = torch.unique(keys[new])
            k = self._n[mode]
            self._grow(mode, k + len(fresh))
            self._buf[mode][0][k : k + len(fresh)] = fresh
            self._slot[mode][fresh] = torch.arange(k, k + len(fresh), device=self.device)
            self._n[mode] = k + len(fresh)
            self._sync(mode)
            slot = self._slot[mode][keys]
        return slot

    def lookup(self, mode: str, keys: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        """The slot of each key id in ``mode`` (-1 for a key never seen); adds nothing."""
        keys = torch.as_tensor(keys, dtype=torch.long, device=self.device)
        ok = (keys >= 0) & (keys < self.n_keys)
        out = torch.full_like(keys, -1)
        out[ok] = self._slot[mode][keys[ok]]
        return out

    def sort_(self) -> Amap:
        """Order every mode's keys by id (tokens, then ``[POS_k]``), in place, a layer at a
        time: what artifacts hold, so one pass, a resumed one and a merge write the same file."""
        for m in self.modes:
            keys, count, total = (self.states[f"{s}.{m}"] for s in ("keys", "count", "sum"))
            order = keys.argsort()
            if bool((order == torch.arange(len(order), device=order.device)).all()):
                continue
            keys.copy_(keys[order])
            count.copy_(count[order])
            for layer in range(self.n_layers):
                total[layer].copy_(total[layer][order])
            self._slot[m][keys] = torch.arange(len(keys), device=self.device)
        return self

    # the accumulator -------------------------------------------------------------------------

    @property
    def n_keys(self) -> int:
        """Size of the key id space: the vocabulary, then the ``[POS_k]`` pseudo-tokens."""
        return self.d_vocab + self.n_positions

    def keys(self, mode: str) -> Int[Tensor, " key"]:
        return self.states[f"keys.{mode}"]

    @property
    def sums(self) -> dict[str, Tensor]:
        """``{mode: [layer, K, mlp]}`` fp64 (the states themselves: in-place updates land)."""
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
        n_real = int(flat.sum())
        if not n_real:
            return self
        padded = n_real < flat.numel()  # with length batching most batches have no padding
        slots = {}
        for m in self.modes:
            k = rearrange(keys[m].to(dev), "batch pos -> (batch pos)")[flat]
            if int(k.min()) < 0 or int(k.max()) >= self.d_vocab:
                raise WorkbenchError(
                    f"{m} key ids must be in 0..{self.d_vocab - 1} (got {int(k.min())}.."
                    f"{int(k.max())}): the AMAP was sized for another vocabulary"
                )
            slots[m] = self.slots(m, k)
            self.states[f"count.{m}"].index_add_(0, slots[m], torch.ones_like(slots[m]))
        pos_slots = {}
        if self.n_positions:
            n_pos = mask.shape[1] - position_shift
            pos = self.position_keys(n_pos)
            if padded:  # every real position under its [POS_k] (the shifted-out columns are masked)
                pos = torch.cat([pos[:1].expand(position_shift), pos]) if position_shift else pos
                pos = rearrange(pos.expand(mask.shape[0], -1), "batch pos -> (batch pos)")[flat]
            else:  # no padding (so no shift): a batch's per-position sums, [POS_k] once each
                counts = torch.full((n_pos,), mask.shape[0], dtype=torch.long, device=dev)
            for m in self.modes:
                pos_slots[m] = self.slots(m, pos)
                self.states[f"count.{m}"].index_add_(
                    0, pos_slots[m], torch.ones_like(pos_slots[m]) if padded else counts)
        # a layer at a time: each layer's fp32 activations become fp64 (every addition exact
        # whatever the count) in a temporary of one layer, which stays in cache
        for layer in range(acts.shape[0]):
            a = rearrange(acts[layer].to(dev), "batch pos mlp -> (batch pos) mlp")
            a = a[flat] if padded else a
            torch.maximum(self.act_max[layer], a.amax(0).float(), out=self.act_max[layer])
            a = a.to(SUM_DTYPE)
            per_pos = None
            if pos_slots and not padded:
                per_pos = rearrange(a, "(batch pos) mlp -> batch pos mlp",
                                    batch=mask.shape[0]).sum(0)
            for m in self.modes:
                total = self.states[f"sum.{m}"][layer]
                total.index_add_(0, slots[m], a)
                if pos_slots:
                    total.index_add_(0, pos_slots[m], a if padded else per_pos)
        return self

    def expected(self, state: Mapping[str, Tensor]) -> dict[str, tuple[tuple[int, ...],
                                                                        torch.dtype]]:
        out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "act_max": ((self.n_layers, self.d_mlp), torch.float32)}
        for m in self.modes:
            k = int(state[f"keys.{m}"].shape[0]) if f"keys.{m}" in state else self._n[m]
            out |= {f"keys.{m}": ((k,), torch.long), f"count.{m}": ((k,), torch.long),
                    f"sum.{m}": ((self.n_layers, k, self.d_mlp), SUM_DTYPE)}
        return out

    def _check_loaded(self, state: dict[str, Tensor]) -> None:
        for m in self.modes:
            keys, count = state[f"keys.{m}"], state[f"count.{m}"]
            if keys.numel() and (int(keys.min()) < 0 or int(keys.max()) >= self.n_keys
                                 or len(torch.unique(keys)) != len(keys)):
                raise WorkbenchError(f"keys.{m} must be distinct ids in 0..{self.n_keys - 1}")
            if count.numel() and int(count.min()) <= 0:
                raise WorkbenchError(f"count.{m} holds counts <= 0 (a key kept but never seen)")

    def load_state_dict(self, state: Mapping[str, Tensor], copy: bool = True) -> Amap:
        super().load_state_dict(state, copy)
        self._adopt()
        return self

    def reset(self) -> Amap:
        super().reset()
        self._adopt()
        return self

    def to(self, device: torch.device | str) -> Amap:
        super().to(device)
        self._adopt()
        return self

    def signature(self) -> dict[str, int]:
        """Sizes two copies must share to merge (checked across ranks before a reduce)."""
        return {"n_layers": self.n_layers, "d_vocab": self.d_vocab, "d_mlp": self.d_mlp,
                "n_positions": self.n_positions, "modes": sum(1 << MODES.index(m)
                                                              for m in self.modes)}

    def _check_mergeable(self, other: Amap) -> None:
        mine = (self.n_layers, self.d_vocab, self.d_mlp, self.modes, self.n_positions)
        theirs = (other.n_layers, other.d_vocab, other.d_mlp, other.modes, other.n_positions)
        if type(other) is not type(self) or mine != theirs:
            raise WorkbenchError(
                f"cannot merge AMAPs of (layers, vocab, d_mlp, modes, positions) {theirs} "
                f"into {mine}: build both with the same model and settings"
            )

    def _merge(self, other: Amap) -> None:
        """The union of both key sets; counts and sums added (act_max is maxed by the base)."""
        for m in self.modes:
            keys = other.keys(m).to(self.device)
            if not len(keys):
                continue
            slot = self.slots(m, keys)
            self.states[f"count.{m}"].index_add_(0, slot, other.counts[m].to(self.device))
            theirs = other.sums[m]
            for layer in range(self.n_layers):
                self.states[f"sum.{m}"][layer].index_add_(0, slot, theirs[layer].to(self.device))

    def compute(self) -> dict[str, Tensor]:
        """Per mode ``keys.{mode}`` [K], ``count.{mode}`` [K], ``mean.{mode}`` [layer, K, mlp] fp64."""
        out: dict[str, Tensor] = {}
        for m in self.modes:
            out[f"keys.{m}"] = self.keys(m).clone()
            out[f"count.{m}"] = self.counts[m].clone()
            out[f"mean.{m}"] = self.sums[m] / rearrange(self.counts[m].to(SUM_DTYPE),
                                                        "key -> 1 key 1")
        return out

    def token_weights(self, mode: str) -> Tensor:
        """1.0 for each of ``mode``'s keys that is a vocabulary token, 0.0 for ``[POS_k]``."""
        return (self.keys(mode) < self.d_vocab).to(SUM_DTYPE)

    def unit_mean(self) -> Float[Tensor, "layer mlp"]:
        """Each unit's mean activation over every real position (from the token keys)."""
        m = self.modes[0]
        w = self.token_weights(m)
        total = torch.einsum("lkd,k->ld", self.sums[m], w)
        return (total / (self.counts[m].to(SUM_DTYPE) * w).sum()).float()

    def invariants(self, n_windows: int | None = None) -> dict[str, bool]:
        """SYSIF's sanity checks: equal token totals across modes; ``[POS_0]`` once per window."""
        return invariants(self.states, self.modes, self.d_vocab, self.n_positions, n_windows)

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor], d_vocab: int, n_positions: int,
                   copy: bool = True) -> Amap:
        """An ``Amap`` rebuilt from its state dict (modes and sizes read off the tensors;
        ``copy=False`` adopts them, for tensors just read from an artifact). A dense v1 state
        (``sum.{mode}`` over every key id, no ``keys.{mode}``) is converted to the sparse form."""
        modes = tuple(m for m in MODES if f"sum.{m}" in state)
        if not modes:
            raise WorkbenchError("no sum.input / sum.output tensors: this is not an AMAP artifact")
        if any(f"keys.{m}" not in state for m in modes):
            state = dense_to_sparse(state, modes)
        n_layers, _, d_mlp = state[f"sum.{modes[0]}"].shape
        amap = cls(n_layers, d_vocab, d_mlp, modes, n_positions, "cpu")
        if "act_max" not in state:  # artifacts written without it still load
            state = {**state, "act_max": torch.full((n_layers, d_mlp), torch.nan)}
        return amap.load_state_dict({k: state[k] for k in amap.states}, copy=copy)


def invariants(state: Mapping[str, Tensor], modes: Sequence[str], d_vocab: int,
               n_positions: int, n_windows: int | None = None) -> dict[str, bool]:
    """SYSIF's sanity checks on the ``keys.{mode}`` / ``count.{mode}`` of a state: every mode
    counts the same token positions; with positions, ``[POS_k]`` keys count each of them once
    and ``[POS_0]`` once per window."""
    keys = {m: state[f"keys.{m}"] for m in modes}
    counts = {m: state[f"count.{m}"] for m in modes}
    tok = {m: keys[m] < d_vocab for m in modes}
    totals = [int(counts[m][tok[m]].sum()) for m in modes]
    out = {"token_totals_equal": len(set(totals)) <= 1}
    if n_positions:
        for m in modes:
            out[f"positions_cover_tokens.{m}"] = int(counts[m][~tok[m]].sum()) == totals[0]
            if n_windows is not None:
                first = int(counts[m][keys[m] == d_vocab].sum())
                out[f"pos0_equals_windows.{m}"] = first == n_windows
    return out


def dense_to_sparse(state: Mapping[str, Tensor], modes: Sequence[str]) -> dict[str, Tensor]:
    """A v1 (dense) AMAP state in the v2 (sparse) form: the keys with a count > 0, fp64 sums."""
    out = dict(state)
    for m in modes:
        count, total = state[f"count.{m}"], state[f"sum.{m}"]
        if count.ndim != 1 or total.ndim != 3 or total.shape[1] != count.shape[0]:
            raise WorkbenchError(f"sum.{m} {tuple(total.shape)} and count.{m} "
                                 f"{tuple(count.shape)} do not fit together")
        keys = torch.nonzero(count > 0).reshape(-1)
        out[f"keys.{m}"], out[f"count.{m}"] = keys, count[keys]
        out[f"sum.{m}"] = total[:, keys].to(SUM_DTYPE)
    return out
