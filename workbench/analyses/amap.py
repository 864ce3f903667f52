"""Neuron AMAPs over a dataset (SYSIF): each MLP neuron's mean activation per token, resumable.

>>> w = load_windows(model, dataset="wordnet-glosses", window=15, stride=15, bos=False)  # doctest: +SKIP
>>> r = build(model, w, "out/amap", modes=("input", "output"), positions=True)         # doctest: +SKIP
>>> r.top_tokens(layer=2, neuron=17, k=5)        # tokens whose input mean is highest  # doctest: +SKIP
>>> r.contexts[0]                                # a unit's max-activating windows      # doctest: +SKIP
>>> r.contexts_for(model, w, [(1, 17)])          # the same for any unit                # doctest: +SKIP

DESIGN.md semantics: layer l, neuron i (``blocks.{l}.mlp.hook_post``), key t: mean activation over
every real position whose key is t (``input``: the token there; ``output``: the model's argmax
prediction there; ``[POS_k]``: window position k, when positions are on). fp64 sums and int64
counts of the keys seen are stored (sparse, artifact v2); an unseen key is absent (mean NaN when
asked for). SYSIF's defaults: window 15, stride 15, no BOS.

A build's files (``amap.safetensors`` + ``amap.json``, ``amap_contexts.json``, ``amap_build.json``)
are committed as one set (``artifacts.commit_set``): a kill leaves the old build or the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench import artifacts, capture
from workbench.analyses.amap_contexts import read_contexts
from workbench.data import Windows
from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap
from workbench.kernels.top_windows import TopWindows
from workbench.results import ResultMixin

ARTIFACT = "amap.safetensors"
CONTEXTS = "amap_contexts.json"
BUILD_INFO = "amap_build.json"  # timings live apart: amap.safetensors must not change run to run


# The build stopped early on purpose (``max_batches``); its checkpoint can be resumed.
BuildInterrupted = capture.CaptureInterrupted


@dataclass(repr=False)
class AmapResult(ResultMixin):
    """The accumulators of a build, the labels of their keys, and the build's settings."""

    amap: Amap
    top: TopWindows | None
    layers: list[int]  # model layer of each row of the sums
    key_strs: dict[int, str]  # label of each key id seen: decoded tokens, then [POS_k]
    n_windows: int
    meta: dict
    invariants: dict[str, bool] = field(default_factory=dict)
    contexts: list[dict] = field(default_factory=list)
    throughput: dict = field(default_factory=dict)

    @property
    def modes(self) -> tuple[str, ...]:
        return self.amap.modes

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise WorkbenchError(f"layer {layer} is not in this AMAP; it holds layers {self.layers}")
        return self.layers.index(layer)

    def _mode(self, mode: str) -> str:
        if mode not in self.modes:
            raise WorkbenchError(f"mode {mode!r} was not built; this AMAP has {list(self.modes)}")
        return mode

    def keys(self, mode: str = "input") -> Tensor:
        """The key ids seen in ``mode`` [K] (token ids, then ``V + k`` for ``[POS_k]``)."""
        return self.amap.keys(self._mode(mode))

    def means(self, mode: str = "input") -> Float[Tensor, "layer key mlp"]:
        """Mean activation per (layer, key seen, neuron) [layer, K, mlp] fp64, keys as ``keys``."""
        return self.amap.compute()[f"mean.{self._mode(mode)}"]

    def counts(self, mode: str = "input") -> Tensor:
        """How many positions each key seen had [K] (all > 0), keys as ``keys``."""
        return self.amap.counts[self._mode(mode)]

    def at(self, mode: str = "input", ids=None) -> tuple[Tensor, Tensor]:
        """Means [layer, n, mlp] (NaN where unseen) and counts [n] (0 where unseen) of the key
        ids ``ids`` (default: every id, tokens then ``[POS_k]``: dense, for small vocabularies)."""
        amap = self.amap
        ids = torch.arange(amap.n_keys) if ids is None else torch.as_tensor(ids, dtype=torch.long)
        slot = amap.lookup(self._mode(mode), ids).cpu()
        seen = slot >= 0
        means = torch.full((amap.n_layers, len(ids), amap.d_mlp), torch.nan, dtype=torch.float64)
        counts = torch.zeros(len(ids), dtype=torch.long)
        if bool(seen.any()):
            s, c = amap.sums[mode][:, slot[seen]].cpu(), amap.counts[mode][slot[seen]].cpu()
            means[:, seen] = s / c.double()[None, :, None]
            counts[seen] = c
        return means, counts

    def label(self, key: int, tokenizer=None) -> str:
        """The text of key id ``key`` (decoded by ``tokenizer`` when the AMAP never saw it)."""
        if key in self.key_strs:
            return self.key_strs[key]
        if key >= self.amap.d_vocab:
            return f"[POS_{key - self.amap.d_vocab}]"
        if tokenizer is not None and key < len(tokenizer):
            return tokenizer.decode([key])
        return f"[ID_{key}]"

    def dead_units(self, threshold: float = 0.0) -> Bool[Tensor, "layer mlp"]:
        """Units whose largest activation over the whole dataset is <= ``threshold``."""
        return self.amap.act_max <= threshold

    def top_tokens(self, layer: int, neuron: int, mode: str = "input", k: int = 10,
                   min_count: int = 1, positions: bool = False) -> list[dict]:
        """The ``k`` tokens with the highest mean for one unit, among those seen ``min_count``+
        times (``positions=True`` also ranks the ``[POS_k]`` pseudo-tokens)."""
        row = self._row(layer)
        if not 0 <= neuron < self.amap.d_mlp:
            raise WorkbenchError(f"neuron {neuron} out of range 0..{self.amap.d_mlp - 1}")
        keys, count = self.keys(mode), self.counts(mode)
        mean = self.amap.sums[mode][row, :, neuron] / count.double()
        ok = count >= min_count
        if not positions:
            ok &= keys < self.amap.d_vocab
        score = torch.where(ok, mean, torch.tensor(-torch.inf, dtype=mean.dtype))
        vals, slots = score.topk(min(k, int(ok.sum())))
        return [{"id": int(keys[i]), "token": self.label(int(keys[i])), "mean": float(v),
                 "count": int(count[i])} for v, i in zip(vals, slots, strict=True)]

    def contexts_for(self, model, windows: Windows, units: list[tuple[int, int]],
                     window_offset: int = 0) -> list[dict]:
        """Max-activating windows of any ``units`` ``[(layer, neuron), ...]``: tokens and the
        unit's activation at each, around the peak (kept by the build's pass; an older AMAP's
        windows are run through ``model`` again). ``windows``: the data the AMAP was built on
        (e.g. ``load_windows`` with the metadata's source and windowing)."""
        return read_contexts(model, windows, self, units=units, window_offset=window_offset)

    def tensors(self) -> dict[str, Tensor]:
        """The artifact's tensors: the live states (keys sorted in place first: no copies)."""
        out = dict(self.amap.sort_().states)
        out["layers"] = torch.tensor(self.layers, dtype=torch.long)
        if self.top is not None:
            out |= {f"top.{k}": v for k, v in self.top.state_dict().items()}
        return out

    def summary(self) -> dict:
        """Key numbers: modes, layers, windows, distinct keys seen, dead units per layer."""
        m = self.modes[0]
        tokens = self.keys(m) < self.amap.d_vocab
        return {"modes": list(self.modes), "layers": list(self.layers),
                "windows": self.n_windows, "d_mlp": self.amap.d_mlp,
                "keys_seen": int(tokens.sum()),
                "positions": int(self.counts(m)[tokens].sum()),
                "dead_units_by_layer": [int(x) for x in self.dead_units().sum(-1)],
                "invariants_hold": all(self.invariants.values()) if self.invariants else None}

    def to_frame(self, modes=None, layers=None, tokens=None, top: int | None = 50):
        """SYSIF's DataFrame (``amap_export.to_dataframe``): a row per unit and mode, a column
        per token; by default the 50 most frequent input tokens (``top=None``: all of them)."""
        from workbench.analyses.amap_export import to_dataframe

        return to_dataframe(self, modes=modes, layers=layers, tokens=tokens,
                            top=None if tokens is not None else top)

    def figures(self) -> dict:
        from workbench.views import amap as view

        return view.figures(self)

    def save(self, out_dir: str | Path) -> Path:
        """Commit the build's files together (a kill leaves the old set or this one); a build
        there before is replaced whole (its contexts too, when this one has none)."""
        out_dir = Path(out_dir)
        writers = {ARTIFACT: lambda p: artifacts.save(p, self.tensors(), self.meta)}
        writers[ARTIFACT.replace(".safetensors", ".json")] = lambda p: None  # written by save
        if self.contexts:
            writers[CONTEXTS] = lambda p: artifacts.write_json(p, self.contexts)
        if self.throughput:
            writers[BUILD_INFO] = lambda p: artifacts.write_json(p, self.throughput)
        artifacts.commit_set(out_dir, "amap", writers, remove=(CONTEXTS, BUILD_INFO))
        return out_dir / ARTIFACT


