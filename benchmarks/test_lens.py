"""Logit lens: ranks vs ecco's full argsort, top-k vs softmax + sort, and peak memory.

- ``lens-ranks``: ranks of the next token for every lens × position, on the same lens logits:
  ecco sorts the whole vocabulary per layer to find one rank; the workbench counts the logits
  strictly greater (``target_ranks``). Goal: ≥ 10× ecco.
- ``lens-ranks-from-residuals``: the same from the residual stack, projection included (the same
  matmul in every method), as ranks only and as the analysis' full read-out (top-k, ranks,
  entropy, KL, agreement), which does strictly more work than ecco.
- ``lens-topk``: top-k ids and probabilities from logits: full softmax + descending sort vs
  ``topk`` + ``logsumexp``.
- ``lens-memory``: the whole ``analyze`` of a 12-layer, 50k-vocab random model at 1,024 positions
  in a fresh process; the peak must stay under 1 GiB (the unchunked logits alone would be 2.5 GiB).
  Measured as the growth of the process' peak RSS (``VmHWM`` after resetting it via
  ``/proc/self/clear_refs``, minus ``VmRSS`` before): a child's ``ru_maxrss`` starts at its
  parent's high-water mark (Linux carries it through exec), so its delta can read 0; it is
  recorded too.
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
RANK_SIZES = [(5, 32, 2_000, 64)] if QUICK else [(5, 32, 2_000, 64), (13, 128, 50_000, 128)]
TOPK_SIZES = [(64, 2_000)] if QUICK else [(64, 2_000), (1024, 50_000)]


def _setup(size, device):
    n_lens, pos, vocab, d = size
    g = torch.Generator().manual_seed(0)
    stack = torch.randn(n_lens, 1, pos, d, generator=g).to(device)
    ln = torch.nn.LayerNorm(d).to(device)
    u = Unembed((torch.randn(d, vocab, generator=g) / d**0.5).to(device), None, ln)
    targets = torch.randint(0, vocab, (1, pos), generator=g).to(device)
    return stack, u, targets


def argsort_rank(logits, targets):
    """ecco's rank: sort the whole vocabulary (descending), find where the target landed."""
    order = torch.argsort(logits, dim=-1, descending=True)
    return (order == targets[:, None]).nonzero()[:, 1] + 1


def ecco_ranks_of_logits(logits, targets):
    return torch.stack([argsort_rank(logits[layer], targets[0]) for layer in range(len(logits))])


def workbench_ranks_of_logits(logits, targets):
    return target_ranks(logits, targets[0, :, None].expand(len(logits), -1, 1))[..., 0]


def ecco_ranks(stack, u, targets):
    """ecco's rankings from the residuals: per layer, project, then sort the vocabulary."""
    with torch.no_grad():
        return torch.stack([argsort_rank(project(stack[layer, 0], u, "final_ln"), targets[0])
                            for layer in range(stack.shape[0])])


def workbench_ranks(stack, u, targets):
    with torch.no_grad():
        return workbench_ranks_of_logits(project(stack[:, 0], u, "final_ln"), targets)


def workbench_readout(stack, u, targets):
    """The analysis' whole read-out: top-k, ranks, entropy, KL, agreement, chunked."""
    with torch.no_grad():
        return logit_lens(stack, u, mode="final_ln", k=10, targets=targets).ranks[:, 0]


def _role(method: str) -> str:
    return "baseline" if method.startswith("ecco") else "workbench"


@pytest.mark.parametrize("size", RANK_SIZES, ids=lambda s: f"L{s[0]}xP{s[1]}xV{s[2]}")
@pytest.mark.parametrize("method", ["ecco_argsort", "workbench_count_greater"])
@pytest.mark.benchmark(group="lens-ranks")
def test_lens_ranks(benchmark, device, method, size):
    """The ranking step alone, on the same lens logits [lenses, positions, vocab]."""
    stack, u, targets = _setup(size, device)
    with torch.no_grad():
        logits = project(stack[:, 0], u, "final_ln")
    fn = ecco_ranks_of_logits if method == "ecco_argsort" else workbench_ranks_of_logits

    def timed():
        r = fn(logits, targets)
        sync(device)
        return r

    ranks = benchmark.pedantic(timed, rounds=1 if QUICK else 3, iterations=1)
    benchmark.extra_info.update({"role": _role(method), "device": device, "lenses": size[0],
                                 "positions": size[1], "vocab": size[2]})
    if _role(method) == "workbench":
        benchmark.extra_info.update({"goal_ratio": 10.0, "goal": "≥ 10× ecco's argsort"})
    # Equal wherever the target's logit is not tied (argsort orders ties arbitrarily).
    picked = logits.gather(-1, targets[0, :, None].expand(len(logits), -1, 1))
    untied = (logits == picked).sum(-1) == 1
    ref = workbench_ranks_of_logits(logits, targets)
    assert untied.float().mean() > 0.9 and torch.equal(ranks[untied], ref[untied])


