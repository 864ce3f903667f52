"""Capture over a file in windows: time, and peak memory as the file grows 10× (bounded)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUICK

PROBE = r"""
import json, sys, tempfile, torch
from memprobe import peak_kib, reset_peak
from workbench.capture import resid_hooks, run
from workbench.data import load_windows
from workbench.models.random_tiny import random_tiny
torch.set_num_threads(1)
n_tokens = int(sys.argv[1])
model = random_tiny(n_ctx=256)
text = ("".join(chr(97 + (i * 7) % 26) for i in range(n_tokens)))
with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write(text)
w = load_windows(model, file=f.name, window=255)
before = reset_peak()
total = torch.zeros((), dtype=torch.float64)
def reduce(batch):
    global total
    for a in batch.acts.values():
        total += a.double().sum()
run(model, w, resid_hooks(model), [reduce], batch_size=8, progress=False)
after = peak_kib()
print(json.dumps({"tokens": w.n_tokens, "windows": len(w), "rss_before_kib": before,
                  "rss_after_kib": after, "growth_kib": after - before}))
"""


def peak(n_tokens: int) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(n_tokens)], capture_output=True,
                         text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="capture-memory")
def test_capture_memory_is_bounded_as_tokens_grow(benchmark):
    """Peak RSS (VmHWM, see memprobe) while capturing all resid hooks of 1k vs 10k tokens
    (fresh processes): the peak and its growth above the RSS before the capture."""
    small, large = (200, 2000) if QUICK else (1000, 10000)
    res = benchmark.pedantic(lambda: (peak(small), peak(large)), rounds=1, iterations=1)
    a, b = res
    ratio = b["rss_after_kib"] / a["rss_after_kib"]
    benchmark.extra_info.update({"role": "workbench", "small": a, "large": b,
                                 "peak_ratio_10x_tokens": ratio})
    # Streaming keeps one batch of activations: 10x the tokens must not grow the peak much.
    assert ratio < 1.25, (a, b)


@pytest.mark.benchmark(group="capture-throughput")
def test_capture_throughput(benchmark):
    from workbench.capture import resid_hooks, run
    from workbench.data import load_windows
    from workbench.models.random_tiny import random_tiny

    model = random_tiny(n_ctx=256)
    w = load_windows(model, text="abcdefghij" * (50 if QUICK else 1000), window=255)

    def go():
        return run(model, w, resid_hooks(model), [lambda b: None], batch_size=8, progress=False)

    stats = benchmark.pedantic(go, rounds=1 if QUICK else 3, iterations=1)
    benchmark.extra_info.update({"role": "workbench", "tokens": w.n_tokens,
                                 "tokens_per_s": stats.tokens_per_s,
                                 "threads": torch.get_num_threads()})
