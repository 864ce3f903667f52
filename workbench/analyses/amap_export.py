"""AMAP exports and merges: SYSIF's DataFrame layout (pandas / parquet), and ``merge(a, b)``.

>>> df = to_dataframe(load("out/amap"), modes=["input"], layers=[0], tokens=[" the", " cat"])  # doctest: +SKIP
>>> df.loc["0_17", " cat"]     # mean activation of layer 0, neuron 17 when " cat" is the input  # doctest: +SKIP

SYSIF's layout: one row per unit and mode, indexed ``"{layer}_{i}"``; one column per token (its
decoded text) holding the unit's mean activation for that token (NaN if unseen), then ``#unit``,
``#mode``, ``#layer`` and ``#mean`` (the unit's mean over every position). Two tokens that decode
to the same text (e.g. partial UTF-8 bytes) get their id appended: ``"� [201]"``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from workbench import artifacts
from workbench.analyses.amap import ARTIFACT, AmapResult, load  # noqa: F401 (doc)
from workbench.analyses.amap_io import checked_meta
from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap, invariants
from workbench.kernels.top_windows import TopWindows

META_COLUMNS = ("#unit", "#mode", "#layer", "#mean")


def column_names(key_strs: Mapping[int, str], ids: Sequence[int]) -> list[str]:
    """Unique column names for key ``ids``: the token text, plus ``[id]`` where it repeats."""
    text = [key_strs.get(i, f"[ID_{i}]") for i in ids]
    counts: dict[str, int] = {}
    for t in text:
        counts[t] = counts.get(t, 0) + 1
    return [t if counts[t] == 1 and t not in META_COLUMNS else f"{t} [{i}]"
            for t, i in zip(text, ids, strict=True)]


def select_keys(result: AmapResult, tokens: Sequence[int | str] | None = None,
                top: int | None = None) -> list[int]:
    """Key ids to export: given ids / token texts, or the ``top`` most frequent inputs, or every
    key seen (in any mode)."""
    n = result.amap.n_keys
    if tokens is not None:
        where = {}
        for i, s in sorted(result.key_strs.items()):
            where.setdefault(s, i)
        ids = []
        for t in tokens:
            if isinstance(t, int):
                if not 0 <= t < n:
                    raise WorkbenchError(f"token id {t} is outside the AMAP's keys 0..{n - 1}")
                ids.append(t)
            elif t in where:
                ids.append(where[t])
            else:
                raise WorkbenchError(
                    f"token {t!r} is not a key this AMAP saw; give token texts exactly as "
                    "decoded (mind the leading space, e.g. ' the') or ids"
                )
        return ids
    mode = result.modes[0]
    if top is not None:
        count = result.counts(mode)
        return sorted(result.keys(mode)[count.topk(min(top, len(count))).indices].tolist())
    return torch.unique(torch.cat([result.keys(m).cpu() for m in result.modes])).tolist()


def to_dataframe(result: AmapResult, modes: Sequence[str] | None = None,
                 layers: Sequence[int] | None = None,
                 tokens: Sequence[int | str] | None = None, top: int | None = None):
    """SYSIF's DataFrame for the chosen modes, layers and tokens (see the module docstring)."""
    import pandas as pd

    modes = list(modes or result.modes)
    layers = list(result.layers if layers is None else layers)
    ids = select_keys(result, tokens, top)
    columns = column_names(result.key_strs, ids)
    unit_mean = result.amap.unit_mean()
    frames = []
    for mode in modes:
        means, _ = result.at(mode, ids)
        for layer in layers:
            row = result._row(layer)
            block = means[row].T.float().numpy()  # [mlp, keys]
            units = [f"{layer}_{i}" for i in range(block.shape[0])]
            df = pd.DataFrame(block, index=pd.Index(units, name="unit"), columns=columns)
            df["#unit"] = units
            df["#mode"] = mode
            df["#layer"] = layer
            df["#mean"] = unit_mean[row].numpy()
            frames.append(df)
    return pd.concat(frames)


