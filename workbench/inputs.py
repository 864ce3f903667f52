"""The user's input files, read and checked before any model is loaded.

A ``.jsonl`` file holds one document per line (its ``field``, which must be a string); any other
file is one UTF-8 document (a leading byte-order mark is dropped, the same rule for both). Each
problem is a ``WorkbenchError`` naming the file (and line) and what to do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from workbench.errors import WorkbenchError


def read_text_file(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise WorkbenchError(f"file not found: {p}; check the path (relative to {Path.cwd()})")
    if p.is_dir():
        raise WorkbenchError(f"{p} is a folder; give a text or .jsonl file")
    data = p.read_bytes()
    try:
        # "utf-8-sig": a leading byte-order mark (Windows editors write one) is not text; the
        # same rule for .txt and .jsonl.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkbenchError(
            f"{p} is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 4]!r}); "
            "convert it, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`"
        ) from None


def read_file_documents(path: str | Path, field: str = "text") -> list[str]:
    """The documents of a file: a .jsonl holds one per line (its ``field``), any other file one."""
    p = Path(path)
    return read_jsonl(p, field) if p.suffix == ".jsonl" else [read_text_file(p)]


def read_jsonl(path: str | Path, field: str = "text") -> list[str]:
    docs = []
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{path}:{n} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise WorkbenchError(f"{path}:{n} is a JSON {type(row).__name__}, not an object with "
                                 f"a field {field!r}; one object per line")
        docs.append(text_field(row, field, f"{path}:{n}"))
    return docs


def text_field(row: dict, field: str, where: str) -> str:
    """``row[field]``, which must be a string (a JSONL line or a dataset row, named by ``where``)."""
    if field not in row:
        raise WorkbenchError(f"{where} has no field {field!r} (has {sorted(row)}); use --field")
    value = row[field]
    if not isinstance(value, str):
        raise WorkbenchError(
            f"{where}: field {field!r} is {json.dumps(value, default=str)[:40]} "
            f"({type(value).__name__}), not a string; fix it or choose a text field with --field")
    return value


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (what ``sha256sum`` prints); metadata ``sha256`` is that of the
    decoded documents, which is the same for any encoding of the same text."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
