"""NMF factors of MLP activations (ecco's ``activations().run_nmf(n_components=8)``), in torch.

>>> r = analyze(model, load_windows(model, text="The cat sat on the mat"), n_components=8)  # doctest: +SKIP
>>> r.factors.shape        # [k, pos]: how strongly each factor is present at each token      # doctest: +SKIP
>>> r.top_neurons(5)[0]    # the (layer, neuron, loading) triples that make up factor 0        # doctest: +SKIP

One window (``window_index``, default the first) is factorized: its MLP activations
``blocks.{l}.mlp.hook_post`` for the chosen layers form a ``[positions, layers · d_mlp]`` matrix;
NMF needs a nonnegative matrix, and ``signed`` says what happens to the negative activations:

- ``"clip"`` (ecco): clipped at 0. Right for GELU MLPs, whose activations dip only to about −0.17.
- ``"split"``: the columns are doubled, ``[max(x, 0) | max(−x, 0)]``, and both halves are factorised,
  so ``x ≈ w (h⁺ − h⁻)``. Gated MLPs (gemma-3-270m: ``gelu(gate) · linear``) are as negative as
  positive; clipping would silently drop half of what the neurons do.
- ``"auto"`` (default): ``split`` for gated MLPs, ``clip`` otherwise.

Either way the result reports ``negative_share`` (the share of ‖x‖² in negative entries) and
``signed_relative_error`` = ‖x − w (h⁺ − h⁻)‖ / ‖x‖ against the signed activations.
``x ≈ w h``: ``factors = wᵀ`` ``[k, positions]`` and
``loadings = h`` ``[k, layers · d_mlp]`` (layer-major columns: column ``j · d_mlp + i`` is neuron
``i`` of the j-th chosen layer). The solver is ``workbench.kernels.nmf`` (HALS, NNDSVDa start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from workbench import artifacts, capture
from workbench.data import Windows
from workbench.errors import WorkbenchError
from workbench.kernels.nmf import activation_matrix, nmf
from workbench.results import ResultMixin

ARTIFACT = "factors.safetensors"
SIGNED = ("auto", "clip", "split")
SIGNED_NOTES = {
    "clip": "MLP activations clipped at 0 before NMF (as ecco)",
    "split": "signed MLP activations split into [max(x,0) | max(-x,0)] columns before NMF; "
             "x ~ W (H+ - H-), loadings = H+, loadings_neg = H-",
}


def resolve_signed(model, signed: str) -> str:
    """``auto``: ``split`` for gated MLPs (signed activations), ``clip`` (ecco) otherwise."""
    if signed not in SIGNED:
        raise WorkbenchError(f"signed={signed!r}: use one of {', '.join(SIGNED)}")
    if signed == "auto":
        return "split" if getattr(model.cfg, "gated_mlp", False) else "clip"
    return signed


@dataclass(repr=False)
class FactorsResult(ResultMixin):
    tokens: Int[Tensor, " pos"]
    token_strs: list[str]
    factors: Float[Tensor, "k pos"]
    loadings: Float[Tensor, "k cols"]
    layers: list[int]
    d_mlp: int
    error: float  # ‖x − w h‖_F
    relative_error: float  # error / ‖x‖_F
    n_iter: int
    converged: bool
    window_index: int = 0
    n_windows: int = 1
    truncated_from: int | None = None
    meta: dict = field(default_factory=dict)
    signed: str = "clip"  # "clip" or "split": what was done with negative activations
    loadings_neg: Float[Tensor, "k cols"] | None = None  # h⁻ (split only)
    negative_share: float = 0.0  # share of ‖x‖² in negative activations
    signed_relative_error: float = float("nan")  # ‖x − w (h⁺ − h⁻)‖ / ‖x‖, x signed

    @property
    def n_components(self) -> int:
        return int(self.factors.shape[0])

    def signed_loadings(self) -> Float[Tensor, "k cols"]:
        """h⁺ − h⁻: a neuron's loading with the sign of the activation it explains."""
        return self.loadings if self.loadings_neg is None else self.loadings - self.loadings_neg

    def _mass(self) -> Float[Tensor, "k cols"]:
        return self.loadings if self.loadings_neg is None else self.loadings + self.loadings_neg

    def loadings_by_layer(self) -> Float[Tensor, "k layer neuron"]:
        return rearrange(self.loadings, "k (layer neuron) -> k layer neuron", neuron=self.d_mlp)

    def layer_share(self) -> Float[Tensor, "k layer"]:
        """Each factor's loading mass per layer (both halves when split), as a share of its total
        (rows sum to 1)."""
        mass = rearrange(self._mass(), "k (layer neuron) -> k layer neuron",
                         neuron=self.d_mlp).double().sum(-1)
        return (mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)).float()

    def top_neurons(self, n: int = 10) -> list[list[tuple[int, int, float]]]:
        """Per factor, the ``n`` largest loadings as (layer, neuron, loading); when split, the
        loading is negative for a neuron the factor explains by its negative activation."""
        n = min(n, self.loadings.shape[1])
        pos_neg = self._mass() if self.loadings_neg is None else \
            torch.maximum(self.loadings, self.loadings_neg)
        _, index = pos_neg.topk(n, dim=-1)
        signed = torch.where(self.loadings >= (0 if self.loadings_neg is None else
                                               self.loadings_neg), self.loadings,
                             -(self.loadings_neg if self.loadings_neg is not None else 0))
        return [[(self.layers[int(j) // self.d_mlp], int(j) % self.d_mlp, float(signed[f, j]))
                 for j in js] for f, js in enumerate(index)]

    def summary(self) -> dict:
        """Key numbers for summary.json."""
        share = self.layer_share()
        return {
            "n_components": self.n_components, "positions": int(self.tokens.shape[0]),
            "layers": self.layers, "reconstruction_error": self.error,
            "relative_error": self.relative_error, "n_iter": self.n_iter,
            "converged": self.converged, "window_index": self.window_index,
            "n_windows": self.n_windows, "signed": self.signed,
            "negative_share": self.negative_share,
            "signed_relative_error": self.signed_relative_error,
            "peak_token_per_factor": [self.token_strs[int(i)] for i in self.factors.argmax(-1)],
            "main_layer_per_factor": [self.layers[int(i)] for i in share.argmax(-1)],
        }

    def to_frame(self):
        """One row per factor: its peak position and token, strength, and main layer."""
        import pandas as pd

        share = self.layer_share()
        peak = self.factors.argmax(-1)
        rows = [{"factor": f, "peak_position": int(peak[f]),
                 "peak_token": self.token_strs[int(peak[f])],
                 "peak_strength": float(self.factors[f].max()),
                 "main_layer": self.layers[int(share[f].argmax())],
                 "main_layer_share": float(share[f].max())} for f in range(self.n_components)]
        return pd.DataFrame(rows).set_index("factor")

    def tensors(self) -> dict[str, Tensor]:
        out = {"tokens": self.tokens, "factors": self.factors, "loadings": self.loadings,
               "layers": torch.tensor(self.layers, dtype=torch.long),
               "layer_share": self.layer_share(),
               "reconstruction_error": torch.tensor(self.error, dtype=torch.float64),
               "signed_relative_error": torch.tensor(self.signed_relative_error,
                                                     dtype=torch.float64)}
        if self.loadings_neg is not None:
            out["loadings_neg"] = self.loadings_neg
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def figures(self) -> dict:
        from workbench.views import factors as view

        return view.figures(self)

    def save(self, out_dir: str | Path) -> Path:
        meta = {**self.meta, "tokens_text": self.token_strs, "d_mlp": self.d_mlp,
                "relative_error": self.relative_error, "n_iter": self.n_iter,
                "converged": self.converged, "window_index": self.window_index,
                "truncated_from": self.truncated_from, "signed": self.signed,
                "negative_share": self.negative_share,
                "signed_relative_error": self.signed_relative_error,
                "note": SIGNED_NOTES[self.signed]}
        return artifacts.save(Path(out_dir) / ARTIFACT, self.tensors(), meta)


def resolve_layers(model, layers: Sequence[int] | None) -> list[int]:
    n = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n))
    out = sorted({layer + n if layer < 0 else layer for layer in layers})
    if not out or not all(0 <= layer < n for layer in out):
        raise WorkbenchError(f"layers {list(layers)} are out of range: the model has {n} layers "
                             f"(0..{n - 1})")
    return out


