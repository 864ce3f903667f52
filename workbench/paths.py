"""Where the workbench keeps files it writes for itself (tokenizer folders, WordNet lexnames)."""

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """A folder under ``$WORKBENCH_CACHE`` (default ``~/.cache/workbench``), created on demand."""
    root = Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` picks CUDA when present, else CPU; anything else is passed through."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)
