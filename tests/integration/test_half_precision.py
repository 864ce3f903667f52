"""Each corpus analysis on a half-precision model within a stated tolerance of its fp32 run.

tiny-gloss-lm on 40 gloss documents; bf16 on the CPU, fp16 on CUDA when a GPU is present. bf16 keeps
8 bits of mantissa (~3 significant digits), so the tolerances below are about what that allows
for statistics over ~1,000 positions; counts must be exact (the keys and positions do not depend
on the dtype in input mode). Measured on cpu-bf16 (2026-12-02): max |ΔR²| 2.7e-4, covariance
6.4e-4 of the largest variance, histogram L1 0.027, final-lens top-1 identical, median |Δ log rank|
0, top-1 accuracy 0.0056, AMAP means 0.8% of each layer's largest (correlation 0.99998).
"""

from __future__ import annotations

import pytest
import torch

from workbench import load_model
from workbench.data import load_windows

HALF = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
        pytest.param("cuda", torch.float16, id="cuda-fp16",
                     marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                              reason="no CUDA device"))]


@pytest.fixture(scope="module")
def full():
    return load_model("tiny-gloss-lm", device="cpu")


def _windows(model, window=15):
    return load_windows(model, dataset="wordnet-glosses-validation", limit=40, window=window,
                        stride=window, bos=window != 15)


@pytest.mark.parametrize("device, dtype", HALF)
def test_distributions_in_half_precision(full, device, dtype):
    from workbench.analyses.distributions import analyze

    half = load_model("tiny-gloss-lm", device=device, dtype=dtype)
    opts = {"progress": False, "sample": 50, "scatter_points": 50}
    a = analyze(full, _windows(full, 64), **opts)
    b = analyze(half, _windows(half, 64), **opts)
    assert torch.equal(a.n_samples, b.n_samples)
    assert a.hist_edges.tolist() == b.hist_edges.tolist()  # the same auto edges
    assert float((a.r2 - b.r2).abs().max()) <= 0.003
    rel = (a.covariance - b.covariance).abs() / a.covariance.diagonal().max()
    assert float(rel.max()) <= 0.006
    # histograms: the same mass, placed within a bin or two of each other
    pa = a.hist_counts.double() / a.n_samples[:, None]
    pb = b.hist_counts.double() / b.n_samples[:, None]
    assert float((pa - pb).abs().sum(-1).max()) <= 0.08


@pytest.mark.parametrize("device, dtype", HALF)
def test_lens_in_half_precision(full, device, dtype):
    from workbench.analyses.lens import analyze

    half = load_model("tiny-gloss-lm", device=device, dtype=dtype)
    a = analyze(full, _windows(full, 64), k=5, progress=False)
    b = analyze(half, _windows(half, 64), k=5, progress=False)
    valid = a.window_ranks > 0
    assert torch.equal(valid, b.window_ranks > 0)
    same_top1 = (a.topk_ids[..., 0] == b.topk_ids[..., 0]).double().mean(-1)
    assert float(same_top1[-1]) >= 0.9  # the model's own prediction
    la = a.window_ranks[valid].double().log()
    lb = b.window_ranks[valid].double().log()
    assert float((la - lb).abs().median()) <= 0.1  # ranks within ~10% for most positions
    acc = (a.dataset["top1_accuracy"] - b.dataset["top1_accuracy"]).abs()
    assert float(acc.max()) <= 0.02


@pytest.mark.parametrize("device, dtype", HALF)
def test_amap_in_half_precision(full, device, dtype):
    from workbench.analyses.amap import analyze

    half = load_model("tiny-gloss-lm", device=device, dtype=dtype)
    opts = {"progress": False, "modes": ("input",), "context_units": 0, "top_k": 1}
    a = analyze(full, _windows(full), **opts)
    b = analyze(half, _windows(half), **opts)
    assert torch.equal(a.counts("input"), b.counts("input"))
    seen = a.counts("input") >= 3
    ma, mb = a.means("input")[:, seen].double(), b.means("input")[:, seen].double().cpu()
    scale = ma.abs().amax((1, 2), keepdim=True)  # per layer
    assert float(((ma - mb).abs() / scale).max()) <= 0.03
    corr = torch.corrcoef(torch.stack([ma.flatten(), mb.flatten()]))[0, 1]
    assert float(corr) >= 0.999
