"""Checkpoints of an AMAP build, so a killed build resumes and ends byte-identical.

A checkpoint is ``amap.ckpt.safetensors``: the accumulators' states with the next window to read,
the batch size and the build's fingerprint in its header, written to a temporary file and renamed
into place, so states and resume point can never disagree (``amap.ckpt.json`` repeats the header
for people).

Byte-identical resumption needs the same additions in the same order: fp32 sums are not
associative, so resuming must replay the same batches (same windows, same batch size) from the
window after the last checkpointed batch. The fingerprint covers model weights, tokenizer, data
(sha256, window, stride, BOS) and every setting, batch size included; any difference is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from workbench import artifacts
from workbench.errors import WorkbenchError

TENSORS = "amap.ckpt.safetensors"
START_OVER = "delete it to start the build over (without --resume)"


def fingerprint(parts: dict) -> str:
    """sha256 (first 16 hex digits) of ``parts`` as canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def exists(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a checkpoint: anything at its name counts (a link to a device
    or a folder there is refused by ``load``, not taken for "no checkpoint")."""
    path = Path(out_dir) / TENSORS
    return path.exists() or path.is_symlink()


def save(out_dir: Path, state: dict[str, torch.Tensor], next_window: int, batches: int,
         batch_size: int, fp: str) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"next_window": next_window, "batches": batches, "batch_size": batch_size,
            "fingerprint": fp}
    artifacts.save(out_dir / TENSORS, state, info)


def load(out_dir: Path, fp: str, batch_size: int, n_windows: int,
         ) -> tuple[dict[str, torch.Tensor], dict]:
    """The saved states and resume info, after checking they belong to this very build and that
    the resume point is one this build could have written (``n_windows``: the build's windows)."""
    out_dir = Path(out_dir)
    path = out_dir / TENSORS
    state, info = artifacts.load(path, START_OVER)
    if "next_window" not in info:
        raise WorkbenchError(f"{path} holds no resume state; delete it and rebuild")
    f = artifacts.Fields(info, path, todo=START_OVER)
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
            f"or delete {path} to start over"
        )
    batches = f.int("batches", 1)
    next_window = f.int("next_window", 1, n_windows)
    f.require(next_window == min(batches * batch_size, n_windows),
              f"its resume point (window {next_window} after {batches} batches of {batch_size}) "
              "is not one this build writes")
    return state, info


def clear(out_dir: Path) -> None:
    """Drop the checkpoint, and temporary files a kill in the middle of a save left behind."""
    out_dir = Path(out_dir)
    for name in (TENSORS, "amap.ckpt.json"):
        (out_dir / name).unlink(missing_ok=True)
    for stale in out_dir.glob(".amap.ckpt.*.tmp-*"):
        stale.unlink(missing_ok=True)
