"""Splitting windows into shards: the slices ``--shard i/n`` jobs and torchrun ranks analyse.

Both pick ``Windows.shard``'s contiguous, disjoint, covering slices, so window indices plus the
shard's offset are the same in every run (sampling keys and max-activating windows agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.distributed import DistContext


def shard_range(n_windows: int, index: int, count: int) -> tuple[int, int]:
    """``[lo, hi)`` of shard ``index`` of ``count`` in windows ``0..n_windows`` (as ``Windows.shard``).

    >>> [shard_range(10, i, 3) for i in range(3)]
    [(0, 3), (3, 7), (7, 10)]
    """
    lo = sum(_shard_len(n_windows, r, count) for r in range(index))
    return lo, lo + _shard_len(n_windows, index, count)


def _shard_len(n_windows: int, index: int, count: int) -> int:
    b = torch.linspace(0, n_windows, count + 1).round().long()  # Windows.shard's bounds
    return int(b[index + 1] - b[index])


def local_part(windows, shard: tuple[int, int] | None = None,
               ctx: DistContext | None = None):
    """``(windows this process analyses, index of its first window in the whole)``.

    ``ctx`` (under torchrun) and ``shard`` (``--shard i/n``) both pick ``Windows.shard``'s
    slices; window indices + the offset are the same in every run, so sampling keys are too.
    """
    if ctx is not None and ctx.is_distributed and shard is not None:
        raise WorkbenchError("--shard is for separate jobs (merged offline); under torchrun the "
                             "ranks already split the data: drop --shard")
    index, count = shard if shard is not None else (
        (ctx.rank, ctx.world) if ctx is not None else (0, 1))
    if count == 1:
        return windows, 0
    return windows.shard(index, count), shard_range(len(windows), index, count)[0]


def shard_metadata(windows, index: int, count: int) -> dict:
    """What a shard artifact records so an offline merge can check the set is whole."""
    lo, hi = shard_range(len(windows), index, count)
    return {"index": index, "count": count, "windows": [lo, hi], "n_windows_total": len(windows)}


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``.

    >>> parse_shard("1/4")
    (1, 4)
    """
    try:
        i, n = (int(x) for x in text.strip().split("/"))
    except ValueError:
        raise WorkbenchError(f"--shard takes i/n (e.g. 0/4 for the first of 4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise WorkbenchError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return i, n