def load(path: str | Path) -> AmapResult:
    """An ``AmapResult`` from an AMAP folder (or its ``amap.safetensors``), every field checked
    (``workbench.analyses.amap_io``); a dense v1 artifact is read into the sparse form."""
    from workbench.analyses.amap_io import load_checked

    return load_checked(path)


def key_labels(tokenizer, d_vocab: int, ids: list[int]) -> list[str]:
    """Decoded text of each key id (``[ID_i]`` past the tokenizer; ``[POS_k]`` past d_vocab)."""
    n = len(tokenizer) if tokenizer is not None else 0
    tok = [i for i in ids if i < min(n, d_vocab)]
    text = dict(zip(tok, tokenizer.batch_decode([[i] for i in tok]), strict=True)) if tok else {}
    return [text[i] if i in text else f"[POS_{i - d_vocab}]" if i >= d_vocab else f"[ID_{i}]"
            for i in ids]


def check_model(model, modes) -> None:
    hooks = capture.mlp_hooks(model)
    if getattr(model.cfg, "attn_only", False) or any(h not in model.hook_dict for h in hooks):
        raise WorkbenchError(
            f"{model.cfg.model_name} has no MLP neurons (no blocks.l.mlp.hook_post; attention-only?)"
            ": an AMAP needs MLP layers; use a model with MLPs (tiny-gloss-lm, random-tiny, gpt2)"
        )
    if "output" in modes and capture.is_encoder(model):
        raise WorkbenchError(
            f"{model.cfg.model_name} is an encoder: it predicts masked tokens, not next tokens, so "
            "`output` mode has no meaning for it; use --modes input"
        )


