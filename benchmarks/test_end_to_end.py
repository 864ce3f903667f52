"""End-to-end figures on the embedded model (tiny-gloss-lm, 4 layers, d_model 128, vocab 8192).

Groups (baseline = the bare no-grad forward pass over the same windows, side by side):
- ``e2e-run``: ``workbench run``'s ``run_all`` (every analysis, its artifacts, report.html,
  summary.json) on validation glosses vs ``model(tokens)`` under ``inference_mode`` over the run's
  windows. The ratio is forward time / run time (< 1: the run costs more than one forward; its
  inverse is the overhead). Every analysis makes its own pass over the windows (AMAP over its own
  15-token windows) and then writes files and figures, so the overhead is not one pass's.
- ``e2e-amap-build``: ``amap build`` (input and output modes, SYSIF windows 15/15, no BOS) over
  gloss documents vs the bare forward over the same windows.
- ``e2e-memory``: each of the three in a fresh process; peak RSS (VmHWM, see ``memprobe``) and its
  growth above the RSS once the model and windows are loaded.

``extra_info`` of each holds tokens, tokens/s and, for the workbench entries, the overhead;
``benchmarks/report.py`` prints them under the ratio table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUICK

RUN_DOCS = 24 if QUICK else 400  # validation glosses joined into one run input
AMAP_DOCS = 60 if QUICK else 4000  # gloss documents for the AMAP build
BATCH = 32

SETUP = r"""
from itertools import islice
from workbench import load_model
from workbench.corpus import gloss_documents
from workbench.data import load_windows

def setup(what, run_docs, amap_docs):
    model = load_model("tiny-gloss-lm", device="cpu")
    if what == "amap":
        docs = list(islice(gloss_documents("validation"), amap_docs))
        return model, load_windows(model, text=docs, window=15, stride=15, bos=False)
    text = " ".join(islice(gloss_documents("validation"), run_docs))
    return model, load_windows(model, text=text)
"""


def _setup(what: str):
    ns: dict = {}
    exec(SETUP, ns)  # one definition for in-process timing and the memory probes
    return ns["setup"](what, RUN_DOCS, AMAP_DOCS)


def bare_forward(model, windows) -> None:
    with torch.inference_mode():
        for _, tok, _m in windows.batches(BATCH):
            model(tok)


def run_main_job(model, windows, out_dir) -> dict:
    from workbench.report import run_all

    return run_all(model, windows, out_dir, batch_size=BATCH, progress=False)


def amap_build(model, windows):
    from workbench.analyses.amap import analyze

    return analyze(model, windows, batch_size=BATCH, progress=False, modes=("input", "output"))


@pytest.fixture(scope="module")
def inputs():
    cache: dict = {}

    def get(what: str):
        if what not in cache:
            cache[what] = _setup(what)
        return cache[what]

    return get


def _record(benchmark, role: str, windows, extra: dict | None = None) -> None:
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update({"role": role, "device": "cpu", "windows": len(windows),
                                 "tokens": windows.n_tokens, "batch_size": BATCH,
                                 "tokens_per_s": windows.n_tokens / seconds,
                                 "threads": torch.get_num_threads(), **(extra or {})})


ROUNDS = 1 if QUICK else 3


def _time_bare_forward(benchmark, model, windows) -> None:
    """The baseline of every e2e group: the bare forward over the same windows."""
    benchmark.pedantic(bare_forward, args=(model, windows), rounds=ROUNDS, iterations=1,
                       warmup_rounds=0 if QUICK else 1)
    _record(benchmark, "baseline", windows)


@pytest.mark.parametrize("impl", ["bare_forward", "workbench_run"])
@pytest.mark.benchmark(group="e2e-run")
def test_run_vs_forward(benchmark, impl, inputs, tmp_path):
    model, windows = inputs("run")
    if impl == "bare_forward":
        _time_bare_forward(benchmark, model, windows)
        return
    summary = benchmark.pedantic(run_main_job, args=(model, windows, tmp_path),
                                 rounds=ROUNDS, iterations=1)
    assert all(a["status"] == "ok" for a in summary["analyses"].values()), summary["analyses"]
    assert (tmp_path / "report.html").stat().st_size > 0
    _record(benchmark, "workbench", windows, {
        "report_bytes": summary["report"]["bytes"],
        "analysis_seconds": {n: a["seconds"]["total"] for n, a in summary["analyses"].items()}})


@pytest.mark.parametrize("impl", ["bare_forward", "workbench_amap_build"])
@pytest.mark.benchmark(group="e2e-amap-build")
def test_amap_build_vs_forward(benchmark, impl, inputs):
    model, windows = inputs("amap")
    if impl == "bare_forward":
        _time_bare_forward(benchmark, model, windows)
        return
    result = benchmark.pedantic(amap_build, args=(model, windows), rounds=ROUNDS, iterations=1)
    assert all(result.invariants.values()), result.invariants
    _record(benchmark, "workbench", windows)


PROBE = SETUP + r"""
import json, sys, tempfile
import torch
from memprobe import peak_kib, reset_peak
torch.set_num_threads(int(sys.argv[4]))
what, run_docs, amap_docs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, windows = setup("amap" if what.startswith("amap") else "run", run_docs, amap_docs)
before = reset_peak()
batch = 32
if what.endswith("forward"):
    with torch.inference_mode():
        for _, tok, _m in windows.batches(batch):
            model(tok)
elif what == "amap":
    from workbench.analyses.amap import analyze
    analyze(model, windows, batch_size=batch, progress=False, modes=("input", "output"))
else:
    from workbench.report import run_all
    with tempfile.TemporaryDirectory() as d:
        run_all(model, windows, d, batch_size=batch, progress=False)
print(json.dumps({"what": what, "tokens": windows.n_tokens, "rss_before_kib": before,
                  "peak_kib": peak_kib()}))
"""


@pytest.mark.parametrize("what", ["run_forward", "run", "amap_forward", "amap"])
@pytest.mark.benchmark(group="e2e-memory")
def test_peak_memory(benchmark, what):
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-c", PROBE, what, str(RUN_DOCS), str(AMAP_DOCS),
           str(torch.get_num_threads())]

    def probe() -> dict:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    res = benchmark.pedantic(probe, rounds=1, iterations=1)
    growth = None
    if res["peak_kib"] is not None and res["rss_before_kib"] is not None:
        growth = (res["peak_kib"] - res["rss_before_kib"]) / 1024
    benchmark.extra_info.update({
        "role": "baseline" if what.endswith("forward") else "workbench", "device": "cpu", **res,
        "peak_mib": res["peak_kib"] / 1024 if res["peak_kib"] else None,
        "growth_mib": growth})
