"""NMF factors of MLP activations (ecco's ``activations().run_nmf(n_components=8)``), in torch.

>>> r = analyze(model, load_windows(model, text="The cat sat on the mat"), n_components=8)  # doctest: +SKIP
>>> r.factors.shape        # [k, pos]: how strongly each factor is present at each token      # doctest: +SKIP
>>> r.top_neurons(5)[0]    # the (layer, neuron, loading) triples that make up factor 0        # doctest: +SKIP

One window (``window_index``, default the first) is factorized: its MLP activations
``blocks.{l}.mlp.hook_post`` for the chosen layers form a ``[positions, layers · d_mlp]`` matrix;
negative activations (GELU dips down to about −0.17) are clipped at 0 first, as ecco does, since
NMF needs a nonnegative matrix. ``x ≈ w h``: ``factors = wᵀ`` ``[k, positions]`` and
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

ARTIFACT = "factors.safetensors"


@dataclass
class FactorsResult:
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

    @property
    def n_components(self) -> int:
        return int(self.factors.shape[0])

    def loadings_by_layer(self) -> Float[Tensor, "k layer neuron"]:
        return rearrange(self.loadings, "k (layer neuron) -> k layer neuron", neuron=self.d_mlp)

    def layer_share(self) -> Float[Tensor, "k layer"]:
        """Each factor's loading mass per layer, as a share of its total (rows sum to 1)."""
        mass = self.loadings_by_layer().double().sum(-1)
        return (mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)).float()

    def top_neurons(self, n: int = 10) -> list[list[tuple[int, int, float]]]:
        """Per factor, the ``n`` largest loadings as (layer, neuron, loading)."""
        n = min(n, self.loadings.shape[1])
        values, index = self.loadings.topk(n, dim=-1)
        return [[(self.layers[int(j) // self.d_mlp], int(j) % self.d_mlp, float(v))
                 for v, j in zip(vs, js, strict=True)] for vs, js in zip(values, index, strict=True)]

    def summary(self) -> dict:
        """Key numbers for summary.json."""
        share = self.layer_share()
        return {
            "n_components": self.n_components, "positions": int(self.tokens.shape[0]),
            "layers": self.layers, "reconstruction_error": self.error,
            "relative_error": self.relative_error, "n_iter": self.n_iter,
            "converged": self.converged, "window_index": self.window_index,
            "n_windows": self.n_windows,
            "peak_token_per_factor": [self.token_strs[int(i)] for i in self.factors.argmax(-1)],
            "main_layer_per_factor": [self.layers[int(i)] for i in share.argmax(-1)],
        }

    def tensors(self) -> dict[str, Tensor]:
        out = {"tokens": self.tokens, "factors": self.factors, "loadings": self.loadings,
               "layers": torch.tensor(self.layers, dtype=torch.long),
               "layer_share": self.layer_share(),
               "reconstruction_error": torch.tensor(self.error, dtype=torch.float64)}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def figures(self) -> dict:
        from workbench.views import factors as view

        return view.figures(self)

    def save(self, out_dir: str | Path) -> Path:
        meta = {**self.meta, "tokens_text": self.token_strs, "d_mlp": self.d_mlp,
                "relative_error": self.relative_error, "n_iter": self.n_iter,
                "converged": self.converged, "window_index": self.window_index,
                "truncated_from": self.truncated_from,
                "note": "MLP activations clipped at 0 before NMF (as ecco)"}
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
) -> FactorsResult:
    """NMF factors of the MLP activations of window ``window_index`` over ``layers`` (default all).

    ``batch_size``/``progress`` are accepted for the common signature; one window is one pass.
    """
    del batch_size, progress
    if getattr(model.cfg, "d_mlp", None) in (None, 0) or getattr(model.cfg, "attn_only", False):
        raise WorkbenchError(f"{model.cfg.model_name} has no MLP layers to factorize")
    if not 0 <= window_index < len(windows):
        raise WorkbenchError(f"window {window_index} does not exist: the input has {len(windows)} "
                             f"window(s); use 0..{len(windows) - 1}")
    chosen = resolve_layers(model, layers)
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
        x = activation_matrix(stack)
    # NMF updates tensors in place, which inference tensors forbid outside inference mode.
    x = x.clone()
    f = nmf(x, n_components, max_iter=max_iter, tol=tol, init=init, seed=seed)
    token_strs = [model.tokenizer.decode([int(t)]) for t in tokens]
    meta = artifacts.run_metadata(model, windows, n_components=n_components, layers=chosen,
                                  window_index=window_index, max_positions=max_positions,
                                  max_iter=max_iter, tol=tol, init=init, seed=seed,
                                  solver="hals", clip_negative=True)
    return FactorsResult(tokens.cpu(), token_strs, f.factors.cpu(), f.h.cpu(), chosen,
                         int(stack.shape[-1]), f.error, f.relative_error, f.n_iter, f.converged,
                         window_index, len(windows), truncated_from, meta)
