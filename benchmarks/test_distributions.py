"""Distributions engine vs the seed's numpy, on the seed-shaped matrix [13 layers, tokens*768].

Groups (baseline and workbench side by side, per token count):
- ``distributions-moments-T{n}``: ``np.cov`` + ``np.corrcoef**2`` vs ``Moments`` (update, cov, r2).
- ``distributions-histogram-T{n}``: ``np.histogram`` per layer (seed bins) vs ``Histogram``.
- ``distributions-memory``: peak RSS of a fresh process streaming 10× more tokens through the
  engine (chunks from a generator) vs materialising the matrix for numpy; extra_info holds the
  growth above the post-import RSS, which is what the 10× goal is about.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK, sync

from workbench.kernels.histogram import Histogram, linear_edges
from workbench.kernels.moments import Moments

LAYERS, D_MODEL = 13, 768  # GPT-2 small's hidden states, as in the seed
TOKENS = [16] if QUICK else [16, 128, 1024]
EDGES = np.linspace(-15, 15, 301)


def seed_matrix(tokens: int) -> torch.Tensor:
    """[layers, tokens*dims] fp32 with growing scale and a few outlier dimensions."""
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(LAYERS, tokens, D_MODEL, generator=g) * torch.linspace(0.5, 4, LAYERS)[:, None, None]
    x[:, :, 7] *= 30  # outlier dimension, like GPT-2's
    return x.reshape(LAYERS, -1)


@pytest.fixture(scope="module", params=TOKENS, ids=lambda t: f"T{t}")
def matrix(request):
    return request.param, seed_matrix(request.param)


def test_moments_numpy(benchmark, matrix):
    tokens, x = matrix
    xn = x.numpy()
    benchmark.group = f"distributions-moments-T{tokens}"
    benchmark.extra_info.update({"role": "baseline", "tokens": tokens, "shape": list(xn.shape)})
    cov, r2 = benchmark(lambda: (np.cov(xn), np.corrcoef(xn) ** 2))
    assert cov.shape == (LAYERS, LAYERS) and r2.shape == (LAYERS, LAYERS)


def test_moments_engine(benchmark, matrix, device):
    tokens, x = matrix
    xd = x.to(device)
    benchmark.group = f"distributions-moments-T{tokens}"
    benchmark.extra_info.update({"role": "workbench", "tokens": tokens, "device": device,
                                 "shape": list(x.shape)})

    def engine():
        m = Moments(LAYERS, device).update(xd.T)
        out = m.cov(), m.r2()
        sync(device)
        return out

    cov, r2 = benchmark(engine)
    xn = x.numpy()
    ref = np.cov(xn)
    assert np.abs(cov.cpu().numpy() - ref).max() <= 1e-6 * np.abs(ref).max()
    assert np.abs(r2.cpu().numpy() - np.corrcoef(xn) ** 2).max() <= 1e-6


def test_histogram_numpy(benchmark, matrix):
    tokens, x = matrix
    xn = x.numpy()
    benchmark.group = f"distributions-histogram-T{tokens}"
    benchmark.extra_info.update({"role": "baseline", "tokens": tokens, "bins": 300})
    counts = benchmark(lambda: [np.histogram(xn[v], bins=EDGES)[0] for v in range(LAYERS)])
    assert len(counts) == LAYERS


def test_histogram_engine(benchmark, matrix, device):
    tokens, x = matrix
    xd = x.to(device)
    benchmark.group = f"distributions-histogram-T{tokens}"
    benchmark.extra_info.update({"role": "workbench", "tokens": tokens, "device": device,
                                 "bins": 300})
    # Built once, as in a streaming pass: the timed call is one batch's update.
    h = Histogram(linear_edges(-15, 15, 300), LAYERS, device)

    def engine():
        h.update(xd.T)
        sync(device)

    benchmark(engine)
    xn = x.numpy()
    ref = np.stack([np.histogram(xn[v], bins=EDGES)[0] for v in range(LAYERS)])
    calls = int(h.n_samples[0]) // xn.shape[1]
    assert calls >= 1 and np.array_equal(h.counts.cpu().numpy(), ref * calls)


# --- peak memory as the token count grows 10× -----------------------------------------------

PROBE = r"""
import json, sys, numpy as np, torch
from memprobe import peak_kib, reset_peak
from workbench.kernels.histogram import Histogram, linear_edges
from workbench.kernels.moments import Moments
torch.set_num_threads(1)
mode, chunks, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
L, D = 13, 768
def chunk(i):  # one batch of hidden states, [layers, tokens*dims]; made on demand
    g = torch.Generator().manual_seed(i)
    return torch.randn(L, tokens * D, generator=g)
warm = chunk(0)  # allocator, kernels and one chunk warmed up before the baseline reading
Moments(L).update(warm.T); Histogram(linear_edges(), L).update(warm.T)
del warm
before = reset_peak()
if mode == "engine":
    m, h = Moments(L), Histogram(linear_edges(), L)
    for i in range(chunks):
        x = chunk(i)
        m.update(x.T); h.update(x.T)
    r2 = m.r2()
else:  # the seed: hold the whole (layers x tokens*dims) matrix, then numpy
    x = np.concatenate([chunk(i).numpy() for i in range(chunks)], axis=1)
    r2 = np.corrcoef(x) ** 2; np.cov(x)
    [np.histogram(x[v], bins=np.linspace(-15, 15, 301)) for v in range(L)]
after = peak_kib()
print(json.dumps({"mode": mode, "chunks": chunks, "rss_before_kib": before,
                  "rss_peak_kib": after, "growth_kib": after - before}))
"""


def peak(mode: str, chunks: int, tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(chunks), str(tokens)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1",
                              "PYTHONPATH": str(Path(__file__).parent)})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["numpy", "engine"])
def test_peak_memory_10x_tokens(benchmark, mode):
    """Fresh processes: 10× the chunks (tokens) through the same path; the engine's growth above
    the warmed-up baseline must stay flat, numpy's grows with the matrix it holds."""
    chunks, tokens = (2, 8) if QUICK else (4, 64)
    benchmark.group = "distributions-memory"
    small, large = benchmark.pedantic(
        lambda: (peak(mode, chunks, tokens), peak(mode, 10 * chunks, tokens)),
        rounds=1, iterations=1)
    growth = [max(r["growth_kib"], 1) for r in (small, large)]
    benchmark.extra_info.update({
        "role": "workbench" if mode == "engine" else "baseline", "tokens_per_chunk": tokens,
        "chunks": [chunks, 10 * chunks], "small": small, "large": large,
        "peak_rss_ratio_10x": large["rss_peak_kib"] / small["rss_peak_kib"],
        "growth_ratio_10x": growth[1] / growth[0],
    })
