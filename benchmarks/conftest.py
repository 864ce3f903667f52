"""Shared benchmark settings.

- ``WORKBENCH_BENCH_QUICK=1`` (CI, ``make bench-quick``): small sizes, one round; the point is
  that every benchmark still runs (and asserts what it times is right), not the numbers.
- Every comparison is a pytest-benchmark *group*; inside it the baseline method and the
  workbench's run side by side in the same session. ``benchmarks/report.py`` turns a saved JSON
  into the ratio table (baseline time / workbench time) of ``benchmarks/README.md``.
- Mark a benchmark's role with ``benchmark.extra_info["role"] = "baseline" | "workbench"``
  (``report.py`` also recognises common baseline names: numpy, naive, ecco, sysif, sklearn, bare).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

QUICK = os.environ.get("WORKBENCH_BENCH_QUICK") == "1"

sys.path.insert(0, str(Path(__file__).parent))


def pytest_report_header(config):
    mode = "QUICK (CI: small sizes, checks only)" if QUICK else "FULL"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [f"workbench benchmarks: {mode}; torch {torch.__version__}; "
            f"threads {torch.get_num_threads()}; CUDA: {cuda}"]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine_info["quick_mode"] = QUICK


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """CPU always; CUDA when present (skipped otherwise)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return request.param


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
