"""Capture over a file in windows: time, and memory as the file grows 10× (bounded).

``capture-memory``: fresh processes capture every residual hook *and* every attention pattern
(``[heads, query, key]`` per layer: ~9 KiB per token here, so holding on to what the stream
hands out would show at once) over 1× and 10× the tokens. The measure is the growth of the peak
RSS (VmHWM, see ``memprobe``) above the RSS just before the capture, with the model and windows
loaded; ``captured_mib`` is what keeping every activation would cost (the bytes handed to the
reducer). The assertion: 10× the tokens grows the peak by less than a quarter of the extra
activations captured (streaming keeps one batch; the rest is allocator noise).
"""

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
n_tokens, window = int(sys.argv[1]), int(sys.argv[2])
model = random_tiny(n_layers=4, d_model=64, n_heads=4, d_mlp=256, n_ctx=window + 1)
hooks = resid_hooks(model) + [f"blocks.{i}.attn.hook_pattern" for i in range(4)]
text = ("".join(chr(97 + (i * 7) % 26) for i in range(n_tokens)))
with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write(text)
w = load_windows(model, file=f.name, window=window)
before = reset_peak()
class Sum:  # a reducer that reads every activation and keeps one number
    name, hooks, need_logits = "sum", hooks, False
    total, captured = torch.zeros((), dtype=torch.float64), 0

    def accumulators(self):
        return {}

    def update(self, batch):
        for a in batch.acts.values():
            self.total += a.double().sum()
            self.captured += a.numel() * a.element_size()
r = Sum()
run(model, w, [r], batch_size=8, progress=False)
captured = r.captured
after = peak_kib()
print(json.dumps({"tokens": w.n_tokens, "windows": len(w), "rss_before_kib": before,
                  "rss_after_kib": after, "growth_kib": after - before,
                  "captured_mib": captured / 2**20}))
"""
WINDOW = 127


def peak(n_tokens: int) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(n_tokens), str(WINDOW)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="capture-memory")
def test_capture_memory_is_bounded_as_tokens_grow(benchmark):
    """Growth of the peak RSS above the pre-capture RSS, 1× vs 10× the tokens (fresh processes),
    against what holding every captured activation would add."""
    small, large = (2_000, 20_000) if QUICK else (5_000, 50_000)
    a, b = benchmark.pedantic(lambda: (peak(small), peak(large)), rounds=1, iterations=1)
    extra_growth_mib = (b["growth_kib"] - a["growth_kib"]) / 1024
    extra_captured_mib = b["captured_mib"] - a["captured_mib"]
    share = extra_growth_mib / extra_captured_mib
    benchmark.extra_info.update({
        "role": "workbench", "small": a, "large": b, "tokens": [a["tokens"], b["tokens"]],
        "peak_mib": b["rss_after_kib"] / 1024, "growth_mib": b["growth_kib"] / 1024,
        "growth_ratio_10x": b["growth_kib"] / max(a["growth_kib"], 1),
        "unbounded_mib": b["captured_mib"], "extra_growth_mib": extra_growth_mib,
        "growth_vs_captured": share, "goal_max": {"growth_vs_captured": 0.25},
        "goal": "10× tokens add < ¼ of the extra activations captured"})
    # Keeping every activation would add extra_captured_mib (160 MiB in quick mode).
    assert extra_captured_mib > 100, (a, b)  # so that unbounded growth could not hide in noise
    assert share < 0.25, (a, b)


@pytest.mark.benchmark(group="capture-throughput")
def test_capture_throughput(benchmark):
    from workbench.capture import resid_hooks, run
    from workbench.data import load_windows
    from workbench.models.random_tiny import random_tiny

    model = random_tiny(n_ctx=256)
    w = load_windows(model, text="abcdefghij" * (50 if QUICK else 1000), window=255)

    class Nothing:
        name, hooks, need_logits = "nothing", resid_hooks(model), False

        def accumulators(self):
            return {}

        def update(self, batch):
            pass

    def go():
        return run(model, w, [Nothing()], batch_size=8, progress=False)

    stats = benchmark.pedantic(go, rounds=1 if QUICK else 3, iterations=1)
    benchmark.extra_info.update({"role": "workbench", "tokens": w.n_tokens,
                                 "tokens_per_s": stats.tokens_per_s,
                                 "threads": torch.get_num_threads()})


# --- the corpus pass of `workbench run` ------------------------------------------------------

CORPUS_DOCS = 300 if QUICK else 3000
CORPUS_BATCH = 16


@pytest.fixture(scope="module")
def corpus():
    from itertools import islice

    from workbench import load_model
    from workbench.corpus import gloss_documents
    from workbench.data import load_windows

    model = load_model("tiny-gloss-lm", device="cpu")
    docs = list(islice(gloss_documents("validation"), CORPUS_DOCS))
    return model, load_windows(model, text=docs, window=64)  # one window per gloss, mostly


def _lens_floor(model, windows) -> None:
    """The bare forward over the same windows (in window order, as a notebook loops) plus the
    lens floor: every lens's residuals through ln_final and the unembedding (the matmuls no
    lens can skip)."""
    from workbench.capture import resid_hooks

    hooks = resid_hooks(model)
    with torch.inference_mode():
        for _, tok, _m in windows.batches(CORPUS_BATCH):
            _, cache = model.run_with_cache(tok, names_filter=hooks)
            stack = torch.stack([cache[h] for h in hooks])
            model.unembed(model.ln_final(stack.flatten(0, 1)))


def _corpus_pass(model, windows):
    from workbench.analyses.amap_reducer import AmapReducer
    from workbench.analyses.distributions import DistributionsReducer
    from workbench.analyses.lens_reducer import LensReducer
    from workbench.capture import run

    reducers = [DistributionsReducer(model, windows), LensReducer(model, windows),
                AmapReducer(model, windows, modes=("input",))]
    return run(model, windows, reducers, batch_size=CORPUS_BATCH, progress=False)


@pytest.mark.parametrize("impl", ["bare_forward_and_lens_floor", "workbench_corpus_pass"])
@pytest.mark.benchmark(group="corpus-pass")
def test_corpus_pass_vs_forward_and_lens_floor(benchmark, impl, corpus):
    """`workbench run`'s corpus phase (distributions + lens + AMAP reducers, one pass) against
    the bare forward over the same windows plus the unembedding matmuls of every lens. Also the
    share of forwarded positions that are padding: batches in window order vs by length."""
    from workbench.capture import batch_plan, padding_share

    model, windows = corpus
    rounds = 1 if QUICK else 3
    if impl == "bare_forward_and_lens_floor":
        benchmark.pedantic(_lens_floor, args=(model, windows), rounds=rounds, iterations=1)
        in_order = list(torch.arange(len(windows)).split(CORPUS_BATCH))
        benchmark.extra_info.update({"role": "baseline", "tokens": windows.n_tokens,
                                     "padding_share": padding_share(windows, in_order)})
        return
    stats = benchmark.pedantic(_corpus_pass, args=(model, windows), rounds=rounds, iterations=1)
    by_length = padding_share(windows, batch_plan(windows, CORPUS_BATCH))
    assert abs(stats.padding_share - by_length) < 1e-9 and by_length < 0.10
    benchmark.extra_info.update({"role": "workbench", "tokens": windows.n_tokens,
                                 "tokens_per_s": windows.n_tokens / benchmark.stats.stats.median,
                                 "padding_share": by_length, "goal_ratio": 1 / 1.3,
                                 "goal": "corpus pass ≤ 1.3× forward + lens floor"})
