"""Distributions engine vs the seed's numpy, on the seed-shaped matrix [13 layers, tokens*768].

Groups (baseline and workbench side by side, one row per token count):
- ``distributions-moments``: ``np.cov`` + ``np.corrcoef**2`` vs ``Moments`` (update, cov, r2).
  Goal: ≥ 3× numpy.
- ``distributions-histogram``: ``np.histogram`` per layer (seed bins) vs one ``Histogram.update``
  (the accumulator built once, as in a streaming pass). Goal: ≥ 1.5× numpy.
- ``distributions-dimstats``: mean, std (fp64, n - 1) and max |x| per (layer, dimension) of
  ``[tokens, layers, dims]``: numpy over the whole array (contiguous, its best layout) vs
  ``DimStats.update`` + ``std()`` fed what the analysis feeds: a ``t v d`` view of the
  variable-major ``[layers, tokens, dims]`` block.
- ``distributions-sample``: the ``k`` (token, dim) items with the smallest sampling keys
  (``permute_ids``), with their values and ids. numpy holds every key and the whole matrix and
  selects once (``np.argpartition`` then a sort of the k, or a full ``np.argsort``); the workbench
  streams the batches through ``BottomK.candidates`` + ``update``, as the analysis does. Keys are
  made outside the clock for both.
- ``distributions-memory``: peak RSS of a fresh process streaming 10× more tokens through the
  engine (chunks from a generator) vs materialising the matrix for numpy; extra_info holds the
  growth above the post-import RSS; the goal (issue: peak memory at 10× tokens ≤ 1.1×) is on the peak.
"""

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK, sync
from einops import rearrange

from workbench.kernels.dimstats import DimStats
from workbench.kernels.histogram import Histogram, linear_edges
from workbench.kernels.moments import Moments
from workbench.kernels.sample import BottomK, permute_ids

LAYERS, D_MODEL = 13, 768  # GPT-2 small's hidden states, as in the seed
TOKENS = [16] if QUICK else [16, 128, 1024]
EDGES = np.linspace(-15, 15, 301)
SAMPLE_K = 1_000 if QUICK else 10_000  # the analysis keeps max(sample, scatter_points) = 10,000
BATCH_TOKENS = 4 if QUICK else 128  # tokens per streamed batch in the sample benchmark


@cache
def seed_matrix(tokens: int) -> torch.Tensor:
    """[layers, tokens*dims] fp32 with growing scale and a few outlier dimensions."""
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(LAYERS, tokens, D_MODEL, generator=g) * torch.linspace(0.5, 4, LAYERS)[:, None, None]
    x[:, :, 7] *= 30  # outlier dimension, like GPT-2's
    return x.reshape(LAYERS, -1)


@pytest.fixture(scope="module", params=TOKENS, ids=lambda t: f"T{t}")
def tokens(request):
    return request.param


@pytest.fixture(scope="module")
def matrix(tokens):
    return tokens, seed_matrix(tokens)


def test_moments_numpy(benchmark, matrix):
    tokens, x = matrix
    xn = x.numpy()
    benchmark.group = "distributions-moments"
    benchmark.extra_info.update({"role": "baseline", "tokens": tokens, "shape": list(xn.shape)})
    cov, r2 = benchmark(lambda: (np.cov(xn), np.corrcoef(xn) ** 2))
    assert cov.shape == (LAYERS, LAYERS) and r2.shape == (LAYERS, LAYERS)


def test_moments_engine(benchmark, matrix, device):
    tokens, x = matrix
    xd = x.to(device)
    benchmark.group = "distributions-moments"
    benchmark.extra_info.update({"role": "workbench", "tokens": tokens, "device": device,
                                 "shape": list(x.shape), "goal_ratio": 3.0, "goal": "≥ 3× numpy"})

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
    benchmark.group = "distributions-histogram"
    benchmark.extra_info.update({"role": "baseline", "tokens": tokens, "bins": 300})
    counts = benchmark(lambda: [np.histogram(xn[v], bins=EDGES)[0] for v in range(LAYERS)])
    assert len(counts) == LAYERS


def test_histogram_engine(benchmark, matrix, device):
    tokens, x = matrix
    xd = x.to(device)
    benchmark.group = "distributions-histogram"
    benchmark.extra_info.update({"role": "workbench", "tokens": tokens, "device": device,
                                 "bins": 300, "goal_ratio": 1.5, "goal": "≥ 1.5× numpy"})
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


# --- per-dimension statistics -----------------------------------------------------------------


def by_token(x: torch.Tensor) -> torch.Tensor:
    """[layers, tokens*dims] -> [tokens, layers, dims] (contiguous: numpy's best layout too)."""
    return rearrange(x, "v (t d) -> t v d", d=D_MODEL).contiguous()


