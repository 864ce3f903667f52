"""Logit lens: ranks vs ecco's full argsort, top-k vs softmax + sort, and peak memory.

- ``lens-ranks``: ranks of the next token for every lens × position from a residual stack.
  ecco projects a layer and sorts the whole vocabulary to find one rank; the workbench counts the
  logits strictly greater (``target_ranks``), both as ranks only and as the analysis' full
  read-out (top-k, ranks, entropy, KL, agreement), which does strictly more work.
- ``lens-topk``: top-k ids and probabilities from logits: full softmax + descending sort vs
  ``topk`` + ``logsumexp``.
- ``lens-memory``: the whole ``analyze`` of a 12-layer, 50k-vocab random model at 1,024 positions
  in a fresh process; the peak must stay under 1 GB (the unchunked logits alone would be 2.7 GB).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import QUICK, sync

from workbench.kernels.lens import Unembed, logit_lens, project, target_ranks

# (lenses, positions, vocab, d_model)
RANK_SIZES = [(5, 32, 2_000, 64)] if QUICK else [(5, 32, 2_000, 64), (13, 128, 50_000, 256)]
TOPK_SIZES = [(64, 2_000)] if QUICK else [(64, 2_000), (1024, 50_000)]


def _setup(size, device):
    n_lens, pos, vocab, d = size
    g = torch.Generator().manual_seed(0)
    stack = torch.randn(n_lens, 1, pos, d, generator=g).to(device)
    ln = torch.nn.LayerNorm(d).to(device)
    u = Unembed((torch.randn(d, vocab, generator=g) / d**0.5).to(device), None, ln)
    targets = torch.randint(0, vocab, (1, pos), generator=g).to(device)
    return stack, u, targets


def ecco_ranks(stack, u, targets):
    """ecco's rankings: per layer, project, argsort the whole vocabulary, find the target."""
    out = []
    with torch.no_grad():
        for layer in range(stack.shape[0]):
            logits = project(stack[layer, 0], u, "final_ln")
            order = torch.argsort(logits, dim=-1, descending=True)
            out.append((order == targets[0, :, None]).nonzero()[:, 1] + 1)
    return torch.stack(out)


def workbench_ranks(stack, u, targets):
    with torch.no_grad():
        logits = project(stack[:, 0], u, "final_ln")
        return target_ranks(logits, targets[0, :, None].expand(stack.shape[0], -1, 1))[..., 0]


def workbench_readout(stack, u, targets):
    with torch.no_grad():
        return logit_lens(stack, u, mode="final_ln", k=10, targets=targets).ranks[:, 0]


@pytest.mark.parametrize("size", RANK_SIZES, ids=lambda s: f"L{s[0]}xP{s[1]}xV{s[2]}")
@pytest.mark.parametrize("method", ["ecco_argsort", "workbench_ranks", "workbench_readout"])
@pytest.mark.benchmark(group="lens-ranks")
def test_lens_ranks(benchmark, device, method, size):
    stack, u, targets = _setup(size, device)
    fn = {"ecco_argsort": ecco_ranks, "workbench_ranks": workbench_ranks,
          "workbench_readout": workbench_readout}[method]

    def timed():
        r = fn(stack, u, targets)
        sync(device)
        return r

    ranks = benchmark.pedantic(timed, rounds=1 if QUICK else 3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({
        "role": "baseline" if method.startswith("ecco") else "workbench", "device": device,
        "lenses": size[0], "positions": size[1], "vocab": size[2], "d_model": size[3]})
    # Random logits have no ties, so every method gives the same ranks.
    assert torch.equal(ranks.cpu(), workbench_ranks(stack, u, targets).cpu())


def softmax_sort_topk(logits, k):
    probs = logits.softmax(-1)
    vals, ids = probs.sort(dim=-1, descending=True)
    return ids[:, :k], vals[:, :k]


def workbench_topk(logits, k):
    vals, ids = logits.topk(k, dim=-1)
    return ids, (vals - logits.logsumexp(-1, keepdim=True)).exp()


@pytest.mark.parametrize("size", TOPK_SIZES, ids=lambda s: f"R{s[0]}xV{s[1]}")
@pytest.mark.parametrize("method", ["softmax_sort", "workbench_topk"])
@pytest.mark.benchmark(group="lens-topk")
def test_lens_topk(benchmark, device, method, size):
    rows, vocab = size
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)).to(device)
    fn = softmax_sort_topk if method == "softmax_sort" else workbench_topk

    def timed():
        out = fn(logits, 10)
        sync(device)
        return out

    ids, probs = benchmark.pedantic(timed, rounds=1 if QUICK else 5, iterations=1)
    benchmark.extra_info.update({"role": "baseline" if method == "softmax_sort" else "workbench",
                                 "device": device, "rows": rows, "vocab": vocab, "k": 10})
    ref_ids, ref_probs = softmax_sort_topk(logits, 10)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(probs, ref_probs, rtol=1e-5, atol=1e-7)


PROBE = r"""
import json, resource, sys, torch
from workbench.analyses.lens import analyze
from workbench.data import from_text
from workbench.models.random_tiny import random_tiny
device, n_pos = sys.argv[1], int(sys.argv[2])
model = random_tiny(n_layers=12, d_model=64, d_vocab=50_000, n_ctx=n_pos, device=device)
text = "".join(chr(97 + (i * 7) % 26) for i in range(n_pos - 1))
windows = from_text(text, model.tokenizer, window=n_pos - 1)
analyze(model, from_text("warm up", model.tokenizer), k=10, progress=False)
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = analyze(model, windows, k=10, watch=[5, 6, 7], progress=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"positions": r.n_positions, "lenses": len(r.layer_labels), "vocab": model.cfg.d_vocab,
       "rss_before_kib": before, "rss_after_kib": after, "peak_bytes": (after - before) * 1024}
if device == "cuda":
    out["peak_bytes"] = torch.cuda.max_memory_allocated() - base
print(json.dumps(out))
"""


@pytest.mark.benchmark(group="lens-memory")
def test_lens_peak_memory(benchmark, device):
    n_pos = 64 if QUICK else 1024

    def probe():
        out = subprocess.run([sys.executable, "-c", PROBE, device, str(n_pos)], check=True,
                             capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        return json.loads(out.stdout.strip().splitlines()[-1])

    res = benchmark.pedantic(probe, rounds=1, iterations=1)
    unchunked = res["lenses"] * res["positions"] * res["vocab"] * 4
    benchmark.extra_info.update({"role": "workbench", "device": device, **res,
                                 "peak_mib": res["peak_bytes"] / 2**20,
                                 "unchunked_logits_mib": unchunked / 2**20})
    assert res["positions"] == n_pos
    assert res["peak_bytes"] < 2**30, res