def analyze(
    model,
    windows: Windows,
    *,
    batch_size: int = 8,
    progress: bool = True,
    n_components: int = 8,
    layers: Sequence[int] | None = None,
    window_index: int = 0,
    max_positions: int | None = None,
    max_iter: int = 400,
    tol: float = 1e-4,
    init: str = "nndsvda",
    seed: int = 0,
    signed: str = "auto",
) -> FactorsResult:
    """NMF factors of the MLP activations of window ``window_index`` over ``layers`` (default all).

    ``signed``: what to do with negative activations (see the module docstring).

    ``batch_size``/``progress`` are accepted for the common signature; one window is one pass.
    """
    del batch_size, progress
    if getattr(model.cfg, "d_mlp", None) in (None, 0) or getattr(model.cfg, "attn_only", False):
        raise WorkbenchError(f"{model.cfg.model_name} has no MLP layers to factorize")
    if not 0 <= window_index < len(windows):
        raise WorkbenchError(f"window {window_index} does not exist: the input has {len(windows)} "
                             f"window(s); use 0..{len(windows) - 1}")
    chosen = resolve_layers(model, layers)
    how = resolve_signed(model, signed)
    tokens = windows.tokens[window_index][windows.mask[window_index]]
    truncated_from = None
    if max_positions is not None and tokens.shape[0] > max_positions:
        truncated_from, tokens = int(tokens.shape[0]), tokens[:max_positions]
    if n_components > tokens.shape[0]:
        raise WorkbenchError(f"{n_components} factors need at least as many tokens; the window "
                             f"has {tokens.shape[0]}: give more text or fewer --components")
    hooks = capture.mlp_hooks(model, chosen)
    device = next(model.parameters()).device
    tok = tokens[None].to(device)
    acts, _ = capture.forward(model, tok, torch.ones_like(tok, dtype=torch.bool), hooks)
    with torch.inference_mode():
        stack = torch.stack([acts[h][0] for h in hooks]).float()  # [layer, pos, neuron]
        x_signed = rearrange(stack, "layer pos neuron -> pos (layer neuron)").clone()
        x = activation_matrix(stack)
        if how == "split":
            x = torch.cat([x, activation_matrix(-stack)], dim=1)
    # NMF updates tensors in place, which inference tensors forbid outside inference mode.
    x, x_signed = x.clone(), x_signed.clone()
    f = nmf(x, n_components, max_iter=max_iter, tol=tol, init=init, seed=seed)
    cols = x_signed.shape[1]
    h_pos, h_neg = (f.h[:, :cols], f.h[:, cols:]) if how == "split" else (f.h, None)
    xs = x_signed.double()
    total = float(xs.square().sum())
    negative_share = float(xs.clamp_max(0).square().sum()) / total if total else 0.0
    approx = f.w.double() @ (h_pos.double() - (0 if h_neg is None else h_neg.double()))
    signed_err = float((xs - approx).norm()) / total**0.5 if total else 0.0
    token_strs = [model.tokenizer.decode([int(t)]) for t in tokens]
    meta = artifacts.run_metadata(model, windows, n_components=n_components, layers=chosen,
                                  window_index=window_index, max_positions=max_positions,
                                  max_iter=max_iter, tol=tol, init=init, seed=seed,
                                  solver="hals", signed=how, clip_negative=how == "clip")
    return FactorsResult(tokens.cpu(), token_strs, f.factors.cpu(), h_pos.contiguous().cpu(),
                         chosen, int(stack.shape[-1]), f.error, f.relative_error, f.n_iter,
                         f.converged, window_index, len(windows), truncated_from, meta,
                         signed=how,
                         loadings_neg=None if h_neg is None else h_neg.contiguous().cpu(),
                         negative_share=negative_share, signed_relative_error=signed_err)
