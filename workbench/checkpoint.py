"""Checkpoints of the capture engine, so a killed pass resumes and ends byte-identical.

A checkpoint is ``{name}.ckpt.safetensors`` in the output folder: every reducer's accumulator
states (keys ``{reducer}.{accumulator}.{state}``) with the next batch to run, the batch size and
the pass's fingerprint in its header, written to a temporary file and renamed into place, so
states and resume point can never disagree (``{name}.ckpt.json`` repeats the header for people).

Byte-identical resumption needs the same additions in the same order: fp32 sums are not
associative, so resuming replays the same batches (same windows, same batch size: the engine's
batch plan is a pure function of them) from the batch after the last checkpointed one. The
fingerprint is ``identity.fingerprint`` of model, data, every setting that changes a number and
the batch size; any difference is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from workbench import artifacts
from workbench.errors import WorkbenchError

START_OVER = "delete it to start the build over (without --resume)"


def path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.ckpt.safetensors"


def exists(out_dir: str | Path, name: str) -> bool:
    """Whether ``out_dir`` holds a checkpoint: anything at its name counts (a link to a device
    or a folder there is refused by ``load``, not taken for "no checkpoint")."""
    p = path(out_dir, name)
    return p.exists() or p.is_symlink()


def save(out_dir: str | Path, name: str, state: dict[str, torch.Tensor], batches: int,
         next_window: int, batch_size: int, fp: str) -> None:
    """``batches``: batches of the plan done (the next one to run); ``next_window``: windows
    they covered (a check that the plan is the same)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    info = {"batches": batches, "next_window": next_window, "batch_size": batch_size,
            "fingerprint": fp}
    artifacts.save(path(out_dir, name), state, info)


def load(out_dir: str | Path, name: str, fp: str, batch_size: int, n_batches: int,
         windows_done: list[int]) -> tuple[dict[str, torch.Tensor], int]:
    """The saved states and the batch to resume from, after checking they belong to this very
    pass and that the resume point is one it could have written (``windows_done[b]``: windows
    covered by the first b batches of the plan)."""
    p = path(out_dir, name)
    state, info = artifacts.load(p, START_OVER)
    if "batches" not in info or "next_window" not in info:
        raise WorkbenchError(f"{p} holds no resume state; delete it and rebuild")
    f = artifacts.Fields(info, p, todo=START_OVER)
    saved_batch = f.int("batch_size", 1)
    if saved_batch != batch_size:
        raise WorkbenchError(
            f"the checkpoint in {out_dir} was built with --batch-size {saved_batch}, not "
            f"{batch_size}; resume with --batch-size {saved_batch} (fp32 sums are only "
            "byte-identical when added in the same batches)"
        )
    if f.get("fingerprint", str) != fp:
        raise WorkbenchError(
            f"the checkpoint in {out_dir} is from a different build (model, data or settings "
            f"differ: fingerprint {info['fingerprint']} vs {fp}); resume with the same command, "
            f"or delete {p} to start over"
        )
    next_batch = f.int("batches", 1, n_batches)
    next_window = f.int("next_window", 1)
    f.require(next_window == windows_done[next_batch],
              f"its resume point (window {next_window} after {next_batch} batches of "
              f"{batch_size}) is not one this build writes")
    return state, next_batch


def clear(out_dir: str | Path, name: str) -> None:
    """Drop the checkpoint, and temporary files a kill in the middle of a save left behind."""
    out_dir = Path(out_dir)
    for suffix in (".ckpt.safetensors", ".ckpt.json"):
        (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
    for stale in out_dir.glob(f".{name}.ckpt.*.tmp-*"):
        stale.unlink(missing_ok=True)


# --- torchrun: one checkpoint per rank --------------------------------------------------------

CHECKPOINTS = "checkpoints"
_RANK_DIR = re.compile(r"^rank(\d+)-of-(\d+)$")


def rank_dir(out_dir: str | Path, rank: int, world: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"rank{rank}-of-{world}"


def check_world(out_dir: str | Path, name: str, world: int) -> None:
    """Checkpoints of a run with another process count cannot be resumed: the slices differ."""
    folder = Path(out_dir) / CHECKPOINTS
    if not folder.is_dir():
        return
    worlds = set()
    for d in folder.iterdir():
        m = _RANK_DIR.match(d.name)
        if m and exists(d, name):
            worlds.add(int(m.group(2)))
    other = sorted(w for w in worlds if w != world)
    if other:
        raise WorkbenchError(
            f"{folder} holds checkpoints of a run with {other[0]} processes, but this run has "
            f"{world}; resume with `torchrun --nproc-per-node {other[0]}` (x nodes), or "
            f"delete {folder} to start over")


def where(out_dir: str | Path, ctx=None) -> Path:
    """This process's checkpoint folder: ``out_dir``, or its rank's folder under torchrun."""
    if ctx is not None and ctx.is_distributed:
        return rank_dir(out_dir, ctx.rank, ctx.world)
    return Path(out_dir)


def finish(out_dir: str | Path, name: str, ctx=None) -> None:
    """Drop the checkpoints once the artifact is written (every rank its own, then the folder):
    a failure before keeps them resumable."""
    if ctx is None or not ctx.is_distributed:
        clear(out_dir, name)
        return
    ctx.barrier()
    mine = where(out_dir, ctx)
    clear(mine, name)
    _remove_if_empty(mine)
    ctx.barrier()
    if ctx.is_main:
        _remove_if_empty(mine.parent)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
