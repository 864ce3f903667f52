"""Artifacts: tensors in safetensors, metadata as JSON beside them. Never pickle.

``save(dir / "lens.safetensors", tensors, meta)`` writes the tensors (with the metadata also in the
safetensors header) and ``lens.json`` beside them; writes go to a temporary file first and are
renamed into place, so an interrupted run never leaves a half-written artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from workbench.errors import WorkbenchError


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


def _hash_state(state: dict) -> str:
    h = hashlib.sha256()
    for name, p in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def weight_processing(model) -> str:
    """What TransformerLens did to the weights: the loader's record, or "folded ..." when the
    normalization says so (fold_ln turns LN into LNPre, RMS into RMSPre), whoever did it."""
    recorded = getattr(model, "workbench_info", {}).get("weight_processing", "unknown")
    norm = str(getattr(model.cfg, "normalization_type", None))
    if norm.endswith("Pre") and not recorded.startswith(("fold", "folded")):
        return f"folded ({norm}: fold_ln applied after loading)"
    return recorded


def model_metadata(model) -> dict:
    """The model's identity: name, weights hash, dtype, weight processing, tokenizer, sizes."""
    tok = model.tokenizer
    first = next(model.parameters())
    return {
        "model": model.cfg.model_name,
        "weights_sha256_16": weights_hash(model),
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
        "weight_processing": weight_processing(model),
        "tokenizer": getattr(tok, "name_or_path", type(tok).__name__),
        "tokenizer_vocab": len(tok) if tok is not None else None,
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "d_vocab": model.cfg.d_vocab,
    }


def run_metadata(model, windows=None, **settings) -> dict:
    """Everything needed to tell two artifacts apart: model, data, settings, versions."""
    from workbench import __version__

    meta = {"workbench_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), **model_metadata(model)}
    if windows is not None:
        meta["data"] = windows.metadata()
    meta["settings"] = settings
    return meta


def _umask_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open(..., "w")`` would: 0666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Write ``tensors`` to ``path`` (.safetensors) and ``meta`` to the .json beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = meta or {}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(clean, str(tmp), metadata={"workbench": json.dumps(meta, default=str)})
    _umask_mode(tmp)  # safetensors creates 0600 files; artifacts are shared like any output
    tmp.replace(path)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str).encode())
    return path


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of an artifact written by ``save``."""
    path = Path(path)
    if path.is_dir():
        raise WorkbenchError(f"{path} is a folder; give the .safetensors file inside it")
    if not path.exists():
        raise WorkbenchError(f"artifact not found: {path}")
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("workbench", "{}"))
    return tensors, meta


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())
    return path
