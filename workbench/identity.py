"""One identity rule for resume, merge and reuse: what makes two builds the same computation.

A build is identified by the model (name, weights hash, dtype, weight processing, tokenizer and
sizes), the data (source, sha256, window, stride, BOS, documents) and every setting that changes
a number (everything in the metadata's ``settings`` but how the work was scheduled: batch size,
resume, checkpoint cadence, progress). The same three tuples decide

- whether a checkpoint may be resumed (``fingerprint(meta, batch_size=...)``: resuming must also
  replay the same batches, so the batch size joins the fingerprint there);
- whether parts may be merged (``workbench.analyses.shards.check_parts``: model and settings
  must agree; shards of one build must also share the data);
- whether an AMAP is compatible with another one (``compat``: model and settings, no data).

The weights are named by ``weights_hash`` (sha256 of every parameter, remembered on the model).
"""

from __future__ import annotations

import hashlib
import json

import torch

# Settings that change how the work was done, not what was computed.
SCHEDULING = ("batch_size", "resume", "checkpoint_every", "progress")
DATA = ("source", "sha256", "window", "stride", "bos", "n_documents")
# The device is recorded but not part of it: a CPU shard and a CUDA shard of one build merge.
MODEL = ("model", "weights_sha256_16", "dtype", "weight_processing", "tokenizer",
         "tokenizer_vocab", "n_layers", "d_model", "d_vocab")


def digest(parts: dict) -> str:
    """sha256 (first 16 hex digits) of ``parts`` as canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def settings_of(meta: dict) -> dict:
    return {k: v for k, v in (meta.get("settings") or {}).items() if k not in SCHEDULING}


def model_of(meta: dict) -> dict:
    return {k: meta.get(k) for k in MODEL}


def data_of(meta: dict) -> dict:
    return {k: (meta.get("data") or {}).get(k) for k in DATA}


def compat(meta: dict) -> str:
    """Model and settings: two builds with equal ``compat`` may be merged (over any data)."""
    return digest({"model": model_of(meta), "settings": settings_of(meta)})


def fingerprint(meta: dict, **extra) -> str:
    """Model, settings and data (+ ``extra``, e.g. the batch size and shard offset of a resume)."""
    return digest({"compat": compat(meta), "data": data_of(meta), **extra})


def weights_hash(model) -> str:
    """sha256 over the model's parameters (names, shapes, bytes), first 16 hex digits.

    Remembered on the model until any tensor is replaced or changed in place (``_version``):
    gemma-3-270m's 1.1 GB would otherwise be hashed again for every artifact."""
    state = model.state_dict()
    key = tuple((n, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for n, t in state.items())
    memo = getattr(model, "_workbench_weights_hash", None)
    if memo is not None and memo[0] == key:
        return memo[1]
    digest = _hash_state(state)
    try:
        model._workbench_weights_hash = (key, digest)
    except AttributeError:
        pass
    return digest


def _hash_state(state: dict, chunk_bytes: int = 16 * 2**20) -> str:
    """The bytes of each tensor in C order, a block of rows at a time: a transposed (tied)
    embedding is copied 16 MiB at a time, never whole (gemma's is 640 MiB)."""
    h = hashlib.sha256()
    for name, p in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        p = p.detach()
        rows = max(1, chunk_bytes // max(1, p.numel() // max(1, len(p)) * 4)) if p.ndim else 1
        for block in p.split(rows) if p.ndim else [p]:
            h.update(memoryview(block.to("cpu", torch.float32).contiguous().numpy()))
    return h.hexdigest()[:16]
