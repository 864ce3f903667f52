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
    return check_device(str(device))


def check_device(device: str, flag: str = "--device") -> str:
    """``device`` if this machine has it, else a ``WorkbenchError`` saying what it has.

    >>> check_device("cpu")
    'cpu'
    """
    import torch

    from workbench.errors import WorkbenchError

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = "cpu" + (f", cuda (cuda:0..cuda:{n_cuda - 1})" if n_cuda else "; no CUDA device")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise WorkbenchError(f"{flag} {device!r} is not a device; use auto, cpu or cuda[:N] "
                             f"(this machine has {have})") from None
    if dev.type == "cuda" and (n_cuda == 0 or (dev.index or 0) >= n_cuda):
        raise WorkbenchError(f"{flag} {device}: this machine has {have}; use --device cpu or "
                             "auto")
    if dev.type not in ("cpu", "cuda"):
        raise WorkbenchError(f"{flag} {device}: only cpu and cuda are supported ({have})")
    return str(dev)