def _from_residuals(benchmark, device, size, fn, role):
    stack, u, targets = _setup(size, device)

    def timed():
        r = fn(stack, u, targets)
        sync(device)
        return r

    ranks = benchmark.pedantic(timed, rounds=1 if QUICK else 3, iterations=1)
    benchmark.extra_info.update({"role": role, "device": device, "lenses": size[0],
                                 "positions": size[1], "vocab": size[2], "d_model": size[3]})
    # Per-layer vs batched matmuls round differently, which can swap near-tied logits: ranks
    # agree exactly almost everywhere and by a step or two where they do not.
    ref = workbench_ranks(stack, u, targets)
    assert (ranks == ref).float().mean() > 0.98 and (ranks - ref).abs().max() <= 3


# One test function per method so the ratio table (benchmarks/report.py) keeps a row for each.
RESID_SIZES = pytest.mark.parametrize("size", RANK_SIZES,
                                      ids=lambda s: f"L{s[0]}xP{s[1]}xV{s[2]}xD{s[3]}")


@RESID_SIZES
@pytest.mark.benchmark(group="lens-ranks-from-residuals")
def test_ecco_argsort_from_residuals(benchmark, device, size):
    """ecco: per layer, project (ln_final + unembed), argsort the vocabulary, find the target."""
    _from_residuals(benchmark, device, size, ecco_ranks, "baseline")


@RESID_SIZES
@pytest.mark.benchmark(group="lens-ranks-from-residuals")
def test_workbench_ranks_from_residuals(benchmark, device, size):
    """Project all lenses, count the logits strictly greater than the target's."""
    _from_residuals(benchmark, device, size, workbench_ranks, "workbench")


@RESID_SIZES
@pytest.mark.benchmark(group="lens-ranks-from-residuals")
def test_workbench_full_readout_from_residuals(benchmark, device, size):
    """The analysis' chunked read-out: top-k, ranks, entropy, KL and agreement together."""
    _from_residuals(benchmark, device, size, workbench_readout, "workbench")


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
import json, re, resource, sys, torch
from workbench.analyses.lens import analyze
from workbench.data import from_text
from workbench.models.random_tiny import random_tiny

def status(key):
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return None
    m = re.search(key + r":\s+(\d+) kB", text)
    return int(m.group(1)) if m else None

device, n_pos = sys.argv[1], int(sys.argv[2])
model = random_tiny(n_layers=12, d_model=64, d_vocab=50_000, n_ctx=n_pos, device=device)
text = "".join(chr(97 + (i * 7) % 26) for i in range(n_pos - 1))
windows = from_text(text, model.tokenizer, window=n_pos - 1)
analyze(model, from_text("warm up", model.tokenizer), k=10, progress=False)
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # reset this process' peak RSS (VmHWM) to its current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss_before = status("VmRSS")
except OSError:
    rss_before = None
r = analyze(model, windows, k=10, watch=[5, 6, 7], progress=False)
ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hwm = status("VmHWM")
out = {"positions": r.n_positions, "lenses": len(r.layer_labels), "vocab": model.cfg.d_vocab,
       "ru_maxrss_before_kib": ru_before, "ru_maxrss_after_kib": ru_after,
       "ru_maxrss_delta_bytes": (ru_after - ru_before) * 1024}
if rss_before is not None and hwm is not None:
    out.update({"vmrss_before_kib": rss_before, "vmhwm_after_kib": hwm,
                "peak_bytes": (hwm - rss_before) * 1024, "measure": "VmHWM - VmRSS"})
else:
    out.update({"peak_bytes": out["ru_maxrss_delta_bytes"], "measure": "ru_maxrss delta"})
if device == "cuda":
    out.update({"peak_bytes": torch.cuda.max_memory_allocated() - base,
                "cuda_peak_bytes": torch.cuda.max_memory_allocated(),
                "measure": "cuda max_memory_allocated"})
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
    peak = res.get("cuda_peak_bytes") or (res.get("vmhwm_after_kib") or 0) * 1024
    benchmark.extra_info.update({"role": "workbench", "device": device, **res,
                                 "tokens": res["positions"], "peak_mib": peak / 2**20 or None,
                                 "growth_mib": res["peak_bytes"] / 2**20,
                                 "unchunked_logits_mib": unchunked / 2**20,
                                 "goal_max": {"growth_mib": 1024}, "goal": "growth < 1 GiB"})
    assert res["positions"] == n_pos
    assert res["peak_bytes"] < 2**30, res
