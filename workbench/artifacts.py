"""Artifacts: tensors in safetensors, metadata as JSON beside them. Never pickle.

``save(dir / "lens.safetensors", tensors, meta)`` writes the tensors (with the metadata also in the
safetensors header) and ``lens.json`` beside them; writes go to a temporary file first and are
renamed into place, so an interrupted run never leaves a half-written artifact.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from workbench.errors import WorkbenchError
from workbench.identity import weights_hash


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
    write_safetensors(tmp, tensors, {"workbench": json.dumps(meta, default=str)})
    tmp.replace(path)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str).encode())
    return path


_ST_DTYPE = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
             torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
             torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_PIECE_BYTES = 64 * 2**20


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file written tensor by tensor, and a large tensor that is not one block of
    host memory (a view of a bigger buffer, a GPU state) slice by slice along its first dim: a
    checkpoint of the live states holds no second copy of them, on the host or on the GPU."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _ST_DTYPE:
            raise WorkbenchError(f"tensor {name!r} has dtype {t.dtype}, which artifacts do not hold")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPE[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in sorted(tensors):
            _write_tensor(f, tensors[name].detach())
        f.flush()
        os.fsync(f.fileno())


def _write_tensor(f, t: torch.Tensor) -> None:
    if not t.numel():
        return
    small = t.numel() * t.element_size() <= _PIECE_BYTES or t.ndim <= 1
    if t.device.type != "cpu" or not t.is_contiguous():
        if not small:
            for piece in t:
                _write_tensor(f, piece)
            return
        t = t.to("cpu").contiguous()
    f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


# A set of files committed together (``commit_set``): written into ``.commit-<name>.staged``,
# which is renamed ``.commit-<name>`` once every file is whole (the commit point), then moved
# into place; ``recover`` finishes a commit a kill interrupted, or drops one never committed.
_STAGED, _COMMITTED = ".commit-{}.staged", ".commit-{}"


def commit_set(out_dir: str | Path, name: str,
               writers: dict[str, Callable[[Path], None]], remove: tuple[str, ...] = ()) -> None:
    """Make the files ``writers`` write (``{file name: write(path)}``) visible in ``out_dir``
    together, and drop the ``remove`` files of an older build there: after a kill at any step the
    folder holds the old set or the new one (``recover`` runs first on every read), never a mix."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recover(out_dir, name)
    staged, committed = out_dir / _STAGED.format(name), out_dir / _COMMITTED.format(name)
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    for file, write in writers.items():
        write(staged / file)
    for file in remove:
        if file not in writers:
            (staged / f"{file}.remove").touch()
    _fsync_dir(staged)
    staged.rename(committed)  # the commit point
    _fsync_dir(out_dir)
    recover(out_dir, name)


def recover(out_dir: str | Path, name: str) -> None:
    """Finish an interrupted ``commit_set`` of ``name`` in ``out_dir`` (move its files in), or
    drop one that never reached its commit point; nothing to do in a clean folder."""
    out_dir = Path(out_dir)
    staged, committed = out_dir / _STAGED.format(name), out_dir / _COMMITTED.format(name)
    if staged.is_dir():
        shutil.rmtree(staged, ignore_errors=True)
    if not committed.is_dir():
        return
    for item in sorted(committed.iterdir()):
        if item.name.endswith(".remove"):
            (out_dir / item.name[: -len(".remove")]).unlink(missing_ok=True)
            item.unlink()
        else:
            _umask_mode(item)
            item.replace(out_dir / item.name)
    _fsync_dir(out_dir)
    committed.rmdir()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own cap on the JSON header
SAFETENSORS_DTYPES = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16", "BF16",
                      "F32", "F64", "F8_E4M3", "F8_E5M2"}
_REBUILD = "rebuild it with the command that wrote it, or copy it again"


class DamagedArtifact(WorkbenchError):
    """A file the workbench reads is not what it should be: its one line names the file, what is
    wrong and what to do."""


def damaged(path, what: str, todo: str = _REBUILD) -> DamagedArtifact:
    return DamagedArtifact(f"{path}: {what}; {todo}")


def _regular_file(path: Path) -> int:
    """The size of ``path`` after checking that it is a regular file (not /dev/zero, a fifo...)."""
    import stat

    if path.is_dir():
        raise WorkbenchError(f"{path} is a folder; give the .safetensors file inside it")
    if not path.exists():
        if path.is_symlink():
            raise damaged(path, "is a symbolic link to nothing", "point it at an artifact")
        raise WorkbenchError(f"artifact not found: {path}")
    try:
        st = path.stat()
    except OSError as exc:
        raise damaged(path, f"cannot be read ({exc.strerror})", "check its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise damaged(path, "is not a regular file (a device, pipe or a link to one)",
                      "give the artifact file itself")
    return st.st_size