def check_windows(windows: Windows) -> None:
    """Refuse data that holds no full window (SYSIF would build nothing from it)."""
    n_special = windows.tokens.shape[1] - windows.window
    text = windows.mask.sum(1) - n_special
    if int(text.max()) >= windows.window:
        return
    raise WorkbenchError(
        f"the data ({windows.source}) has {int(text.sum())} tokens in {windows.n_documents} "
        f"document(s), the longest {int(text.max())}: no full window of {windows.window} tokens; "
        f"give more text or a smaller window (--window {max(1, int(text.max()))})"
    )


def resolve_layers(model, layers) -> list[int]:
    n = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n))
    out = sorted({int(layer) for layer in layers})
    if not out or out[0] < 0 or out[-1] >= n:
        raise WorkbenchError(f"layers {list(layers)} out of range: the model has layers 0..{n - 1}")
    return out


def analyze(
    model,
    windows: Windows,
    *,
    batch_size: int = 8,
    progress: bool = True,
    context_units: int = 2,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    max_batches: int | None = None,
    require_full_window: bool = True,
    shard: tuple[int, int] | None = None,
    ctx=None,
    **options,
) -> AmapResult:
    """Build the AMAP of ``windows`` (one pass of the capture engine).

    Options (``workbench.analyses.amap_reducer.AmapReducer``): ``modes``, ``positions``,
    ``layers``, ``sum_device`` (sums in host memory while the model runs on a GPU),
    ``top_k`` (max-activating windows kept per unit), ``count_bos`` (count the BOS position as a
    key; default off), ``context_span`` (positions kept around each kept window's peak, default
    32), ``memory_limit`` (bytes the sums may take).

    ``checkpoint_dir`` + ``checkpoint_every``: save the states every N batches; ``resume``
    continues from the checkpoint there (same command and batch size). ``max_batches`` stops
    (raising ``BuildInterrupted``) after that many batches of this run, as a kill would.
    ``context_units``: per layer, how many units (largest max activation) get their top-``top_k``
    windows read out with per-token activations (from the pass itself: no second forward).
    ``shard=(i, n)`` builds the i-th of n slices (merged offline by ``amap merge``); under torchrun
    (``ctx``) each rank builds its slice and the states are reduced: every rank returns the whole.
    ``require_full_window``: refuse data with no full window (SYSIF would build nothing); a
    caller analysing one short text (e.g. ``workbench run``) passes False.
    """
    from workbench.analyses.amap_reducer import AmapReducer
    from workbench.sharding import shard_metadata

    if require_full_window:
        check_windows(windows)
    if checkpoint_every < 1:
        raise WorkbenchError("checkpoint_every must be >= 1")
    processes = ctx.world if ctx is not None and ctx.is_distributed else 1
    reducer = AmapReducer(model, windows, batch_size=batch_size, processes=processes, **options)
    stats, part, offset = capture.run_reducer(
        model, windows, reducer, batch_size=batch_size, progress=progress, shard=shard, ctx=ctx,
        checkpoint_dir=checkpoint_dir, resume=resume, checkpoint_every=checkpoint_every,
        max_batches=max_batches)
    world = ctx.world if ctx is not None else 1
    distributed = ctx is not None and ctx.is_distributed
    if shard is not None:
        extra = {"batch_size": batch_size, "window_offset": offset}
        result = reducer.result(len(part), extra, context_units)
        result.meta["shard"] = shard_metadata(windows, *shard)
    else:
        extra = {"batch_size": batch_size} | ({"processes": world} if distributed else {})
        result = reducer.result(len(windows), extra, context_units)
    result.throughput = stats.as_dict() | (
        {"processes": world, "note": "tokens/seconds of this rank's slice"} if distributed else {})
    return result


def build(model, windows: Windows, out_dir: str | Path, *, ctx=None, **options) -> AmapResult:
    """``analyze`` with checkpoints in ``out_dir`` (each rank its own under torchrun), then the
    artifact (written by rank 0), then the checkpoints are dropped."""
    from workbench import checkpoint

    result = analyze(model, windows, checkpoint_dir=out_dir, ctx=ctx, **options)
    if ctx is None or ctx.is_main:
        result.save(out_dir)
    checkpoint.finish(out_dir, "amap", ctx)
    return result
