"""Hidden-state distributions (seed 000) for a sentence or a whole dataset, in one streaming pass.

1. ``r = analyze(model, windows)`` captures the L+1 residual states (``emb``, ``h.0``, ...) batch
   by batch and feeds the accumulators; nothing grows with the dataset except a bounded sample.
2. Each layer's activations over (token, dim) pairs form one variable (position 0 of each window
   and padding excluded by default): ``r.covariance`` / ``r.r2`` are [L+1, L+1] between layers,
   ``r.hist_counts`` the per-layer histograms over fixed edges, ``r.dim_*`` per residual dimension.
3. ``r.figures()`` draws (via ``workbench.views.distributions``), ``r.save(out_dir)`` writes
   ``distributions.safetensors`` + ``distributions.json`` (shared/DESIGN.md keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from workbench import artifacts
from workbench.capture import layer_labels, resid_hooks
from workbench.data import Windows
from workbench.distributed import DistContext, flat_states
from workbench.errors import WorkbenchError
from workbench.kernels.dimstats import DimStats
from workbench.kernels.histogram import Histogram, linear_edges, symlog_edges
from workbench.kernels.moments import Moments
from workbench.kernels.sample import BottomK, permute_ids
from workbench.results import ResultMixin
from workbench.sharding import shard_metadata

ARTIFACT = "distributions.safetensors"


@dataclass(repr=False)
class DistributionsResult(ResultMixin):
    """Tensors of one distributions pass (all on CPU) and the settings that produced them."""

    labels: list[str]
    covariance: Float[Tensor, "v v"]
    r2: Float[Tensor, "v v"]
    mean: Float[Tensor, " v"]
    std: Float[Tensor, " v"]
    n_samples: Int[Tensor, " v"]
    hist_counts: Int[Tensor, "v b"]
    hist_edges: Float[Tensor, " e"]
    hist_under: Int[Tensor, " v"]
    hist_over: Int[Tensor, " v"]
    hist_nan: Int[Tensor, " v"]
    dim_mean: Float[Tensor, "v d"]
    dim_std: Float[Tensor, "v d"]
    dim_maxabs: Float[Tensor, "v d"]
    sample_values: Float[Tensor, "k v"]  # sampled (token, dim) pairs, smallest sampling key first
    sample_ids: Int[Tensor, "k 3"]  # (window, position, dim) of each sampled pair
    settings: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    token_labels: list[str] | None = None  # token strings by position, for a single window
    # The accumulators' raw states ("state.{acc}.{name}"), so shard artifacts merge offline.
    states: dict[str, Tensor] = field(default_factory=dict)

    def layer_index(self, layer: int | str) -> int:
        """Index of a layer given as a label (``"h.3"``, ``"emb"``) or an int (negative ok)."""
        return layer_index(self.labels, layer)

    def tensors(self) -> dict[str, Tensor]:
        """The artifact's tensors: shared/DESIGN.md's keys first, then the extras."""
        return {
            "covariance": self.covariance, "r2": self.r2, "hist_counts": self.hist_counts,
            "hist_edges": self.hist_edges, "hist_under": self.hist_under,
            "hist_over": self.hist_over, "n_samples": self.n_samples,
            "hist_nan": self.hist_nan, "mean": self.mean, "std": self.std,
            "dim_mean": self.dim_mean, "dim_std": self.dim_std, "dim_maxabs": self.dim_maxabs,
            "sample_values": self.sample_values, "sample_ids": self.sample_ids,
            **self.states,
        }

    def summary(self) -> dict:
        """Key numbers: hidden states, samples, spread, R² first → last, values out of range."""
        return {"layers": list(self.labels), "samples_per_layer": int(self.n_samples[0]),
                "std_by_layer": [round(float(x), 4) for x in self.std],
                "r2_first_last": round(float(self.r2[0, -1]), 4),
                "out_of_range": int(self.hist_under.sum() + self.hist_over.sum()),
                "edges": self.settings.get("edges", "fixed")}

    def to_frame(self):
        """One row per hidden state: count, mean, std, largest |dimension mean|, tails."""
        import pandas as pd

        return pd.DataFrame({
            "n": self.n_samples.tolist(), "mean": self.mean.tolist(), "std": self.std.tolist(),
            "max_abs_dim": self.dim_maxabs.max(-1).values.tolist(),
            "under": self.hist_under.tolist(), "over": self.hist_over.tolist(),
            "nan": self.hist_nan.tolist()}, index=pd.Index(self.labels, name="layer"))

    def figures(self) -> dict:
        from workbench.views.distributions import figures

        return figures(self)

    def save(self, out_dir: str | Path) -> Path:
        meta = {**self.meta, "labels": self.labels, "settings": self.settings,
                "token_labels": self.token_labels}
        return artifacts.save(Path(out_dir) / ARTIFACT, self.tensors(), meta)

    @classmethod
    def load(cls, path: str | Path) -> DistributionsResult:
        """Read back an artifact written by ``save`` (a file, or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / ARTIFACT
        t, meta = artifacts.load(path)
        missing = [k for k in ("covariance", "r2", "hist_counts", "sample_values") if k not in t]
        if missing:
            raise WorkbenchError(f"{path} is not a distributions artifact (no {missing})")
        _check_artifact(path, t, meta)
        settings = meta.pop("settings", {})
        labels = meta.pop("labels", [f"v{i}" for i in range(t["r2"].shape[0])])
        token_labels = meta.pop("token_labels", None)
        states = {k: v for k, v in t.items() if k.startswith("state.")}
        return cls(labels=labels, settings=settings, meta=meta, token_labels=token_labels,
                   states=states, **{k: t[k] for k in cls.__dataclass_fields__ if k in t})


def _check_artifact(path: Path, t: dict[str, Tensor], meta: dict) -> None:
    """Shapes of a distributions artifact against each other and its metadata."""
    f = artifacts.Fields(meta, path)
    n = t["r2"].shape[0] if t["r2"].ndim == 2 else -1
    f.require(n > 0 and t["r2"].shape == (n, n), f"tensor r2 is {tuple(t['r2'].shape)}, not square")
    labels = f.get("labels", list, None)
    if labels is not None:
        f.require(len(labels) == n and all(isinstance(x, str) for x in labels),
                  f"metadata 'labels' does not name the {n} hidden states")
    f.get("settings", dict, {})  # an object when present
    tokens = f.get("token_labels", (list, type(None)), None)
    f.require(tokens is None or all(isinstance(x, str) for x in tokens),
              "metadata 'token_labels' holds non-text")
    shapes = {"covariance": (n, n), "mean": (n,), "std": (n,), "n_samples": (n,),
              "hist_under": (n,), "hist_over": (n,), "hist_nan": (n,)}
    for key, shape in shapes.items():
        f.require(key in t and tuple(t[key].shape) == shape, f"tensor {key} is missing or not "
                  f"{list(shape)} for {n} hidden states")
    counts, edges = t["hist_counts"], t.get("hist_edges")
    f.require(counts.ndim == 2 and counts.shape[0] == n and edges is not None
              and tuple(edges.shape) == (counts.shape[1] + 1,),
              "tensors hist_counts and hist_edges do not fit together")
    for key in ("dim_mean", "dim_std", "dim_maxabs"):
        f.require(key in t and t[key].ndim == 2 and t[key].shape[0] == n,
                  f"tensor {key} is missing or not [hidden state, dim]")
    k = t["sample_values"].shape[0]
    f.require(t["sample_values"].ndim == 2 and t["sample_values"].shape[1] == n
              and "sample_ids" in t and tuple(t["sample_ids"].shape) == (k, 3),
              "tensors sample_values and sample_ids do not fit together")
    if "shard" in meta:
        shard = f.section("shard")
        count = shard.int("count", 1)
        shard.int("index", 0, count - 1)


def layer_index(labels: list[str], layer: int | str) -> int:
    if isinstance(layer, str):
        if layer not in labels:
            raise WorkbenchError(f"unknown layer {layer!r}; use one of {labels}")
        return labels.index(layer)
    if not -len(labels) <= layer < len(labels):
        raise WorkbenchError(f"layer {layer} out of range: this model has {len(labels)} hidden "
                             f"states {labels} (indices 0..{len(labels) - 1}, or negative)")
    return layer % len(labels)


SEED_RANGE = (-15.0, 15.0)
# A fixed English paragraph: the probe that sizes the default histogram edges of a model. Fixed
# text, so every shard, rank and rerun of one model gets the same edges (and can merge).
CALIBRATION_TEXT = (
    "The history of the city begins with a small settlement on the river. Over the centuries it "
    "grew into a centre of trade, and its markets drew merchants from distant countries. Today "
    "it is known for its museums, its university and the bridges that cross the water; 42 of "
    "them were built before 1900."
)
_AUTO_MARGIN = 4.0


def auto_edges(model, bins: int = 300) -> tuple[Tensor, dict]:
    """Default histogram edges sized to the model: the seed's ``linspace(-15, 15, bins + 1)`` when
    the model's residuals stay within half of it, else symmetric-log edges over ``±10^k`` (the
    smallest power of ten above 4x the largest |value| of a calibration paragraph, BOS position
    included), linear within ±1. Deterministic per model and ``bins``.

    gemma-3-270m's residuals reach ~1e5 (about 93% of its last layer's values lie outside ±15):
    its edges are symlog over ±1e6. Returns (edges, a record of the choice for the metadata).
    """
    from workbench.capture import forward
    from workbench.data import load_windows

    windows = load_windows(model, text=CALIBRATION_TEXT)
    device = next(model.parameters()).device
    n = int(windows.mask[0].sum())  # windows are padded to the context: forward the text only
    tokens, mask = windows.tokens[:1, :n].to(device), windows.mask[:1, :n].to(device)
    hooks = resid_hooks(model)
    acts, _ = forward(model, tokens, mask, hooks, stop_at_layer=model.cfg.n_layers)
    peak = max(float(acts[h][mask].abs().float().max()) for h in hooks)
    record = {"rule": "auto", "calibration_max_abs": round(peak, 4)}
    if 2 * peak <= SEED_RANGE[1]:
        return linear_edges(*SEED_RANGE, bins), record | {"kind": "linear",
                                                          "range": list(SEED_RANGE)}
    limit = 10.0 ** math.ceil(math.log10(_AUTO_MARGIN * peak))
    return symlog_edges(limit, bins, 1.0), record | {"kind": "symlog", "range": [-limit, limit],
                                                     "linthresh": 1.0}


def make_edges(bins: int = 300, value_range: tuple[float, float] = SEED_RANGE,
               symlog: float | None = None) -> Tensor:
    """The seed's ``linspace(-15, 15, 301)`` by default; ``symlog=T``: symmetric-log edges over
    ``[-max|range|, max|range|]``, linear within ±T."""
    lo, hi = value_range
    if symlog is not None:
        return symlog_edges(max(abs(lo), abs(hi)), bins, symlog)
    return linear_edges(lo, hi, bins)


def _selected(batch, hooks: list[str], skip_first: bool) -> tuple[Tensor, Tensor]:
    """[v, t, d] activations of the kept positions, and their flat (row, position) indices."""
    keep = batch.mask.clone()
    if skip_first:
        keep[:, 0] = False
    flat = rearrange(keep, "b p -> (b p)").nonzero().flatten()
    first = batch.acts[hooks[0]]
    block = torch.empty(len(hooks), flat.numel(), first.shape[-1], dtype=first.dtype,
                        device=first.device)
    for v, hook in enumerate(hooks):
        torch.index_select(rearrange(batch.acts[hook], "b p d -> (b p) d"), 0, flat, out=block[v])
    return block, flat


class DistributionsReducer:
    """The distributions pass as a reducer of the capture engine (``capture.run``): residual
    hooks in, moments / histograms / per-dimension statistics / a keyed sample out."""

    name = "distributions"
    need_logits = False

    def __init__(self, model, windows: Windows, *, skip_first: bool = True, bins: int = 300,
                 value_range: tuple[float, float] | None = None, symlog: float | None = None,
                 sample: int = 1000, scatter_points: int = 10000, layer: int | str = -1,
                 pair_layers: tuple[int | str, ...] | None = None, seed: int = 0,
                 batch_size: int = 8):
        self.model, self.windows = model, windows
        self.hooks = resid_hooks(model)
        self.labels = layer_labels(model)
        pair_layers = (tuple(range(min(4, len(self.labels)))) if pair_layers is None
                       else tuple(pair_layers))
        for chosen in (layer, *pair_layers):
            layer_index(self.labels, chosen)
        if sample < 0 or scatter_points < 0:
            raise WorkbenchError(f"sample sizes must be >= 0 (got {sample}, {scatter_points})")
        n_vars, d = len(self.hooks), int(model.cfg.d_model)
        device = next(model.parameters()).device
        if value_range is None and symlog is None:
            edges, edge_rule = auto_edges(model, bins)
            value_range = tuple(edge_rule["range"])
        else:
            value_range = SEED_RANGE if value_range is None else value_range
            edges, edge_rule = make_edges(bins, value_range, symlog), {"rule": "given"}
        self.accs = {"moments": Moments(n_vars, device), "hist": Histogram(edges, n_vars, device),
                     "dims": DimStats(n_vars, d, device),
                     "sample": BottomK(max(sample, scatter_points), n_vars, n_ids=3,
                                       device=device)}
        self.skip_first, self.seed, self.d = skip_first, seed, d
        self.width = int(windows.tokens.shape[1])
        self.dim_ids = torch.arange(d, device=device)
        self.settings = {
            "skip_first": skip_first, "bins": bins, "value_range": list(value_range),
            "symlog": symlog, "edges": edge_rule, "sample": sample,
            "scatter_points": scatter_points, "layer": layer, "pair_layers": list(pair_layers),
            "seed": seed, "batch_size": batch_size}

    def accumulators(self) -> dict:
        return self.accs

    def update(self, batch) -> None:
        block, flat = _selected(batch, self.hooks, self.skip_first)
        if flat.numel() == 0:
            return
        a, d = self.accs, self.d
        samples = rearrange(block, "v t d -> (t d) v")  # a view: block stays variable-major
        a["moments"].update(samples)
        a["hist"].update(samples)
        a["dims"].update(rearrange(block, "v t d -> t v d"))
        # Global window ids (the engine adds a shard's offset): sample ids never depend on
        # batching, rank or shard; then the position and the dimension.
        window = batch.index.to(flat.device)[flat // batch.mask.shape[1]]
        position = flat % batch.mask.shape[1]
        ids = rearrange((window * self.width + position)[:, None] * d + self.dim_ids,
                        "t d -> (t d)")
        keys = permute_ids(ids, self.seed)
        pos = a["sample"].candidates(keys)
        if pos.numel():
            t_idx, d_idx = pos // d, pos % d
            a["sample"].update(keys[pos], samples[pos],
                               torch.stack([window[t_idx], position[t_idx], d_idx], dim=1))

    def finish(self, shard: tuple[int, int] | None = None) -> DistributionsResult:
        if int(self.accs["moments"].count) == 0 and shard is None:
            raise WorkbenchError("no positions left to analyse: every window has only its first "
                                 "position, which is left out; give longer text, or count it "
                                 "too (`workbench distributions --keep-first`; skip_first=False "
                                 "in Python)")
        windows = self.windows
        token_labels = None
        if len(windows) == 1:
            from workbench.views.tokens import decode_each

            token_labels = decode_each(self.model.tokenizer,
                                       windows.tokens[0][windows.mask[0]].tolist())
        meta = artifacts.run_metadata(self.model, windows, **self.settings)
        if shard is not None:
            meta["shard"] = shard_metadata(windows, *shard)
        return result_from_states(self.accs, self.labels, self.settings, meta, token_labels)


def analyze(
    model,
    windows: Windows,
    *,
    batch_size: int = 8,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    ctx: DistContext | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 50,
    max_batches: int | None = None,
    **options,
) -> DistributionsResult:
    """One pass over ``windows``; see the module docstring.

    ``shard=(i, n)`` analyses only the i-th of n slices of the windows (a job-array task; merge
    the parts with ``merge_results``); under ``torchrun`` pass ``ctx`` (``DistContext.from_env()``):
    each rank analyses its slice and every rank gets the reduced result of the whole.
    ``checkpoint_dir`` + ``resume``: checkpoint the pass there (every ``checkpoint_every``
    batches) and continue a killed one; ``max_batches`` stops early, as a kill would.

    Options (``DistributionsReducer``): ``sample`` (pairplot) and ``scatter_points`` (scatter by
    dimension / token of ``layer``) are sizes of one deterministic uniform sample of (token, dim)
    pairs, keyed by ``seed``: the same whatever the batch size or device. ``layer`` and
    ``pair_layers`` (default: the first four) only choose what is drawn. ``value_range=None``
    (default) sizes the histogram edges to the model (``auto_edges``: the seed's ±15 where it
    fits, symlog edges for models like gemma whose residuals reach 1e5); ``value_range=(-15, 15)``
    gives the seed's fixed edges whatever the model. ``skip_first`` (default True) leaves out
    position 0 of each window, ``bins`` / ``symlog`` shape the histogram edges.
    """
    from workbench import capture

    reducer = DistributionsReducer(model, windows, batch_size=batch_size, **options)
    capture.run_reducer(model, windows, reducer, batch_size=batch_size, progress=progress,
                        shard=shard, ctx=ctx, checkpoint_dir=checkpoint_dir, resume=resume,
                        checkpoint_every=checkpoint_every, max_batches=max_batches)
    return reducer.finish(shard)  # the caller saves, then drops the checkpoint


def result_from_states(accs: dict, labels: list[str], settings: dict, meta: dict,
                       token_labels: list[str] | None = None) -> DistributionsResult:
    """The result read out of (possibly reduced or merged) accumulators."""
    moments, hist, dims, picked = accs["moments"], accs["hist"], accs["dims"], accs["sample"]
    n_vars = moments.n_vars
    cpu = "cpu"
    h = hist.to(cpu)
    return DistributionsResult(
        labels=labels,
        covariance=moments.to(cpu).cov(), r2=moments.r2(), mean=moments.mean.clone(),
        std=moments.std(), n_samples=torch.full((n_vars,), int(moments.count), dtype=torch.int64),
        hist_counts=h.counts, hist_edges=h.edges, hist_under=h.under, hist_over=h.over,
        hist_nan=h.nan, dim_mean=dims.to(cpu).mean, dim_std=dims.std(), dim_maxabs=dims.maxabs,
        sample_values=picked.to(cpu).values, sample_ids=picked.ids,
        settings=settings, meta=meta, token_labels=token_labels,
        states=flat_states(accs),
    )
