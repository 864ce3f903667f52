"""Attention: every head's pattern on one window, and the query·key products behind one layer's.

>>> r = analyze(model, load_windows(model, text="The cat sat on the mat"))     # doctest: +SKIP
>>> r.patterns.shape          # [layer, head, query, key] = cache["pattern", l][0] stacked    # doctest: +SKIP
>>> r.neuron.products.shape   # [head, key, d_head]: q_d · k_d / attn_scale at one query      # doctest: +SKIP
>>> enc = analyze(minilm, load_windows(minilm, text="A man eats."), text_b="Someone is eating.")  # doctest: +SKIP

The views are bertviz's three (head view, model view, neuron view), built offline by
``workbench.views.attention``. Patterns come from ``blocks.{l}.attn.hook_pattern``; the neuron
view reads ``hook_q``/``hook_k`` (``hook_rot_q``/``hook_rot_k`` for rotary models) of one layer and
shows that ``softmax(Σ_d q_d k_d / attn_scale)`` with the model's mask reproduces the pattern.
Encoders (``minilm``) take a sentence pair: ``text_b`` is appended as ``[SEP] B [SEP]`` with
token type 1, as BERT was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor

from workbench import artifacts, capture
from workbench.data import Windows
from workbench.errors import WorkbenchError
from workbench.results import ResultMixin

ARTIFACT = "attention.safetensors"


@dataclass
class NeuronView:
    """bertviz's neuron view for one layer and one query position, every head."""

    layer: int
    query: int
    q: Float[Tensor, "head d_head"]
    k: Float[Tensor, "head key d_head"]
    products: Float[Tensor, "head key d_head"]  # q_d · k_d / attn_scale
    scores: Float[Tensor, "head key"]  # Σ_d products, −inf where the mask forbids
    attention: Float[Tensor, "head key"]  # softmax(scores)
    attn_scale: float
    max_abs_diff: float  # |softmax(scores) − pattern| at this query, max over heads and keys


@dataclass(repr=False)
class AttentionResult(ResultMixin):
    tokens: Int[Tensor, " pos"]
    token_type_ids: Int[Tensor, " pos"]  # 0 everywhere, 1 on sentence B of a pair
    patterns: Float[Tensor, "layer head query key"]
    token_strs: list[str]
    neuron: NeuronView
    causal: bool
    window_index: int = 0
    n_windows: int = 1
    truncated_from: int | None = None  # original length when max_positions cut the window
    meta: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.patterns.shape[1])

    def summary(self) -> dict:
        """Key numbers for summary.json."""
        p = self.patterns.double().clamp_min(1e-30)
        entropy = -(p * p.log()).sum(-1).mean((-1,))  # [layer, head], mean over queries
        return {
            "positions": int(self.tokens.shape[0]), "layers": self.n_layers, "heads": self.n_heads,
            "window_index": self.window_index, "n_windows": self.n_windows,
            "mean_entropy_nats_by_layer": [round(float(x), 4) for x in entropy.mean(1)],
            "neuron_view": {"layer": self.neuron.layer, "query": self.neuron.query,
                            "max_abs_diff_vs_pattern": self.neuron.max_abs_diff},
        }

    def to_frame(self):
        """One row per (layer, head): mean attention entropy over queries (nats) and the mean
        attention on position 0 (a BOS sink)."""
        import pandas as pd

        p = self.patterns.double()
        entropy = -(p.clamp_min(1e-30).log() * p).sum(-1).mean(-1)
        sink = p[..., 0].mean(-1)
        rows = [{"layer": layer, "head": h, "entropy": float(entropy[layer, h]),
                 "attention_to_first": float(sink[layer, h])}
                for layer in range(self.n_layers) for h in range(self.n_heads)]
        return pd.DataFrame(rows).set_index(["layer", "head"])

    def tensors(self) -> dict[str, Tensor]:
        n = self.neuron
        out = {"tokens": self.tokens, "token_type_ids": self.token_type_ids,
               "patterns": self.patterns, "neuron.q": n.q, "neuron.k": n.k,
               "neuron.products": n.products, "neuron.scores": n.scores,
               "neuron.attention": n.attention,
               "neuron.layer_query": torch.tensor([n.layer, n.query], dtype=torch.long)}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def figures(self) -> dict:
        from workbench.views import attention as view

        return view.figures(self)

    def save(self, out_dir: str | Path) -> Path:
        meta = {**self.meta, "tokens_text": self.token_strs, "causal": self.causal,
                "window_index": self.window_index, "truncated_from": self.truncated_from,
                "neuron_attn_scale": self.neuron.attn_scale}
        return artifacts.save(Path(out_dir) / ARTIFACT, self.tensors(), meta)


