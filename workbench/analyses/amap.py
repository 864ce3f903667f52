"""Neuron AMAPs over a dataset (SYSIF): each MLP neuron's mean activation per token, resumable.

>>> w = load_windows(model, dataset="wordnet-glosses", window=15, stride=15, bos=False)  # doctest: +SKIP
>>> r = build(model, w, "out/amap", modes=("input", "output"), positions=True)         # doctest: +SKIP
>>> r.top_tokens(layer=2, neuron=17, k=5)        # tokens whose input mean is highest  # doctest: +SKIP
>>> r.contexts[0]                                # a unit's max-activating windows      # doctest: +SKIP
>>> r.contexts_for(model, w, [(1, 17)])          # the same for any unit                # doctest: +SKIP

DESIGN.md semantics: layer l, neuron i (``blocks.{l}.mlp.hook_post``), key t: mean activation over
every real position whose key is t (``input``: the token there; ``output``: the model's argmax
prediction there; ``[POS_k]``: window position k, when positions are on). Sums and int64 counts
are stored; an unseen key has count 0 and mean NaN. SYSIF's defaults: window 15, stride 15, no BOS.
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
    key_strs: list[str]  # label of each key id: decoded tokens, then [POS_k]
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

    def means(self, mode: str = "input") -> Float[Tensor, "layer key mlp"]:
        """Mean activation per (layer, key, neuron); NaN where the key was never seen."""
        return self.amap.compute()[f"mean.{self._mode(mode)}"]

    def counts(self, mode: str = "input") -> Tensor:
        return self.amap.counts[self._mode(mode)]

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
        mean = self.means(mode)[row, :, neuron]
        count = self.counts(mode).clone()
        if not positions:
            count[self.amap.d_vocab :] = 0
        score = torch.where(count >= min_count, mean, torch.tensor(-torch.inf, dtype=mean.dtype))
        vals, ids = score.topk(min(k, int((count >= min_count).sum())))
        return [{"id": int(i), "token": self.key_strs[int(i)], "mean": float(v),
                 "count": int(count[i])} for v, i in zip(vals, ids, strict=True)]

    def contexts_for(self, model, windows: Windows, units: list[tuple[int, int]],
                     window_offset: int = 0) -> list[dict]:
        """Max-activating windows of any ``units`` ``[(layer, neuron), ...]``: tokens and the
        unit's activation at each, around the peak (kept by the build's pass; an older AMAP's
        windows are run through ``model`` again). ``windows``: the data the AMAP was built on
        (e.g. ``load_windows`` with the metadata's source and windowing)."""
        return read_contexts(model, windows, self, units=units, window_offset=window_offset)

    def tensors(self) -> dict[str, Tensor]:
        out = dict(self.amap.state_dict())
        out["layers"] = torch.tensor(self.layers, dtype=torch.long)
        if self.top is not None:
            out |= {f"top.{k}": v for k, v in self.top.state_dict().items()}
        return out

    def summary(self) -> dict:
        """Key numbers: modes, layers, windows, distinct keys seen, dead units per layer."""
        m = self.modes[0]
        return {"modes": list(self.modes), "layers": list(self.layers),
                "windows": self.n_windows, "d_mlp": self.amap.d_mlp,
                "keys_seen": int((self.counts(m)[: self.amap.d_vocab] > 0).sum()),
                "positions": int(self.counts(m)[: self.amap.d_vocab].sum()),
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
        out_dir = Path(out_dir)
        path = artifacts.save(out_dir / ARTIFACT, self.tensors(), self.meta)
        if self.contexts:
            artifacts.write_json(out_dir / CONTEXTS, self.contexts)
        if self.throughput:
            artifacts.write_json(out_dir / BUILD_INFO, self.throughput)
        return path


def load(path: str | Path) -> AmapResult:
    """An ``AmapResult`` from an AMAP folder (or its ``amap.safetensors``)."""
    path = Path(path)
    file = path / ARTIFACT if path.is_dir() else path
    if not file.exists():
        raise WorkbenchError(f"no AMAP at {path}: expected {file} (written by `workbench amap build`)")
    tensors, meta = artifacts.load(file)
    if "amap" not in meta:
        raise WorkbenchError(f"{file} is not an AMAP artifact (no 'amap' metadata)")
    amap, top, layers, info = _checked(file, tensors, meta)
    ctx_file = file.parent / CONTEXTS
    contexts = _checked_contexts(ctx_file, layers, amap.d_mlp) if ctx_file.exists() else []
    result = AmapResult(amap, top, layers, info["key_strs"], info["n_windows"], meta,
                        contexts=contexts)
    result.invariants = amap.invariants(result.n_windows)
    broken = [k for k, ok in result.invariants.items() if not ok]
    if broken:
        raise artifacts.damaged(file, f"its counts break the AMAP invariants {broken} (edited by "
                                "hand, or n_windows / n_positions changed?)")
    return result


def checked_meta(file: Path, meta: dict) -> dict:
    """The fields of an AMAP's metadata the workbench reads, after checking their types and
    ranges (no tensor needed: ``amap merge`` checks every part's header this way first)."""
    f = artifacts.Fields(meta, file)
    a = f.section("amap")
    out = {"n_pos": a.int("n_positions"), "n_windows": a.int("n_windows"),
           "key_strs": a.get("key_strs", list), "n_layers": f.int("n_layers", 1),
           "d_vocab": f.int("d_vocab", 1)}
    a.require(all(isinstance(k, str) for k in out["key_strs"]),
              "metadata 'amap.key_strs' holds non-text")
    f.get("data", dict, {})
    f.get("settings", dict, {})
    return out


def _checked(file: Path, tensors: dict, meta: dict):
    """The accumulators of an AMAP artifact after checking its metadata against its tensors."""
    m = checked_meta(file, meta)
    f = artifacts.Fields(meta, file)
    a = f.section("amap")
    n_pos, n_windows, key_strs = m["n_pos"], m["n_windows"], m["key_strs"]
    n_layers_model = m["n_layers"]
    modes = [mode for mode in ("input", "output") if f"sum.{mode}" in tensors]
    f.require(bool(modes), "holds no sum.input / sum.output tensor")
    s = tensors[f"sum.{modes[0]}"]
    f.require(s.ndim == 3, f"tensor sum.{modes[0]} is {tuple(s.shape)}, not [layer, key, mlp]")
    n_keys = s.shape[1]
    a.require(len(key_strs) == n_keys, f"metadata 'amap.key_strs' has {len(key_strs)} labels for "
              f"{n_keys} keys")
    d_vocab = m["d_vocab"]
    a.require(n_keys == d_vocab + n_pos, f"metadata 'amap.n_positions' {n_pos} and 'd_vocab' "
              f"{d_vocab} do not add up to the tensors' {n_keys} keys")
    layers_t = tensors.get("layers")
    f.require(layers_t is not None and layers_t.ndim == 1 and layers_t.dtype == torch.long
              and len(layers_t) == s.shape[0], "tensor 'layers' is missing or does not match "
              "the sums' layers")
    layers = layers_t.tolist()
    f.require(layers == sorted(set(layers)) and all(0 <= x < n_layers_model for x in layers),
              f"tensor 'layers' {layers} is not increasing within 0..{n_layers_model - 1}")
    try:
        amap = Amap.from_state(tensors, n_pos, copy=False)  # read from the file: adopt
    except WorkbenchError as exc:
        raise artifacts.damaged(file, f"its tensors do not fit together ({exc})") from None
    for m in modes:
        f.require(bool((amap.counts[m] >= 0).all()), f"count.{m} holds negative counts")
    top = None
    if "top.values" in tensors:
        v = tensors["top.values"]
        f.require(v.ndim == 3 and tuple(v.shape[:2]) == (len(layers), amap.d_mlp),
                  f"tensor top.values is {tuple(v.shape)}, not [layer, mlp, k]")
        acts = tensors.get("top.acts")
        span = int(acts.shape[-1]) if acts is not None and acts.ndim == 4 else 0
        names = ("values", "windows", "positions") + (("starts", "acts") if span else ())
        try:
            top = TopWindows(v.shape[0], v.shape[1], v.shape[2], span=span).load_state_dict(
                {k: tensors[f"top.{k}"] for k in names})
        except (KeyError, WorkbenchError) as exc:
            raise artifacts.damaged(file, f"its top.* tensors do not fit together ({exc})") from None
    return amap, top, layers, {"key_strs": key_strs, "n_windows": n_windows}


def _checked_contexts(path: Path, layers: list[int], d_mlp: int) -> list[dict]:
    contexts = artifacts.read_json(path, "list of AMAP contexts")
    def window_ok(w) -> bool:
        return (isinstance(w, dict) and isinstance(w.get("tokens"), list)
                and isinstance(w.get("acts"), list) and len(w["tokens"]) == len(w["acts"])
                and all(isinstance(t, str) for t in w["tokens"])
                and all(isinstance(a, (int, float)) for a in w["acts"])
                and all(isinstance(w.get(k), int) for k in ("window", "doc", "start", "peak"))
                and isinstance(w.get("max"), (int, float)))

    ok = isinstance(contexts, list) and all(
        isinstance(c, dict) and c.get("layer") in layers and isinstance(c.get("neuron"), int)
        and 0 <= c["neuron"] < d_mlp and isinstance(c.get("windows"), list)
        and all(window_ok(w) for w in c["windows"]) for c in contexts)
    if not ok:
        raise artifacts.damaged(path, "does not hold the AMAP's contexts (a list of units of "
                                "its layers, each with windows)", "rebuild the AMAP, or delete "
                                "the file to load the AMAP without contexts")
    return contexts


def key_labels(tokenizer, d_vocab: int, n_positions: int) -> list[str]:
    """Decoded text of every token id (``[ID_i]`` past the tokenizer), then ``[POS_k]``."""
    n = min(d_vocab, len(tokenizer)) if tokenizer is not None else 0
    labels = tokenizer.batch_decode([[i] for i in range(n)]) if n else []
    labels += [f"[ID_{i}]" for i in range(n, d_vocab)]
    return labels + [f"[POS_{k}]" for k in range(n_positions)]


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
    ``layers``, ``sum_dtype``, ``sum_device``,
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
    reducer = AmapReducer(model, windows, batch_size=batch_size, **options)
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