def write_parquet(result: AmapResult, path: str | Path, **selection) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    to_dataframe(result, **selection).to_parquet(tmp)
    tmp.replace(path)
    return path


def _differences(a: dict, b: dict) -> list[str]:
    from workbench.analyses.shards import IDENTITY

    # Artifacts from before dtype / weight processing were recorded still merge with each other.
    keys = [k for k in IDENTITY if k in a or k in b]
    out = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    sa, sb = a.get("settings", {}), b.get("settings", {})
    out += [f"{k}: {sa.get(k)!r} vs {sb.get(k)!r}" for k in sorted(set(sa) | set(sb))
            if sa.get(k) != sb.get(k)]
    return out


def check_same_model(a: dict, b: dict, what: str) -> None:
    """Refuse two AMAP metadata dicts that come from different models, tokenizers or settings."""
    if a.get("amap", {}).get("compat") == b.get("amap", {}).get("compat"):
        return
    diff = _differences(a, b) or ["fingerprints differ"]
    raise WorkbenchError(
        f"{what}: the AMAPs come from different models, tokenizers or settings ({'; '.join(diff)});"
        " merge only AMAPs built with the same model and the same --modes/--positions/--layers/"
        "--count-bos"
    )


def _data_sha(meta: dict) -> str | None:
    data = meta.get("data")
    return data.get("sha256") if isinstance(data, dict) else None


def builds_of(meta: dict) -> list[str]:
    """The single builds an AMAP holds: its own build id, or those of the parts it merged."""
    a = meta.get("amap", {})
    return list(a.get("parts") or ([a["build_id"]] if a.get("build_id") else []))


def check_distinct_builds(metas: Sequence[dict], names: Sequence[str]) -> None:
    """Refuse a build given twice: the same folder twice, a copy of it, or a merge that holds it
    already (the build ids in the metadata tell); its windows would count twice."""
    seen: dict[str, str] = {}
    for meta, name in zip(metas, names, strict=True):
        for b in builds_of(meta):
            if b in seen:
                raise WorkbenchError(
                    f"{seen[b]} and {name} hold the same build (build id {b[:12]}): merging "
                    "would count its windows twice; give each build (or shard) once")
        for b in builds_of(meta):
            seen[b] = name


def merge(a: AmapResult, b: AmapResult) -> AmapResult:
    """One AMAP holding both (in memory): the union of their keys, counts and sums added, unit
    maxima maxed. Max-activating windows are kept only when both parts are shards of the same
    data (same sha256, different window offsets): window ids of different data sets cannot be
    told apart."""
    check_same_model(a.meta, b.meta, "cannot merge")
    check_distinct_builds([a.meta, b.meta], ["the first AMAP", "the second"])
    amap = Amap.from_state(a.amap.state_dict(), a.amap.d_vocab, a.amap.n_positions).merge(b.amap)
    top = _merged_top([(a.meta, a.top), (b.meta, b.top)])
    return _merged_result([a.meta, b.meta], amap, top, [a.key_strs, b.key_strs],
                          a.n_windows + b.n_windows, list(a.layers))


def _merged_top(parts: Sequence[tuple[dict, TopWindows | None]]) -> TopWindows | None:
    """The parts' max-activating windows (``(meta, top)`` each) folded, when they are slices
    of one data set."""
    shas = {_data_sha(meta) for meta, _ in parts}
    offsets = [meta["amap"].get("window_offset", 0) for meta, _ in parts]
    if None in shas or len(shas) != 1 or len(set(offsets)) != len(offsets):
        return None
    if any(top is None for _, top in parts):
        return None
    t0 = parts[0][1]
    top = type(t0)(t0.n_layers, t0.d_mlp, t0.k, span=t0.span).load_state_dict(t0.state_dict())
    for _, other in parts[1:]:
        top.merge(other)
    return top


