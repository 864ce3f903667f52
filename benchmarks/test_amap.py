"""AMAP: the per-batch update against SYSIF's, and a whole build against the bare forward pass.

- ``amap-update``: one batch of MLP activations folded into the map. SYSIF: per layer a dense
  one-hot ``[positions, V]`` matmul gives the batch's per-token sums, then an fp16 running mean over
  all V rows is updated (and re-rounded) every batch. Workbench: ``Amap.update`` (one
  ``index_add_`` per mode into fp32 sums, a ``bincount`` for the counts). Input mode, no positions,
  on both. On CPU the baseline's matmul runs in fp32 (fp16 matmul is emulated on CPU and would
  flatter us); on CUDA it runs in fp16 as SYSIF did. Goal: >= 5x faster on CPU.
- ``amap-build``: ``analyze`` (both modes, max-activating windows, contexts, checkpoints off) over
  the windows of a text against the bare ``model(tokens)`` under ``inference_mode`` over the same
  windows and batches (logits included: output mode needs them). Goal: build <= 1.3x forward.
  The model is random with tiny-gloss-lm's shape (4 layers, d_model 128, d_mlp 512, V 8192).
"""

import pytest
import torch
from conftest import QUICK, sync

from workbench.kernels.amap import Amap

# (layers, vocab, d_mlp, batch, positions)
UPDATE_SIZES = [(2, 1_000, 256, 8, 15)] if QUICK else [
    (4, 8_192, 512, 8, 15),  # tiny-gloss-lm, SYSIF's window
    (6, 50_304, 2_048, 32, 15),  # pythia-70m-deduped, SYSIF's study
]
BUILD_TOKENS = 600 if QUICK else 60_000


class SysifAmap:
    """SYSIF's accumulation: dense one-hot matmul per batch, fp16 running mean of all V rows."""

    def __init__(self, n_layers, vocab, d_mlp, device, matmul_dtype):
        self.mean = torch.zeros(n_layers, vocab, d_mlp, dtype=torch.float16, device=device)
        self.count = torch.zeros(vocab, dtype=torch.float32, device=device)
        self.vocab, self.dtype = vocab, matmul_dtype

    def update(self, acts, mask, keys):
        flat = mask.flatten()
        k = keys.flatten()[flat]
        onehot = torch.nn.functional.one_hot(k, self.vocab).to(self.dtype)  # [N, V]
        batch_count = onehot.sum(0).float()
        new_count = self.count + batch_count
        denom = new_count.clamp(min=1)[:, None]
        for layer in range(self.mean.shape[0]):
            a = acts[layer].flatten(0, 1)[flat].to(self.dtype)  # [N, d]
            batch_sum = (onehot.T @ a).float()  # [V, d]
            m = self.mean[layer].float()
            self.mean[layer] = (m + (batch_sum - batch_count[:, None] * m) / denom).half()
        self.count = new_count


def _batch(size, device):
    n_layers, vocab, d_mlp, batch, pos = size
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(n_layers, batch, pos, d_mlp, generator=g).to(device)
    mask = torch.ones(batch, pos, dtype=torch.bool, device=device)
    mask[0, pos // 2 :] = False
    keys = torch.randint(0, vocab, (batch, pos), generator=g).to(device)
    return acts, mask, keys


@pytest.mark.parametrize("size", UPDATE_SIZES, ids=lambda s: f"L{s[0]}-V{s[1]}-d{s[2]}-b{s[3]}")
@pytest.mark.parametrize("impl", ["sysif", "workbench"])
@pytest.mark.benchmark(group="amap-update")
def test_amap_update(benchmark, device, impl, size):
    acts, mask, keys = _batch(size, device)
    n_layers, vocab, d_mlp, batch, pos = size
    if impl == "sysif":
        dtype = torch.float16 if device == "cuda" else torch.float32
        acc = SysifAmap(n_layers, vocab, d_mlp, device, dtype)

        def step():
            acc.update(acts, mask, keys)
            sync(device)
    else:
        acc = Amap(n_layers, vocab, d_mlp, ("input",), 0, torch.float32, device)

        def step():
            acc.update(acts, mask, {"input": keys})
            sync(device)

    benchmark.pedantic(step, rounds=3 if QUICK else 10, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"role": "baseline" if impl == "sysif" else "workbench",
                                 "layers": n_layers, "vocab": vocab, "d_mlp": d_mlp,
                                 "positions": int(mask.sum()), "device": device})
    # what was timed is right: both saw the same positions for token keys[0, 0]
    t = int(keys[0, 0])
    if impl == "workbench":
        assert int(acc.counts["input"][t]) >= 1


@pytest.fixture(scope="module")
def build_setup():
    from workbench.data import load_windows
    from workbench.models.random_tiny import random_tiny

    models = {}

    def get(device):
        if device not in models:
            model = random_tiny(n_layers=4, d_model=128, n_heads=4, d_mlp=512, d_vocab=8192,
                                device=device)
            g = torch.Generator().manual_seed(0)
            text = "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (BUILD_TOKENS,),
                                                                    generator=g))
            words = " ".join(text[i : i + 6] for i in range(0, len(text), 6))
            w = load_windows(model, text=words, window=15, stride=15, bos=False)
            models[device] = (model, w)
        return models[device]

    return get


@pytest.mark.parametrize("impl", ["bare_forward", "workbench"])
@pytest.mark.benchmark(group="amap-build")
def test_amap_build_vs_forward(benchmark, device, impl, build_setup):
    from workbench.analyses.amap import analyze

    model, w = build_setup(device)
    batch_size = 32

    def bare():
        with torch.inference_mode():
            for _, tok, _m in w.batches(batch_size):
                model(tok.to(device))
        sync(device)

    def ours():
        r = analyze(model, w, batch_size=batch_size, progress=False, modes=("input", "output"))
        sync(device)
        return r

    out = benchmark.pedantic(bare if impl == "bare_forward" else ours,
                             rounds=1 if QUICK else 3, iterations=1, warmup_rounds=0 if QUICK else 1)
    benchmark.extra_info.update({"role": "baseline" if impl == "bare_forward" else "workbench",
                                 "windows": len(w), "tokens": w.n_tokens, "batch_size": batch_size,
                                 "device": device})
    if impl == "workbench":
        assert all(out.invariants.values())