def read_header(path: str | Path, todo: str = _REBUILD) -> dict:
    """The JSON header of a safetensors file, after checking that the file is one and is whole:
    nothing is unpickled, and a truncated, empty, random or pickled file is refused in one line."""
    path = Path(path)
    size = _regular_file(path)
    if size == 0:
        raise damaged(path, "is empty (0 bytes; an interrupted write or copy?)", todo)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            plausible = 2 <= n <= min(MAX_HEADER_BYTES, size - 8)
            raw = f.read(n) if plausible else b""
            # A real header length may begin with byte 0x80 or "PK": a pickle or a torch.save zip
            # is named only when the bytes are no safetensors header.
            if not raw.startswith(b"{") and (head[:1] == b"\x80" or head[:2] == b"PK"):
                raise damaged(path, "is a pickle or torch.save file, not safetensors (the "
                              "workbench never unpickles)", "give an artifact the workbench wrote")
            if len(head) < 8:
                raise damaged(path, f"is truncated ({size} bytes, shorter than any safetensors "
                              "file)", todo)
            if not plausible:
                raise damaged(path, f"is not a safetensors file or is truncated (its header "
                              f"claims {n:,} bytes; the file has {size:,})", todo)
    except OSError as exc:
        raise damaged(path, f"cannot be read ({exc.strerror})", "check the file") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise damaged(path, "is not a safetensors file (its header is not JSON)", todo) from None
    if not isinstance(header, dict):
        raise damaged(path, "is not a safetensors file (its header is not a JSON object)", todo)
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in SAFETENSORS_DTYPES
              and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) and o >= 0 for o in entry["data_offsets"]))
        if not ok:
            raise damaged(path, f"has a damaged header entry for tensor {name!r}", todo)
        end = max(end, entry["data_offsets"][1])
    if size < 8 + n + end:
        raise damaged(path, f"is truncated ({size:,} bytes; its header needs {8 + n + end:,})", todo)
    return header


def load_named(path: str | Path, name: str, what: str, writer: str):
    """``load`` of the artifact ``name`` in the folder ``path`` (or of the file ``path``): its
    file, tensors and metadata; a missing one says which command writes it."""
    path = Path(path)
    file = path / name if path.is_dir() else path
    if not file.exists():
        raise WorkbenchError(f"no {what} at {path}: expected {file} (written by {writer})")
    tensors, meta = load(file)
    return file, tensors, meta


def load(path: str | Path, todo: str = _REBUILD) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of an artifact written by ``save``; any damage (truncation,
    random bytes, a pickle, a device file, metadata that is not JSON) is a ``DamagedArtifact``."""
    path = Path(path)
    header = read_header(path, todo)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # SafetensorError and friends: the file is not what its header says
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise damaged(path, f"cannot be read as safetensors ({first})", todo) from None
    return tensors, _meta_of(path, header, todo)


def read_meta(path: str | Path, todo: str = _REBUILD) -> dict:
    """The metadata of an artifact from its header alone (no tensor is read), checked as
    ``load`` checks it."""
    return _meta_of(Path(path), read_header(path, todo), todo)


def _meta_of(path: Path, header: dict, todo: str) -> dict:
    raw = (header.get("__metadata__") or {}).get("workbench", "{}")
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise damaged(path, "holds workbench metadata that is not JSON (edited by hand?)", todo) from None
    if not isinstance(meta, dict):
        raise damaged(path, "holds workbench metadata that is not a JSON object (edited by hand?)", todo)
    return meta


def read_json(path: str | Path, what: str = "file"):
    """A JSON file the workbench wrote, or a ``DamagedArtifact`` saying why it cannot be read."""
    path = Path(path)
    _regular_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(path, f"is not a valid JSON {what} ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise damaged(path, f"cannot be read ({exc.strerror})", "check the file") from None


class Fields:
    """Checked reads of an artifact's metadata: a missing key or a value of the wrong type or
    range is a ``DamagedArtifact`` naming the file and the key, never a KeyError/TypeError."""

    def __init__(self, meta: dict, path, prefix: str = "", todo: str = _REBUILD):
        self.meta, self.path, self.prefix, self.todo = meta, path, prefix, todo

    def _fail(self, key: str, what: str) -> DamagedArtifact:
        return damaged(self.path, f"metadata '{self.prefix}{key}' {what} (edited by hand?)",
                       self.todo)

    def get(self, key: str, kind, default=...):
        if key not in self.meta:
            if default is not ...:
                return default
            raise self._fail(key, "is missing")
        value = self.meta[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self._fail(key, f"is {type(value).__name__} {str(value)[:40]!r}, not {names}")
        return value

    def int(self, key: str, low: int | None = 0, high: int | None = None, default=...) -> int:
        value = self.get(key, int, default)
        if value is default:
            return value
        if (low is not None and value < low) or (high is not None and value > high):
            raise self._fail(key, f"is {value}, outside {low}..{'' if high is None else high}")
        return value

    def section(self, key: str) -> Fields:
        return Fields(self.get(key, dict), self.path, f"{self.prefix}{key}.", self.todo)

    def require(self, ok: bool, what: str) -> None:
        if not ok:
            raise damaged(self.path, f"{what} (edited by hand?)", self.todo)


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())
    return path