def _merged_result(metas: Sequence[dict], amap: Amap, top, labels: Sequence[Mapping[int, str]],
                   n_windows: int, layers: list[int]) -> AmapResult:
    shas = {_data_sha(m) for m in metas}
    same = None not in shas and len(shas) == 1
    meta = dict(metas[0])
    meta["data"] = {"sha256": shas.pop() if same else None,
                    "parts": [m.get("data") for m in metas], "n_windows": n_windows}
    key_strs: dict[int, str] = {}
    for part in labels:
        key_strs.update(part)
    ids = sorted(key_strs)
    meta["amap"] = {**metas[0]["amap"], "n_windows": n_windows, "merged": True,
                    "build_id": uuid.uuid4().hex,
                    "parts": [b for m in metas for b in builds_of(m)],
                    "window_offset": min(m["amap"].get("window_offset", 0) for m in metas),
                    "key_ids": ids, "key_strs": [key_strs[i] for i in ids]}
    result = AmapResult(amap.sort_(), top, layers, key_strs, n_windows, meta)
    result.invariants = amap.invariants(n_windows)
    return result


def merge_dirs(dirs: Sequence[str | Path]) -> AmapResult:
    """One AMAP from the folders of several builds (or ``--shard`` parts), streamed from disk:
    every part's metadata and small tensors first, then the merged states are allocated once
    (the union of the keys) and each part's sums are added a layer at a time, so memory holds
    the result and one layer of one part, never two whole AMAPs."""
    if len(dirs) < 2:
        raise WorkbenchError("give at least two AMAP folders to merge")
    from workbench.analyses.shards import check_parts, merged_meta

    files = [_artifact_file(d) for d in dirs]
    metas = [_header_meta(f) for f in files]
    order = check_parts(metas, list(dirs))  # one sharded build: in shard order
    check_distinct_builds([metas[j] for j in order], [str(dirs[j]) for j in order])
    for j in order[1:]:
        check_same_model(metas[order[0]], metas[j], "cannot merge")
    parts = [_Part(files[j], metas[j]) for j in order]
    first = parts[0]
    modes, layers = first.modes, first.layers
    for p in parts[1:]:
        if p.modes != modes or p.layers != layers:
            raise WorkbenchError(f"cannot merge {p.file} (modes {p.modes}, layers {p.layers}) with "
                                 f"{first.file} (modes {modes}, layers {layers})")
    d_vocab, n_pos = first.info["d_vocab"], first.info["n_pos"]
    state: dict[str, torch.Tensor] = {}
    for m in modes:
        keys = torch.unique(torch.cat([p.keys[m] for p in parts]))
        count = torch.zeros(len(keys), dtype=torch.long)
        total = torch.zeros(len(layers), len(keys), first.d_mlp, dtype=torch.float64)
        for p in parts:
            where = torch.searchsorted(keys, p.keys[m])
            count.index_add_(0, where, p.counts[m])
            for row in range(len(layers)):
                total[row].index_add_(0, where, p.layer_sums(m, row))
        state |= {f"keys.{m}": keys, f"count.{m}": count, f"sum.{m}": total}
    state["act_max"] = torch.stack([p.small["act_max"] for p in parts]).amax(0)
    amap = Amap.from_state(state, d_vocab, n_pos, copy=False)
    tops = [(p.meta, _part_top(p)) for p in parts]
    out = _merged_result([p.meta for p in parts], amap, _merged_top(tops),
                         [p.info["key_strs"] for p in parts],
                         sum(p.info["n_windows"] for p in parts), layers)
    if any("shard" in m for m in metas):
        out.meta = {**out.meta, "merged_from": merged_meta(
            [metas[j] for j in order], [dirs[j] for j in order])["merged_from"]}
        out.meta.pop("shard", None)
    return out


