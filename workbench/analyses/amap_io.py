"""Reading an AMAP folder back: every tensor and metadata field checked before use.

``load_checked(path)`` (``workbench.analyses.amap.load``) finishes a set commit a kill
interrupted, reads ``amap.safetensors`` + its metadata and ``amap_contexts.json``, checks types,
ranges, shapes and SYSIF's invariants (a damaged or hand-edited file is one clear line, never a
traceback), and converts a dense v1 artifact to the sparse form. ``checked_meta`` checks only the
metadata (``amap merge`` reads every part's header this way first).
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench import artifacts
from workbench.analyses.amap import ARTIFACT, CONTEXTS, AmapResult
from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap
from workbench.kernels.top_windows import TopWindows


def load_checked(path: str | Path) -> AmapResult:
    """An ``AmapResult`` from an AMAP folder (or its ``amap.safetensors``)."""
    path = Path(path)
    file = path / ARTIFACT if path.is_dir() else path
    artifacts.recover(file.parent, "amap")  # finish a commit a kill interrupted
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
    if meta.get("amap", {}).get("build_id") is None:  # v1: no build id, dense sums
        result.meta = {**meta, "amap": {**meta["amap"], "converted_from": "v1 (dense)"}}
    result.invariants = amap.invariants(result.n_windows)
    broken = [k for k, ok in result.invariants.items() if not ok]
    if broken:
        raise artifacts.damaged(file, f"its counts break the AMAP invariants {broken} (edited by "
                                "hand, or n_windows / n_positions changed?)")
    return result


def checked_meta(file: Path, meta: dict) -> dict:
    """The fields of an AMAP's metadata the workbench reads, after checking their types and
    ranges (no tensor needed: ``amap merge`` checks every part's header this way first).
    ``key_strs``: ``{key id: label}`` of the keys labelled (v2: ``key_ids`` beside ``key_strs``;
    v1: one label per id of the whole vocabulary)."""
    f = artifacts.Fields(meta, file)
    a = f.section("amap")
    out = {"n_pos": a.int("n_positions"), "n_windows": a.int("n_windows"),
           "n_layers": f.int("n_layers", 1), "d_vocab": f.int("d_vocab", 1),
           "build_id": a.get("build_id", str, None), "parts": a.get("parts", list, [])}
    labels = a.get("key_strs", list)
    a.require(all(isinstance(k, str) for k in labels), "metadata 'amap.key_strs' holds non-text")
    ids = a.get("key_ids", list, None)
    if ids is None:  # v1
        a.require(len(labels) == out["d_vocab"] + out["n_pos"],
                  f"metadata 'amap.key_strs' has {len(labels)} labels for "
                  f"{out['d_vocab'] + out['n_pos']} keys (d_vocab + n_positions)")
        ids = list(range(len(labels)))
    a.require(len(ids) == len(labels) and all(isinstance(i, int) and 0 <= i < out["d_vocab"]
                                              + out["n_pos"] for i in ids),
              f"metadata 'amap.key_ids' ({len(ids)}) does not match its {len(labels)} labels or "
              "holds ids outside the vocabulary and positions")
    out["key_strs"] = dict(zip(ids, labels, strict=True))
    settings = meta.get("settings")
    if isinstance(settings, dict) and isinstance(settings.get("n_positions"), int):
        a.require(settings["n_positions"] == out["n_pos"], f"metadata 'amap.n_positions' "
                  f"{out['n_pos']} differs from the build's setting {settings['n_positions']}")
    a.require(all(isinstance(p, str) for p in out["parts"]), "metadata 'amap.parts' holds non-text")
    f.get("data", dict, {})
    f.get("settings", dict, {})
    return out


def _checked(file: Path, tensors: dict, meta: dict):
    """The accumulators of an AMAP artifact after checking its metadata against its tensors
    (a v1 artifact, dense over the whole vocabulary, is converted to the sparse form)."""
    m = checked_meta(file, meta)
    f = artifacts.Fields(meta, file)
    n_pos, n_windows, key_strs = m["n_pos"], m["n_windows"], m["key_strs"]
    n_layers_model, d_vocab = m["n_layers"], m["d_vocab"]
    modes = [mode for mode in ("input", "output") if f"sum.{mode}" in tensors]
    f.require(bool(modes), "holds no sum.input / sum.output tensor")
    s = tensors[f"sum.{modes[0]}"]
    f.require(s.ndim == 3, f"tensor sum.{modes[0]} is {tuple(s.shape)}, not [layer, key, mlp]")
    if f"keys.{modes[0]}" not in tensors:  # v1: dense over every key id
        f.require(s.shape[1] == d_vocab + n_pos, f"metadata 'amap.n_positions' {n_pos} and "
                  f"'d_vocab' {d_vocab} do not add up to the tensors' {s.shape[1]} keys")
    layers_t = tensors.get("layers")
    f.require(layers_t is not None and layers_t.ndim == 1 and layers_t.dtype == torch.long
              and len(layers_t) == s.shape[0], "tensor 'layers' is missing or does not match "
              "the sums' layers")
    layers = layers_t.tolist()
    f.require(layers == sorted(set(layers)) and all(0 <= x < n_layers_model for x in layers),
              f"tensor 'layers' {layers} is not increasing within 0..{n_layers_model - 1}")
    try:
        amap = Amap.from_state(tensors, d_vocab, n_pos, copy=False)  # read from the file: adopt
    except WorkbenchError as exc:
        raise artifacts.damaged(file, f"its tensors do not fit together ({exc})") from None
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
