"""``tiny-gloss-lm``: the workbench's own small causal LM, loaded offline from the package.

1. ``model = load_tiny_gloss_lm()`` (or ``workbench.load_model("tiny-gloss-lm")``).
2. It is a 4-layer GPT-style ``HookedTransformer`` (d_model 128, 4 heads, d_mlp 512, n_ctx 128,
   LayerNorm, GELU, 8192-token byte-level BPE) trained on WordNet 3.0 glosses by
   ``python -m workbench.training.train_gloss_lm``; see ``MODEL_CARD.md`` in its folder.
3. Weights ship as fp16 safetensors and are cast to the requested dtype on load.
4. Prompts look like the training documents: ``"cat, true cat:"``. End a prompt without a trailing
   space: a lone space is a token the model never saw before a word.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.errors import WorkbenchError

MODEL_DIR = Path(__file__).parent / "tiny_gloss_lm"
RETRAIN = "python -m workbench.training.train_gloss_lm --out workbench/models/tiny_gloss_lm"


def build_model(
    folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> HookedTransformer:
    """A ``HookedTransformer`` from a folder written by the training script.

    The folder holds ``config.json`` (HookedTransformerConfig fields), ``model.safetensors`` and
    ``tokenizer/``. Weights are converted to ``dtype`` on ``device``; the model is in eval mode.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = Path(folder)
    needed = [folder / "config.json", folder / "model.safetensors", folder / "tokenizer"]
    missing = [p.name for p in needed if not p.exists()]
    if missing:
        raise WorkbenchError(
            f"the tiny-gloss-lm folder {folder} lacks {', '.join(missing)}. Reinstall the "
            f"workbench package, or retrain the model into it: `{RETRAIN}` (about 22 min on an idle 2-core machine)."
        )
    fields = json.loads((folder / "config.json").read_text())
    cfg = HookedTransformerConfig(**fields, device=device, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    with warnings.catch_warnings():  # TL 3.9 flags HookedTransformer for 4.0; we pin 3.9
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state = {k: v.to(dtype) for k, v in load_file(str(folder / "model.safetensors")).items()}
    result = model.load_state_dict(state, strict=False)
    # Only the causal-mask buffers (rebuilt by the constructor) are not stored.
    absent = [k for k in result.missing_keys if not k.endswith((".mask", ".IGNORE"))]
    if absent or result.unexpected_keys:
        raise WorkbenchError(
            f"{folder / 'model.safetensors'} does not match config.json (missing {absent[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); retrain with `{RETRAIN}`."
        )
    model.to(device, print_details=False)
    model.eval()
    model.workbench_info = {"weight_processing": "none"}
    return model


def load_tiny_gloss_lm(device: str = "cpu", dtype: torch.dtype = torch.float32) -> HookedTransformer:
    """The packaged ``tiny-gloss-lm`` (offline; ~0.1 s on CPU)."""
    return build_model(MODEL_DIR, device=device, dtype=dtype)
