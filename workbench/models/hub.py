"""TransformerLens official models, loaded from the Hugging Face hub when it is reachable."""

import os
import socket
import threading
from functools import cache
from urllib.parse import urlsplit

import torch

from workbench.errors import OfflineError

HUB_URL = "https://huggingface.co"
PROCESSED = "fold_ln, center_writing_weights, center_unembed, fold_value_biases (TL defaults)"


@cache
def official_names() -> list[str]:
    """TransformerLens official model names and their short aliases."""
    from transformer_lens import loading_from_pretrained as loading

    names = list(loading.OFFICIAL_MODEL_NAMES)
    for aliases in loading.MODEL_ALIASES.values():
        names += [a for a in aliases if a not in names]
    return names


def hub_address() -> tuple[str, int]:
    """Host and port of the hub: ``HF_ENDPOINT`` (a mirror, as huggingface_hub reads it) or
    huggingface.co."""
    url = urlsplit(os.environ.get("HF_ENDPOINT") or HUB_URL)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the hub answers a TCP connect within ``timeout`` seconds (DNS included)."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "TRUE", "yes"):
        return False
    address = hub_address()
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except Exception:  # refused, no route, DNS failure, a sandbox's guard: not reachable
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # DNS lookups ignore the socket timeout; never wait past this
    return bool(result and result[0])


def _cached_locally(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        from transformer_lens import loading_from_pretrained as loading

        official = loading.get_official_model_name(name)
        hit = try_to_load_from_cache(official, "config.json")
        return isinstance(hit, str)
    except Exception:
        return False


def load_from_hub(name: str, device: str, dtype: torch.dtype, offline_models: list[str],
                  processing: bool = False, hf_model=None, tokenizer=None):
    """A TransformerLens official model. ``processing=False`` (default): no weight processing
    (no fold_ln, no centring, no folded value biases), so hidden states are HF's
    ``hidden_states`` and the ``raw`` lens is ecco's raw; ``True``: TL's ``from_pretrained``
    defaults. The choice is recorded in ``model.workbench_info`` and every artifact's metadata.
    ``hf_model``/``tokenizer``: an HF model already in memory (built offline), converted as is."""
    if hf_model is None and not _cached_locally(name) and not hub_reachable():
        raise OfflineError(
            f"model {name!r} must be downloaded from the Hugging Face hub, and no hub is reachable "
            f"from this machine. Offline models: {', '.join(offline_models)} "
            "(e.g. `--model tiny-gloss-lm`), or run where the hub is reachable once to cache it."
        )
    from transformer_lens import HookedTransformer

    if _cached_locally(name):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    given = {} if hf_model is None else {"hf_model": hf_model, "tokenizer": tokenizer}
    load = HookedTransformer.from_pretrained if processing else \
        HookedTransformer.from_pretrained_no_processing
    model = load(name, device=device, dtype=dtype, **given)
    model.eval()
    model.workbench_info = {"weight_processing": PROCESSED if processing else "none"}
    return model
