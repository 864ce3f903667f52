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
"""

from __future__ import annotations

import hashlib
import json

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
