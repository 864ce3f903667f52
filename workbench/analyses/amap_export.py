"""AMAP exports and merges: SYSIF's DataFrame layout (pandas / parquet), and ``merge(a, b)``.

>>> df = to_dataframe(load("out/amap"), modes=["input"], layers=[0], tokens=[" the", " cat"])  # doctest: +SKIP
>>> df.loc["0_17", " cat"]     # mean activation of layer 0, neuron 17 when " cat" is the input  # doctest: +SKIP

SYSIF's layout: one row per unit and mode, indexed ``"{layer}_{i}"``; one column per token (its
decoded text) holding the unit's mean activation for that token (NaN if unseen), then ``#unit``,
``#mode``, ``#layer`` and ``#mean`` (the unit's mean over every position). Two tokens that decode
to the same text (e.g. partial UTF-8 bytes) get their id appended: ``"� [201]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from workbench.analyses.amap import AmapResult, load
from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap

META_COLUMNS = ("#unit", "#mode", "#layer", "#mean")


def column_names(key_strs: Sequence[str], ids: Sequence[int]) -> list[str]:
    """Unique column names for key ``ids``: the token text, plus ``[id]`` where it repeats."""
    counts: dict[str, int] = {}
    for i in ids:
        counts[key_strs[i]] = counts.get(key_strs[i], 0) + 1
    return [key_strs[i] if counts[key_strs[i]] == 1 and key_strs[i] not in META_COLUMNS
            else f"{key_strs[i]} [{i}]" for i in ids]


def select_keys(result: AmapResult, tokens: Sequence[int | str] | None = None,
                top: int | None = None) -> list[int]:
    """Key ids to export: given ids / token texts, or the ``top`` most frequent inputs, or all."""
    n = result.amap.n_keys
    if tokens is not None:
        where = {}
        for i, s in enumerate(result.key_strs):
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
                    f"token {t!r} is not a single token of this AMAP's vocabulary; give token "
                    "texts exactly as decoded (mind the leading space, e.g. ' the') or ids"
                )
        return ids
    if top is not None:
        count = result.counts(result.modes[0])
        return sorted(count.topk(min(top, n)).indices.tolist())
    return list(range(n))


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
        means = result.means(mode)
        for layer in layers:
            row = result._row(layer)
            block = means[row][ids].T.float().numpy()  # [mlp, keys]
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
        "--sum-dtype"
    )


def _data_sha(meta: dict) -> str | None:
    return meta.get("data", {}).get("sha256")


def merge(a: AmapResult, b: AmapResult) -> AmapResult:
    """One AMAP holding both: sums and counts added, unit maxima maxed.

    Max-activating windows are kept only when both parts are shards of the same data (same sha256,
    different window offsets), since window ids of different data sets cannot be told apart.
    """
    check_same_model(a.meta, b.meta, "cannot merge")
    n_pos = a.meta["amap"]["n_positions"]
    amap = Amap.from_state(a.amap.state_dict(), n_pos).merge(b.amap)
    return _folded(a, b, amap, a.top, b.top)


def _folded(a: AmapResult, b: AmapResult, amap: Amap, top_a, top_b) -> AmapResult:
    """The merged result of ``a`` and ``b`` given their folded sums (``amap``)."""
    same = _data_sha(a.meta) is not None and _data_sha(a.meta) == _data_sha(b.meta)
    offsets_differ = a.meta["amap"].get("window_offset") != b.meta["amap"].get("window_offset")
    top = None
    if same and offsets_differ and top_a is not None and top_b is not None:
        top = top_a if top_a is not a.top else type(top_a)(
            top_a.n_layers, top_a.d_mlp, top_a.k, span=top_a.span).load_state_dict(
            top_a.state_dict())
        top.merge(top_b)
    n_windows = a.n_windows + b.n_windows
    meta = dict(a.meta)
    meta["data"] = {"sha256": _data_sha(a.meta) if same else None,
                    "parts": [a.meta.get("data"), b.meta.get("data")], "n_windows": n_windows}
    meta["amap"] = {**a.meta["amap"], "n_windows": n_windows, "merged": True,
                    "window_offset": min(a.meta["amap"].get("window_offset", 0),
                                         b.meta["amap"].get("window_offset", 0))}
    result = AmapResult(amap, top, list(a.layers), list(a.key_strs), n_windows, meta)
    result.invariants = amap.invariants(n_windows)
    return result


def merge_dirs(dirs: Sequence[str | Path]) -> AmapResult:
    if len(dirs) < 2:
        raise WorkbenchError("give at least two AMAP folders to merge")
    from workbench.analyses.shards import check_parts, merged_meta

    # The metadata of every part first (headers only), then the parts from disk one at a time,
    # each folded into the first in place: memory holds two parts' states, never all of them.
    metas = [_header_meta(d) for d in dirs]
    # one sharded build (--shard i/n): every part present once, folded in shard order
    order = check_parts(metas, list(dirs))
    out = load(dirs[order[0]])
    for j in order[1:]:
        part = load(dirs[j])
        check_same_model(out.meta, part.meta, "cannot merge")
        out = _folded(out, part, out.amap.merge(part.amap), out.top, part.top)
        del part
    if any("shard" in m for m in metas):
        out.meta = {**out.meta, "merged_from": merged_meta(
            [metas[j] for j in order], [dirs[j] for j in order])["merged_from"]}
        out.meta.pop("shard", None)
    return out


def _header_meta(path: str | Path) -> dict:
    """An AMAP's metadata from its safetensors header alone (no tensor is read)."""
    from workbench import artifacts
    from workbench.analyses.amap import ARTIFACT, checked_meta

    path = Path(path)
    file = path / ARTIFACT if path.is_dir() else path
    if not file.exists():
        raise WorkbenchError(f"no AMAP at {path}: expected {file} (written by `workbench amap "
                             "build`)")
    meta = artifacts.read_meta(file)
    if "amap" not in meta:
        raise WorkbenchError(f"{file} is not an AMAP artifact (no 'amap' metadata)")
    checked_meta(file, meta)  # the set check reads these; the tensors are checked on load
    return meta
