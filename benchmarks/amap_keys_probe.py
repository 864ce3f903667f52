"""Fresh-process probe: build an AMAP and report its keys, state, artifact and peak memory.

``python amap_keys_probe.py MODEL N_DOCS LAYERS MODES`` (LAYERS ``all`` or ``0,8,17``; MODES
``input`` or ``input,output``): the first N_DOCS WordNet glosses in SYSIF's 15-token windows.
Prints one JSON line: keys seen per mode, the states' bytes, the artifact's bytes, what the dense
(v1) AMAP of the same layers would hold, the peak RSS growth of the build, tokens and seconds.
Used by benchmarks/test_amap.py and benchmarks/test_gemma.py (``amap-keys-memory``).
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from memprobe import peak_kib, reset_peak

from workbench import load_model
from workbench.analyses.amap import build
from workbench.data import load_windows
from workbench.identity import weights_hash


def main() -> None:
    name, n_docs, layers, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(2)
    model = load_model(name, device="cpu")
    w = load_windows(model, dataset="wordnet-glosses", limit=n_docs, window=15, stride=15,
                     bos=False)
    chosen = None if layers == "all" else [int(x) for x in layers.split(",")]
    out = Path(tempfile.mkdtemp())
    # touch every weight first (the weights hash reads them all, a forward runs them): a model
    # loaded from its cache is paged in lazily, which is not the build's memory
    weights_hash(model)
    with torch.inference_mode():
        model(w.tokens[:1], stop_at_layer=None)
    before = reset_peak()
    t = time.perf_counter()
    r = build(model, w, out, modes=tuple(modes.split(",")), layers=chosen, progress=False,
              batch_size=32, context_units=0)
    seconds = time.perf_counter() - t
    growth = (peak_kib() - before) * 1024
    state = sum(t.numel() * t.element_size() for t in r.amap.states.values())
    cfg = model.cfg
    n_layers = len(r.layers)
    dense = len(r.modes) * (n_layers * cfg.d_vocab * cfg.d_mlp * 4 + cfg.d_vocab * 8)
    print(json.dumps({
        "model": name, "documents": n_docs, "layers": r.layers, "modes": list(r.modes),
        "tokens": int(w.n_tokens), "keys": {m: int(r.keys(m).numel()) for m in r.modes},
        "state_mib": state / 2**20, "artifact_mib": (out / "amap.safetensors").stat().st_size / 2**20,
        "dense_v1_mib": dense / 2**20, "growth_mib": growth / 2**20, "seconds": seconds,
        "tokens_per_s": w.n_tokens / seconds}))


if __name__ == "__main__":
    main()
