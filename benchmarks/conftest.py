"""Shared benchmark settings.

- ``WORKBENCH_BENCH_QUICK=1`` (CI, ``make bench-quick``): small sizes, one round; the point is
  that every benchmark still runs (and asserts what it times is right), not the numbers.
  ``make bench``: a few sizes each, so the cost's growth with tokens, layers and vocab shows;
  JSON (with machine info) in ``benchmarks/results/latest.json``, the run before it moved to
  ``previous.json``; ``make bench-table`` prints the tables of both (``benchmarks/report.py``).
- Every comparison is a pytest-benchmark *group*; inside it the baseline method and the
  workbench's run side by side in the same session. Sizes are parameters; the workbench entries
  take the ``device`` fixture (CPU always, CUDA when present, ``sync`` before the clock stops).
  A baseline without a ``device`` parameter (numpy, scikit-learn) is CPU-only and is compared
  with the workbench's CUDA entries too ("vs CPU" in the table).
- ``benchmark.extra_info`` conventions read by ``report.py``:
  ``role`` = ``"baseline" | "workbench"`` (else guessed from the name: numpy, naive, ecco, sysif,
  sklearn, bare, ...); ``goal_ratio`` + ``goal`` where an issue or doc set a speed goal
  (baseline time / workbench time ≥ goal_ratio; no timed assertions); ``*-memory`` groups record
  ``peak_mib``, ``growth_mib``, ``tokens`` and, when they run 1× and 10× the tokens,
  ``growth_ratio_10x``, with ``goal_max`` ({key: largest value}) where a bound was set.
- The make targets pass ``--jaxtyping-packages=`` (empty): the test suite's runtime shape checks
  (pyproject ``addopts``) are off, so the timings are of the code users run. ``machine_info``
  records whether they were on.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

QUICK = os.environ.get("WORKBENCH_BENCH_QUICK") == "1"

sys.path.insert(0, str(Path(__file__).parent))


def type_checks(config) -> bool:
    """Whether jaxtyping's import hook instruments the package (pyproject addopts)."""
    try:
        return bool(config.getoption("jaxtyping_packages"))
    except ValueError:  # the jaxtyping plugin is not installed
        return False


def pytest_report_header(config):
    mode = "QUICK (CI: small sizes, checks only)" if QUICK else "FULL"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    checks = ("; jaxtyping runtime checks ON (timings include them: pass --jaxtyping-packages=)"
              if type_checks(config) else "")
    return [f"workbench benchmarks: {mode}; torch {torch.__version__}; "
            f"threads {torch.get_num_threads()}; CUDA: {cuda}{checks}"]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["jaxtyping_checks"] = type_checks(config)
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