def _pair_tokens(model, a: Tensor, text_b: str) -> tuple[Tensor, Tensor]:
    """``[CLS] A [SEP] B [SEP]`` and its token type ids, from window tokens of A."""
    tok = model.tokenizer
    cls, sep = tok.cls_token_id, tok.sep_token_id
    if cls is None or sep is None:
        raise WorkbenchError(f"{model.cfg.model_name}'s tokenizer has no [CLS]/[SEP]: "
                             "sentence pairs need a BERT-style encoder such as minilm")
    ids = a.tolist()
    ids = ([cls] if not ids or ids[0] != cls else []) + ids
    ids = ids + ([sep] if ids[-1] != sep else [])
    b = tok(text_b, add_special_tokens=False)["input_ids"]
    if not b:
        raise WorkbenchError("text_b is empty: give the second sentence of the pair")
    types = [0] * len(ids) + [1] * (len(b) + 1)
    ids = ids + b + [sep]
    if len(ids) > model.cfg.n_ctx:
        raise WorkbenchError(f"the pair is {len(ids)} tokens, over the model's context of "
                             f"{model.cfg.n_ctx}; shorten the sentences")
    return torch.tensor(ids), torch.tensor(types)


def _qk_hooks(model, layer: int) -> tuple[str, str]:
    rot = f"blocks.{layer}.attn.hook_rot_q"
    if getattr(model.cfg, "positional_embedding_type", "standard") == "rotary" and rot in model.hook_dict:
        return rot, f"blocks.{layer}.attn.hook_rot_k"
    return f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"


def _run(model, tokens: Tensor, types: Tensor, hooks: list[str]) -> dict[str, Tensor]:
    device = next(model.parameters()).device
    tokens, types = tokens[None].to(device), types[None].to(device)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    if not capture.is_encoder(model):
        return capture.forward(model, tokens, mask, hooks)[0]
    acts: dict[str, Tensor] = {}

    def keep(t: Tensor, hook) -> None:
        acts[hook.name] = t

    # capture.forward has no token types; a pair needs them (segment embeddings).
    with torch.inference_mode(), model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
        model(tokens, token_type_ids=types, one_zero_attention_mask=mask.long())
    return acts


def sliding_window(model, layer: int) -> int | None:
    """The key window of a local (sliding-window) attention layer, None for a global one."""
    attn = model.blocks[layer].attn
    if getattr(attn, "attn_type", "global") == "local":
        return int(model.cfg.window_size)
    return None


def layer_kinds(model) -> list[str]:
    """Per layer: "global", or "local (window N)" for sliding-window layers (Gemma 3: 5 of 6)."""
    out = []
    for layer in range(int(model.cfg.n_layers)):
        w = sliding_window(model, layer)
        out.append("global" if w is None else f"local (window {w})")
    return out


def neuron_view(model, q: Float[Tensor, "head d_head"], k: Float[Tensor, "head key d_head"],
                pattern_row: Float[Tensor, "head key"], layer: int, query: int,
                causal: bool) -> NeuronView:
    """Per-dimension products q_d·k_d / attn_scale; their sums, masked and softmaxed, are the row.

    ``q``/``k`` are what really make the scores: after q/k norm and rotary when the model has
    them (``hook_rot_q``/``hook_rot_k``), keys repeated per query group for grouped-query
    attention; the mask is causal, and limited to the window on sliding-window layers."""
    scale = float(model.blocks[layer].attn.attn_scale)
    q64, k64 = q.double(), k.double()
    products = einsum(q64, k64, "head d, head key d -> head key d") / scale
    scores = products.sum(-1)
    if causal:
        keys = torch.arange(k.shape[1], device=scores.device)
        forbidden = keys > query
        window = sliding_window(model, layer)
        if window is not None:  # Gemma's local layers: only the last `window` keys
            forbidden |= keys <= query - window
        scores = scores.masked_fill(forbidden, float("-inf"))
    softcap = getattr(model.cfg, "attn_scores_soft_cap", -1.0) or -1.0
    if softcap > 0:  # Gemma-2 style capping happens before the mask
        scores = softcap * torch.tanh(scores / softcap)
    attention = scores.softmax(-1)
    diff = float((attention - pattern_row.double()).abs().max())
    return NeuronView(layer, query, q.float().cpu(), k.float().cpu(), products.float().cpu(),
                      scores.float().cpu(), attention.float().cpu(), scale, diff)


