"""AMAP builds split over processes (``torchrun``) or over jobs (``--shard i/n``).

1. ``build_parallel(model, windows, out, ctx=DistContext.from_env())`` under torchrun: rank r of
   n builds ``windows.shard(r, n)`` (window ids offset to the whole), checkpointing into
   ``out/checkpoints/rank{r}-of-{n}``; the ranks reduce their ``Amap`` (sums, counts: all-reduce;
   unit maxima: max) and ``TopWindows`` (merge, in rank order); rank 0 reads the max-activating
   contexts over the whole data and writes one artifact, the same as a one-process build.
   A killed run restarted with ``--resume`` (same number of processes) continues each rank from
   its own checkpoint.
2. ``build_parallel(..., shard=(i, n))`` builds slice i alone into ``out`` with ``shard`` in its
   metadata; ``workbench amap merge`` folds the n parts and refuses a set with a part missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.analyses import amap_checkpoint as ckpt
from workbench.analyses.amap import AmapResult, analyze, read_contexts
from workbench.distributed import DistContext
from workbench.errors import WorkbenchError
from workbench.sharding import local_part, shard_metadata

CHECKPOINTS = "checkpoints"
_RANK_DIR = re.compile(r"^rank(\d+)-of-(\d+)$")


def rank_checkpoint_dir(out_dir: str | Path, ctx: DistContext) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"rank{ctx.rank}-of-{ctx.world}"


def _check_world(out_dir: Path, ctx: DistContext) -> None:
    """Checkpoints of a run with another process count cannot be resumed: the slices differ."""
    folder = out_dir / CHECKPOINTS
    if not folder.is_dir():
        return
    worlds = set()
    for d in folder.iterdir():
        m = _RANK_DIR.match(d.name)
        if m and ckpt.exists(d):
            worlds.add(int(m.group(2)))
    other = sorted(w for w in worlds if w != ctx.world)
    if other:
        raise WorkbenchError(
            f"{folder} holds checkpoints of a run with {other[0]} processes, but this run has "
            f"{ctx.world}; resume with `torchrun --nproc-per-node {other[0]}` (x nodes), or "
            f"delete {folder} to start over")


def build_parallel(model, windows, out_dir: str | Path, *, shard: tuple[int, int] | None = None,
                   ctx: DistContext | None = None, context_units: int = 2,
                   progress: bool = True, **options) -> AmapResult | None:
    """Build this process's part; returns the whole result on rank 0 (None on other ranks)."""
    ctx = ctx or DistContext()
    out_dir = Path(out_dir)
    part, offset = local_part(windows, shard, ctx)
    if not ctx.is_distributed:  # --shard i/n, or one process
        result = analyze(model, part, checkpoint_dir=out_dir, window_offset=offset,
                         context_units=context_units, progress=progress, **options)
        if shard is not None:
            result.meta["shard"] = shard_metadata(windows, *shard)
        result.save(out_dir)
        ckpt.clear(out_dir)
        return result

    ck = rank_checkpoint_dir(out_dir, ctx)
    _check_world(out_dir, ctx)
    # Contexts need every rank's top windows: rank 0 reads them after the reduce.
    local = analyze(model, part, checkpoint_dir=ck, window_offset=offset, context_units=0,
                    progress=progress and ctx.is_main, **options)
    amap = ctx.reduce(local.amap)
    top = ctx.reduce(local.top) if local.top is not None else None
    result = None
    if ctx.is_main:
        meta = dict(local.meta)
        meta["data"] = windows.metadata()
        meta["amap"] = {**local.meta["amap"], "n_windows": len(windows), "window_offset": 0,
                        "processes": ctx.world}
        meta["amap"].pop("fingerprint", None)  # rank 0's checkpoint fingerprint, not the build's
        result = AmapResult(amap, top, local.layers, local.key_strs, len(windows), meta)
        result.invariants = amap.invariants(len(windows))
        broken = [k for k, ok in result.invariants.items() if not ok]
        if broken:  # a bug in the reduce, not a user error
            raise RuntimeError(f"AMAP invariants failed after the reduce: {broken}")
        result.contexts = read_contexts(model, windows, result, context_units)
        result.throughput = {**local.throughput, "processes": ctx.world,
                             "note": "tokens/seconds of rank 0's slice"}
        result.save(out_dir)
    # Checkpoints go only once the artifact is written: a failure before keeps them resumable.
    ctx.barrier()
    ckpt.clear(ck)
    _remove_if_empty(ck)
    ctx.barrier()
    if ctx.is_main:
        _remove_if_empty(ck.parent)
    return result


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
