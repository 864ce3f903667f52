"""Data-parallel builds on ``torch.distributed``: shard the windows by rank, reduce accumulators.

1. ``ctx = DistContext.from_env()``: under ``torchrun`` (``WORLD_SIZE > 1``) this joins the
   process group (gloo on CPU, nccl on CUDA); otherwise it is the one-process context.
2. ``mine = ctx.shard(windows)``: rank r of n takes the r-th of n contiguous, disjoint, covering
   slices (``Windows.shard``), the same slices ``--shard r/n`` builds offline.
3. Run the analysis on ``mine``, then ``ctx.reduce(acc)`` for each accumulator: afterwards every
   rank holds the accumulator of the whole data set. Rank 0 writes (``ctx.is_main``).
4. ``with ctx.guard("amap build"):`` around the rank's work turns a dead or failing rank into a
   ``RankFailedError`` on the others that names it, before anything is written.

How a state reduces is declared once, by the accumulator class (``REDUCE``, see
``workbench/kernels/state.py``): ``"sum"`` / ``"max"`` / ``"min"`` states are all-reduced
elementwise (float sums in fp64, whatever they are stored in, so the order ranks add in costs
nothing), and ``"merge"`` states (Chan moments, bottom-k samples, sparse AMAP keys and sums) are
broadcast one rank at a time and folded in rank order with the class's own ``merge``: the same
code that merges shard files offline; each rank holds its own states, the result so far and one
incoming part. Nothing is pickled: ``all_gather_object`` would pickle in transit.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from workbench.errors import WorkbenchError

ELEMENTWISE = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
DEFAULT_TIMEOUT_S = 1800  # a collective waits this long for a hung (not dead) rank
_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool]
_MAX_SIGNATURE = 8
_MAX_NDIM = 6
_CHUNK = 1 << 26  # elements per fp64 all-reduce buffer (512 MiB)
_KEY = "workbench"


class RankFailedError(WorkbenchError):
    """Another rank died or failed; this rank stops without writing anything."""


@dataclass
class DistContext:
    """Where this process sits in a data-parallel job: ``rank`` of ``world``.

    >>> ctx = DistContext.from_env()  # outside torchrun: rank 0 of 1
    >>> ctx.world, ctx.is_main
    (1, True)
    """

    rank: int = 0
    world: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")  # where collectives run: cuda:LOCAL_RANK for nccl
    owns_group: bool = False  # True when from_env initialised the group (and so tears it down)
    step: int = 0  # reduces entered so far: names this rank's "reached" marks in the store

    @property
    def is_distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world}" + (f" ({self.backend})" if self.backend else "")

    @classmethod
    def from_env(cls, device: str | torch.device | None = None,
                 timeout_s: float | None = None) -> DistContext:
        """The context of this process: an initialised group, torchrun's env, or one process.

        ``device``: the model's device; ``cuda`` picks nccl (on ``cuda:LOCAL_RANK``), anything
        else gloo. ``timeout_s`` (default ``$WORKBENCH_DIST_TIMEOUT_S`` or 1800) bounds how long
        a collective waits for a rank that hangs; a rank that dies is noticed at once on gloo.
        """
        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            dev = _comm_device(backend)
            return cls(dist.get_rank(), dist.get_world_size(), backend, dev, owns_group=False)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            raise WorkbenchError(
                f"WORLD_SIZE={world} but RANK/MASTER_ADDR are not set; launch with "
                "`torchrun --nproc-per-node N -m workbench ...` (it sets them)")
        if not dist.is_available():
            raise WorkbenchError("this torch build has no torch.distributed; run one process")
        wants_cuda = device is not None and torch.device(device).type == "cuda"
        backend = "nccl" if wants_cuda else "gloo"
        if wants_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        seconds = timeout_s or float(os.environ.get("WORKBENCH_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
        except Exception as exc:  # rendezvous errors come in many types; all mean the same
            raise WorkbenchError(
                f"could not join the process group ({backend}, rank {os.environ['RANK']} of "
                f"{world}, master {os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT')}): "
                f"{exc}; check --master-addr/--master-port and that every node can reach it"
            ) from exc
        ctx = cls(dist.get_rank(), world, backend, _comm_device(backend), owns_group=True)
        _stop_on_sigterm(ctx)
        return ctx

    # --- work splitting ---------------------------------------------------------------------

    def shard(self, windows):
        """This rank's contiguous slice of ``windows`` (the whole of it in one process)."""
        return windows.shard(self.rank, self.world) if self.is_distributed else windows

    # --- reducing ---------------------------------------------------------------------------

    def reduce(self, acc: Any) -> Any:
        """``acc`` (in place where possible) folded with every rank's copy; see the module doc."""
        if not self.is_distributed:
            return acc
        _test_hook_die(self, "reduce")
        self.step += 1
        self._mark(f"reached/{self.step}")
        spec: dict[str, str] = dict(acc.REDUCE)  # a class attribute, or a property (Amap's modes)
        # the live states, not a state_dict() clone: a big AMAP must not be held twice
        state = {n: t if t.is_contiguous() else t.contiguous() for n, t in acc.states.items()}
        if set(state) != set(spec):
            raise WorkbenchError(f"{type(acc).__name__}.REDUCE names {sorted(spec)} but its "
                                 f"states are {sorted(state)}; declare every state once")
        names = sorted(spec)
        self._check_signature(acc)
        shapes = self._gather_meta(type(acc).__name__, names, state, spec)
        reduced = {}
        for name in names:
            if spec[name] in ELEMENTWISE:
                reduced[name] = self._all_reduce(state[name], ELEMENTWISE[spec[name]])
        merge_names = [n for n in names if spec[n] == "merge"]
        if not merge_names:
            return acc.load_state_dict(reduced, copy=False)
        # Fold in rank order with the class's own merge, so the result is what an offline merge
        # of the shard files gives. One rank's states at a time (a broadcast from that rank):
        # each rank holds its own states, the result so far and one incoming part, never every
        # rank's copy. Elementwise states are already reduced: rank 0's part carries the result,
        # the others carry the identity of their op so merge adds nothing twice.
        mine = {n: state[n] for n in merge_names}
        for src in range(self.world):
            part = {n: self._broadcast(mine[n] if src == self.rank else None, shapes[n][src],
                                       mine[n].dtype, src, mine[n].device) for n in merge_names}
            for n in names:
                if spec[n] in ELEMENTWISE:
                    part[n] = reduced[n] if src == 0 else _identity(reduced[n], spec[n])
            if src == 0:
                acc.load_state_dict(part, copy=False)  # acc now starts from rank 0's states
            else:
                acc.merge(_blank_like(acc).load_state_dict(part, copy=False))
        return acc

    def _broadcast(self, t: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                   src: int, device: torch.device) -> torch.Tensor | None:
        """Rank ``src``'s tensor ``t`` (given on ``src``, ``None`` elsewhere) on every rank, a
        row of the first axis at a time for big tensors (no whole copy of it on the collective's
        device); ``src`` gets its own ``t`` back."""
        wire = torch.uint8 if dtype == torch.bool else dtype
        out = None if t is not None else torch.empty(shape, dtype=wire, device=device)
        rows = [()] if len(shape) < 3 else [(i,) for i in range(shape[0])]
        for r in rows:
            if not torch.Size(shape[len(r):]).numel():
                continue  # nothing to send (a rank that saw no key yet); every rank skips it
            if t is not None:
                buf = t[r].to(self.device, wire).contiguous()
            else:
                buf = torch.empty(shape[len(r):], dtype=wire, device=self.device)
            self._collective(lambda b=buf: dist.broadcast(b, src))
            if out is not None:
                out[r].copy_(buf)
        return t if out is None else out.to(dtype)

    def reduce_all(self, accs: dict[str, Any]) -> dict[str, Any]:
        """``reduce`` each accumulator, in sorted-name order on every rank (collectives pair up)."""
        return {k: self.reduce(accs[k]) for k in sorted(accs)}

    def _all_reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        """Elementwise reduce of a ``state_dict()`` copy (so in place); floats added in fp64.

        Upcasts and moves to the collective's device go chunk by chunk: a gpt2 AMAP's fp32 sums
        are 7 GB per mode, and a whole fp64 copy (or a host-side ``--sum-device cpu`` state
        copied to the GPU for nccl) would not fit beside them.
        """
        out = t.detach()
        if out.dtype == torch.bool:
            out = out.to(torch.uint8)
        flat = out.reshape(-1)
        wide = torch.float64 if out.is_floating_point() else out.dtype
        if out.device == self.device and wide == out.dtype:
            self._collective(lambda: dist.all_reduce(flat, op=op))
        else:
            for start in range(0, flat.numel(), _CHUNK):
                piece = flat[start : start + _CHUNK]
                buf = piece.to(self.device, wide)
                self._collective(lambda b=buf: dist.all_reduce(b, op=op))
                piece.copy_(buf)  # one rounding of the fp64 total, not one per rank
        return out.reshape(t.shape).to(t.dtype)

    def _check_signature(self, acc: Any) -> None:
        """Sizes that no state's shape shows (a sparse AMAP's vocabulary): the same on every
        rank, or the same error on every rank."""
        sig = getattr(acc, "signature", None)
        if sig is None:
            return
        named = sig()
        mine = torch.full((_MAX_SIGNATURE,), -1, dtype=torch.int64)
        mine[: len(named)] = torch.tensor(list(named.values()), dtype=torch.int64)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        self._collective(lambda: dist.all_gather(parts, mine.to(self.device)))
        rows = [p.cpu().tolist()[: len(named)] for p in parts]
        if any(r != rows[0] for r in rows):
            desc = "; ".join(f"rank {r}: " + ", ".join(f"{k} {v}" for k, v in zip(named, row,
                                                                                  strict=True))
                             for r, row in enumerate(rows))
            raise WorkbenchError(f"{type(acc).__name__} differs across ranks ({desc}): every "
                                 "rank must build the same accumulator (same model and settings)")

    def _gather_meta(self, owner: str, names: list[str], state: dict[str, torch.Tensor],
                     spec: dict[str, str]) -> dict[str, list[tuple[int, ...]]]:
        """Every rank's state shapes and dtypes; the same error on every rank when they clash.

        Gloo would hang or crash on mismatched collectives, so they are checked first.
        """
        meta = torch.full((len(names), 2 + _MAX_NDIM), -1, dtype=torch.int64)
        for i, n in enumerate(names):
            t = state[n]
            if t.ndim > _MAX_NDIM or t.dtype not in _DTYPES:
                raise WorkbenchError(f"{owner} state {n!r} ({t.dtype}, {t.ndim}-d) cannot be reduced")
            meta[i, 0], meta[i, 1] = _DTYPES.index(t.dtype), t.ndim
            meta[i, 2 : 2 + t.ndim] = torch.tensor(t.shape, dtype=torch.int64)
        parts = [torch.empty_like(meta) for _ in range(self.world)]
        self._collective(lambda: dist.all_gather(parts, meta.to(self.device)))
        parts = [p.cpu() for p in parts]
        shapes: dict[str, list[tuple[int, ...]]] = {}
        for i, n in enumerate(names):
            rows = [p[i] for p in parts]
            shapes[n] = [tuple(int(x) for x in row[2 : 2 + int(row[1])]) for row in rows]
            if any(int(row[0]) != int(rows[0][0]) for row in rows) or (
                    spec[n] in ELEMENTWISE and len(set(shapes[n])) > 1):
                desc = ", ".join(f"rank {r}: {s} {_DTYPES[int(row[0])]}"
                                 for r, (s, row) in enumerate(zip(shapes[n], rows, strict=True)))
                raise WorkbenchError(
                    f"{owner} state {n!r} differs across ranks ({desc}): every rank must build "
                    "the same accumulator (same model, layers and settings)")
        return shapes

    # --- failures ---------------------------------------------------------------------------

    def _collective(self, call) -> None:
        """Run a collective; a peer that died or failed becomes a ``RankFailedError`` naming it."""
        try:
            call()
        except RankFailedError:
            raise
        except Exception as exc:  # gloo/nccl raise RuntimeError or DistBackendError subclasses
            raise RankFailedError(self._diagnose(exc)) from exc

    def _diagnose(self, exc: BaseException | None) -> str:
        failed = self._marks("failed")
        if failed:
            who = "; ".join(f"rank {r} failed: {msg}" for r, msg in failed.items())
        else:
            # A rank killed outright reports nothing: name the ranks that never reached this reduce.
            reached = self._marks(f"reached/{self.step}") if self.step else {}
            missing = [r for r in range(self.world) if r != self.rank and r not in reached]
            peers = missing or [r for r in range(self.world) if r != self.rank]
            who = (f"rank {peers[0]}" if len(peers) == 1 else f"ranks {peers}") + \
                " died or was killed (no error reported)"
        why = ""
        if exc is not None and str(exc).strip():
            why = f" ({str(exc).strip().splitlines()[0]})"
        return (f"{self}: {who}; stopping without writing anything{why}. Fix that rank and "
                "rerun the same command (add --resume where supported to continue)")

    def _marks(self, kind: str) -> dict[int, str]:
        """Ranks that left a ``kind`` mark in the rendezvous store, with its text."""
        store = _store()
        out: dict[int, str] = {}
        if store is None:
            return out
        for r in range(self.world):
            key = f"{_KEY}/{kind}/{r}"
            try:
                if store.check([key]):
                    out[r] = store.get(key).decode("utf-8", "replace")
            except Exception:  # the store's host may be the rank that died
                break
        return out

    def _mark(self, kind: str, text: str = "1") -> None:
        store = _store()
        if store is not None:
            try:
                store.set(f"{_KEY}/{kind}/{self.rank}", text[:2000])
            except Exception:  # best effort: the others still see the dropped connection
                pass

    @contextmanager
    def guard(self, what: str) -> Iterator[DistContext]:
        """Run this rank's part of ``what``; on failure, tell the other ranks why, then re-raise."""
        try:
            yield self
        except RankFailedError:
            raise
        except BaseException as exc:
            if self.is_distributed:
                self._mark("failed", f"{what}: {type(exc).__name__}: {exc}")
            raise

    def barrier(self) -> None:
        if self.is_distributed:
            self._collective(dist.barrier)

    def close(self) -> None:
        """Leave the group if ``from_env`` joined it (lets torchrun exit cleanly)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def flat_states(accs: dict[str, Any], prefix: str = "state") -> dict[str, torch.Tensor]:
    """``{"state.{acc}.{name}": tensor}``: accumulator states as flat artifact keys."""
    return {f"{prefix}.{a}.{k}": v for a, acc in accs.items() for k, v in acc.state_dict().items()}


def unflat_states(flat: dict[str, torch.Tensor], acc_name: str,
                  prefix: str = "state") -> dict[str, torch.Tensor]:
    """The state dict of accumulator ``acc_name`` from ``flat_states`` keys."""
    head = f"{prefix}.{acc_name}."
    out = {k[len(head):]: v for k, v in flat.items() if k.startswith(head)}
    if not out:
        raise WorkbenchError(f"no {head}* tensors: the artifact was written without mergeable "
                             "states (an older workbench?); rebuild it to merge it")
    return out


def _comm_device(backend: str) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _identity(t: torch.Tensor, op: str) -> torch.Tensor:
    if op == "sum":
        return torch.zeros_like(t)
    if t.dtype == torch.bool:
        return torch.full_like(t, op == "min")
    big = torch.finfo(t.dtype).max if t.is_floating_point() else torch.iinfo(t.dtype).max
    return torch.full_like(t, -big if op == "max" else big)


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def _stop_on_sigterm(ctx: DistContext) -> None:
    """torchrun SIGTERMs every worker when one fails: unwind with an error that names it."""

    def handler(signum, frame):
        raise RankFailedError(ctx._diagnose(None) + " [stopped by torchrun]")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: keep the default
        pass


def _test_hook_die(ctx: DistContext, where: str) -> None:
    """Tests: ``WORKBENCH_TEST_DIE_RANK=r`` makes rank r exit abruptly (no cleanup) at ``where``."""
    die = os.environ.get("WORKBENCH_TEST_DIE_RANK")
    if die is not None and int(die) == ctx.rank and os.environ.get(
            "WORKBENCH_TEST_DIE_AT", "reduce") == where:
        print(f"test hook: rank {ctx.rank} exits abruptly at {where}", file=sys.stderr, flush=True)
        os._exit(3)


def _blank_like(acc: Any) -> Any:
    """A shallow copy of ``acc`` with a states table of its own, for ``load_state_dict`` to fill
    (``copy.deepcopy`` would clone every state first)."""
    one = copy.copy(acc)
    object.__setattr__(one, "states", dict(acc.states))
    return one