def analyze(
    model,
    windows: Windows,
    *,
    batch_size: int = 8,
    progress: bool = True,
    window_index: int = 0,
    text_b: str | None = None,
    layer: int = -1,
    query: int = -1,
    max_positions: int | None = None,
) -> AttentionResult:
    """Attention patterns of every layer and head on window ``window_index``.

    ``layer``/``query`` pick the neuron view (default: last layer, last position).
    ``max_positions`` keeps the first N tokens (for causal models that is exact: later tokens
    never change earlier patterns). ``batch_size``/``progress`` are accepted for the common
    signature; one window is one forward pass.
    """
    del batch_size, progress
    if not 0 <= window_index < len(windows):
        raise WorkbenchError(f"window {window_index} does not exist: the input has {len(windows)} "
                             f"window(s); use 0..{len(windows) - 1}")
    causal = not capture.is_encoder(model)
    tokens = windows.tokens[window_index][windows.mask[window_index]]
    truncated_from = None
    if max_positions is not None:
        if max_positions < 2:
            raise WorkbenchError(f"max_positions must be >= 2, got {max_positions}")
        if tokens.shape[0] > max_positions:
            truncated_from, tokens = int(tokens.shape[0]), tokens[:max_positions]
    if text_b is not None:
        if causal:
            raise WorkbenchError("sentence pairs (text_b) are for encoders such as minilm; for a "
                                 "causal model put both sentences in the text")
        tokens, types = _pair_tokens(model, tokens, text_b)
    else:
        types = torch.zeros_like(tokens)
    n_layers, pos = int(model.cfg.n_layers), int(tokens.shape[0])
    layer = layer + n_layers if layer < 0 else layer
    query = query + pos if query < 0 else query
    if not 0 <= layer < n_layers:
        raise WorkbenchError(f"layer must be in 0..{n_layers - 1} (or negative from the end)")
    if not 0 <= query < pos:
        raise WorkbenchError(f"query position must be in 0..{pos - 1} (or negative from the end)")
    hq, hk = _qk_hooks(model, layer)
    pattern_hooks = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    acts = _run(model, tokens, types, pattern_hooks + [hq, hk])
    with torch.inference_mode():
        patterns = torch.stack([acts[h][0] for h in pattern_hooks]).float().cpu()
        q = acts[hq][0, query]  # [head, d_head]
        k = acts[hk][0]  # [key, head, d_head]
        if k.shape[1] != q.shape[0]:  # grouped-query attention: keys shared across head groups
            k = k.repeat_interleave(q.shape[0] // k.shape[1], dim=1)
        k = k.permute(1, 0, 2)
        nv = neuron_view(model, q, k, patterns[layer, :, query].to(q.device), layer, query, causal)
    token_strs = [model.tokenizer.decode([int(t)]) for t in tokens]
    meta = artifacts.run_metadata(model, windows, window_index=window_index, text_b=text_b,
                                  neuron_layer=layer, neuron_query=query,
                                  max_positions=max_positions)
    meta |= {"n_heads": int(model.cfg.n_heads),
             "n_key_value_heads": int(getattr(model.cfg, "n_key_value_heads", None)
                                      or model.cfg.n_heads),
             "layer_kinds": layer_kinds(model),
             "qk_norm": bool(getattr(model.cfg, "use_qk_norm", False)), "neuron_q_hook": hq,
             "neuron_k_hook": hk}
    return AttentionResult(tokens.cpu(), types.cpu(), patterns, token_strs, nv, causal,
                           window_index, len(windows), truncated_from, meta)