class _Part:
    """One AMAP file being merged: its metadata, keys, counts and small tensors in memory; its
    sums read a layer at a time (``layer_sums``)."""

    def __init__(self, file: Path, meta: dict):
        from safetensors import safe_open

        self.file, self.meta = file, meta
        self.info = checked_meta(file, meta)
        header = artifacts.read_header(file)
        names = [n for n in header if n != "__metadata__"]
        self.modes = tuple(m for m in ("input", "output") if f"sum.{m}" in names)
        f = artifacts.Fields(meta, file)
        f.require(bool(self.modes), "holds no sum.input / sum.output tensor")
        self.v1 = f"keys.{self.modes[0]}" not in names
        try:
            with safe_open(str(file), "pt") as st:
                self.small = {n: st.get_tensor(n) for n in names if not n.startswith("sum.")}
        except Exception as exc:
            raise artifacts.damaged(file, f"cannot be read as safetensors ({exc})") from None
        self.layers = self.small["layers"].tolist() if "layers" in self.small else []
        shape = header[f"sum.{self.modes[0]}"]["shape"]
        f.require(len(shape) == 3 and shape[0] == len(self.layers), f"tensor sum.{self.modes[0]} "
                  f"{shape} does not match its {len(self.layers)} layers")
        self.d_mlp = shape[2]
        self.keys, self.counts = {}, {}
        for m in self.modes:
            count = self.small[f"count.{m}"]
            keys = torch.nonzero(count > 0).reshape(-1) if self.v1 else self.small[f"keys.{m}"]
            self.keys[m], self.counts[m] = keys, count[keys] if self.v1 else count
            f.require(header[f"sum.{m}"]["shape"] == [len(self.layers), len(count), self.d_mlp],
                      f"tensor sum.{m} {header[f'sum.{m}']['shape']} does not fit its counts")
            f.require(bool((self.counts[m] > 0).all()) and len(torch.unique(keys)) == len(keys),
                      f"count.{m} / keys.{m} hold counts <= 0 or repeated keys")
        state = {f"keys.{m}": self.keys[m] for m in self.modes}
        state |= {f"count.{m}": self.counts[m] for m in self.modes}
        checks = invariants(state, self.modes, self.info["d_vocab"], self.info["n_pos"],
                            self.info["n_windows"])
        broken = [k for k, ok in checks.items() if not ok]
        f.require(not broken, f"its counts break the AMAP invariants {broken} (edited by hand, "
                  "or n_windows / n_positions changed?)")
        if "act_max" not in self.small:
            self.small["act_max"] = torch.full((len(self.layers), self.d_mlp), torch.nan)

    def layer_sums(self, mode: str, row: int) -> torch.Tensor:
        """Row ``row`` of ``sum.{mode}`` (fp64, one row per key of ``keys[mode]``), from disk."""
        from safetensors import safe_open

        with safe_open(str(self.file), "pt") as st:
            piece = st.get_slice(f"sum.{mode}")[row]
        return (piece[self.keys[mode]] if self.v1 else piece).to(torch.float64)


def _part_top(part: _Part) -> TopWindows | None:
    """A part's max-activating windows (from its small tensors), if it kept them."""
    top = None
    if "top.values" in part.small:
        v = part.small["top.values"]
        acts = part.small.get("top.acts")
        span = int(acts.shape[-1]) if acts is not None and acts.ndim == 4 else 0
        names = ("values", "windows", "positions") + (("starts", "acts") if span else ())
        try:
            top = TopWindows(v.shape[0], v.shape[1], v.shape[2], span=span).load_state_dict(
                {k: part.small[f"top.{k}"] for k in names})
        except (KeyError, WorkbenchError) as exc:
            raise artifacts.damaged(part.file, f"its top.* tensors do not fit together ({exc})") from None
    return top


def _artifact_file(path: str | Path) -> Path:
    path = Path(path)
    file = path / ARTIFACT if path.is_dir() else path
    artifacts.recover(file.parent, "amap")
    if not file.exists():
        raise WorkbenchError(f"no AMAP at {path}: expected {file} (written by `workbench amap "
                             "build`)")
    return file


def _header_meta(file: Path) -> dict:
    """An AMAP's metadata from its safetensors header alone (no tensor is read)."""
    meta = artifacts.read_meta(file)
    if "amap" not in meta:
        raise WorkbenchError(f"{file} is not an AMAP artifact (no 'amap' metadata)")
    checked_meta(file, meta)  # the set check reads these; the tensors are checked on load
    return meta
