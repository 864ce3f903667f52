"""Peak-memory probes for benchmarks that run their work in a fresh process.

A child's ``ru_maxrss`` starts at its parent's high-water mark (Linux carries it through fork
and exec), so its delta can read 0. These read the process' own ``VmHWM`` after resetting it to
the current RSS through ``/proc/self/clear_refs`` (``5``), as the lens benchmark does.
"""

from __future__ import annotations


def status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> int | None:
    """Reset VmHWM to the current RSS; return that RSS in KiB (None where /proc is missing)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return status_kib("VmRSS")


def peak_kib() -> int | None:
    """The process' peak RSS (KiB) since the last ``reset_peak``."""
    return status_kib("VmHWM")
