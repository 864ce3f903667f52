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


def fingerprint(parts: dict) -> str:
    """sha256 (first 16 hex digits) of ``parts`` as canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def exists(out_dir: Path) -> bool:
    return (Path(out_dir) / TENSORS).is_file()


def save(out_dir: Path, state: dict[str, torch.Tensor], next_window: int, batches: int,
         batch_size: int, fp: str) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"next_window": next_window, "batches": batches, "batch_size": batch_size,
            "fingerprint": fp}
    artifacts.save(out_dir / TENSORS, state, info)


def load(out_dir: Path, fp: str, batch_size: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The saved states and resume info, after checking they belong to this very build."""
    out_dir = Path(out_dir)
    state, info = artifacts.load(out_dir / TENSORS)
    if "next_window" not in info:
        raise WorkbenchError(f"{out_dir / TENSORS} holds no resume state; delete it and rebuild")
    if info["batch_size"] != batch_size:
        raise WorkbenchError(
            f"the checkpoint in {out_dir} was built with --batch-size {info['batch_size']}, not "
            f"{batch_size}; resume with --batch-size {info['batch_size']} (fp32 sums are only "
            "byte-identical when added in the same batches)"
        )
    if info["fingerprint"] != fp:
        raise WorkbenchError(
            f"the checkpoint in {out_dir} is from a different build (model, data or settings "
            f"differ: fingerprint {info['fingerprint']} vs {fp}); resume with the same command, "
            f"or delete {out_dir / TENSORS} to start over"
        )
    return state, info


def clear(out_dir: Path) -> None:
    """Drop the checkpoint, and temporary files a kill in the middle of a save left behind."""
    out_dir = Path(out_dir)
    for name in (TENSORS, "amap.ckpt.json"):
        (out_dir / name).unlink(missing_ok=True)
    for stale in out_dir.glob(".amap.ckpt.*.tmp-*"):
        stale.unlink(missing_ok=True)