def test_dimstats_numpy(benchmark, tokens):
    xn = by_token(seed_matrix(tokens)).numpy()
    benchmark.group = "distributions-dimstats"
    benchmark.extra_info.update({"role": "baseline", "tokens": tokens, "shape": list(xn.shape)})
    mean, std, maxabs = benchmark(lambda: (xn.mean(0, dtype=np.float64),
                                           xn.std(0, ddof=1, dtype=np.float64),
                                           np.abs(xn).max(0)))
    assert mean.shape == std.shape == maxabs.shape == (LAYERS, D_MODEL)


def test_dimstats_engine(benchmark, tokens, device):
    x = by_token(seed_matrix(tokens))
    # distributions.py passes rearrange(block, "v t d -> t v d"): a view, not a contiguous copy
    xd = rearrange(seed_matrix(tokens).to(device), "v (t d) -> t v d", d=D_MODEL)
    benchmark.group = "distributions-dimstats"
    benchmark.extra_info.update({"role": "workbench", "tokens": tokens, "device": device,
                                 "shape": list(x.shape)})

    def engine():
        s = DimStats(LAYERS, D_MODEL, device).update(xd)
        out = s.mean, s.std(), s.maxabs
        sync(device)
        return out

    mean, std, maxabs = benchmark(engine)
    xn = x.numpy()
    np.testing.assert_allclose(mean.cpu().numpy(), xn.mean(0, dtype=np.float64), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std.cpu().numpy(), xn.std(0, ddof=1, dtype=np.float64), rtol=1e-9)
    assert np.array_equal(maxabs.cpu().numpy(), np.abs(xn).max(0).astype(np.float64))


# --- the deterministic uniform sample (bottom-k of the sampling keys) ------------------------


@cache
def sample_stream(tokens: int):
    """Items (token, dim) of one window: values [items, layers], ids [items, 3], keys [items]."""
    x = seed_matrix(tokens)
    values = rearrange(x, "v (t d) -> (t d) v", d=D_MODEL)  # a view, as in the analysis
    item = torch.arange(tokens * D_MODEL)
    ids = torch.stack([torch.zeros_like(item), item // D_MODEL, item % D_MODEL], dim=1)
    return values, ids, permute_ids(item, seed=0)


def numpy_bottom_k(keys, values, ids, select):
    order = select(keys)
    return keys[order], values[order].astype(np.float64), ids[order]


def argpartition_k(keys):
    part = np.argpartition(keys, SAMPLE_K - 1)[:SAMPLE_K]
    return part[np.argsort(keys[part])]


def full_sort_k(keys):
    return np.argsort(keys)[:SAMPLE_K]


@pytest.mark.parametrize("method", ["numpy_argpartition", "numpy_full_sort"])
def test_sample_numpy(benchmark, tokens, method):
    values, ids, keys = (t.numpy() for t in sample_stream(tokens))
    select = argpartition_k if method == "numpy_argpartition" else full_sort_k
    benchmark.group = "distributions-sample"
    benchmark.extra_info.update({"role": "baseline", "tokens": tokens, "items": len(keys),
                                 "k": SAMPLE_K})
    k, v, i = benchmark(numpy_bottom_k, keys, values, ids, select)
    assert np.all(np.diff(k) > 0) and len(k) == min(SAMPLE_K, len(keys))


def test_sample_engine(benchmark, tokens, device):
    values, ids, keys = (t.to(device) for t in sample_stream(tokens))
    step = BATCH_TOKENS * D_MODEL
    batches = [(keys[a : a + step], values[a : a + step], ids[a : a + step])
               for a in range(0, len(keys), step)]
    benchmark.group = "distributions-sample"
    benchmark.extra_info.update({"role": "workbench", "tokens": tokens, "items": len(keys),
                                 "k": SAMPLE_K, "batches": len(batches), "device": device})

    def engine():
        s = BottomK(SAMPLE_K, LAYERS, n_ids=3, device=device)
        for k, v, i in batches:
            pos = s.candidates(k)
            if pos.numel():
                s.update(k[pos], v[pos], i[pos])
        sync(device)
        return s

    s = benchmark(engine)
    values, ids, keys = (t.numpy() for t in sample_stream(tokens))
    ref = numpy_bottom_k(keys, values, ids, argpartition_k)
    assert np.array_equal(s.keys.cpu().numpy(), ref[0])
    assert np.array_equal(s.values.cpu().numpy(), ref[1])
    assert np.array_equal(s.ids.cpu().numpy(), ref[2])


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
        "tokens": [chunks * tokens, 10 * chunks * tokens],
        "peak_mib": large["rss_peak_kib"] / 1024, "growth_mib": large["growth_kib"] / 1024,
        "peak_rss_ratio_10x": large["rss_peak_kib"] / small["rss_peak_kib"],
        "growth_ratio_10x": growth[1] / growth[0],
    })
    if mode == "engine":  # the goal: peak memory at 10x the tokens <= 1.1x
        benchmark.extra_info.update({"goal_max": {"peak_rss_ratio_10x": 1.1},
                                     "goal": "peak at 10× tokens ≤ 1.1×"})
