"""Offline merge of shard artifacts (cluster job arrays): check the set, then fold in order.

1. Each array task runs ``workbench distributions ... --shard i/n`` (or ``amap build --shard i/n``);
   its artifact's metadata records ``shard: {index, count, windows: [lo, hi], n_windows_total}``.
2. ``order = check_parts(metas, paths)`` refuses parts of different models, weights, tokenizers,
   data or settings, a shard given twice or missing ("shard 1/3 missing"), and returns the parts
   in shard order.
3. The caller rebuilds each part's accumulators and folds them with their own ``merge``: the same
   code a ``torchrun`` job reduces with (``workbench.distributed``).

Artifacts without shard metadata (e.g. builds over different corpora) may also be merged: then
model, tokenizer and settings must agree, and the data may differ.
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.identity import DATA as DATA_IDENTITY
from workbench.identity import MODEL as IDENTITY
from workbench.identity import data_of
from workbench.identity import settings_of as _settings


def _differs(what: str, values: list, names: list[str]) -> WorkbenchError:
    listing = "; ".join(f"{n}: {v}" for n, v in zip(names, values, strict=True))
    return WorkbenchError(f"cannot merge parts with different {what} ({listing}); merge only "
                          "shards of one build (same model, tokenizer, data and settings)")


def check_parts(metas: list[dict], paths: list[str | Path]) -> list[int]:
    """Indices into ``metas`` in merge order, after checking they form one whole build."""
    names = [str(p) for p in paths]
    if len(metas) < 2:
        raise WorkbenchError(f"give at least two artifacts to merge (got {len(metas)})")
    for key in IDENTITY:
        values = [m.get(key) for m in metas]
        if len(set(map(str, values))) > 1:
            raise _differs(key.replace("_", " "), values, names)
    settings = [_settings(m) for m in metas]
    if any(s != settings[0] for s in settings):
        diff = sorted({k for s in settings for k in s if s.get(k) != settings[0].get(k)})
        raise _differs(f"settings {diff}", [{k: s.get(k) for k in diff} for s in settings], names)
    _refuse_repeats(metas, paths)
    shards = [m.get("shard") for m in metas]
    if all(s is None for s in shards):
        return list(range(len(metas)))
    if any(s is None for s in shards):
        plain = [n for n, s in zip(names, shards, strict=True) if s is None]
        raise WorkbenchError(f"{plain} are not --shard parts but the others are; merge the "
                             "parts of one sharded build together, then merge whole builds")
    # a part may record its own slice's window and token counts: compare what names the data
    data = [data_of(m) for m in metas]
    if any(d != data[0] for d in data):
        raise _differs("data (source, sha256, window, stride)", data, names)
    counts = {int(s["count"]) for s in shards}
    if len(counts) > 1:
        raise _differs("shard counts", [f"{s['index']}/{s['count']}" for s in shards], names)
    n = counts.pop()
    seen: dict[int, str] = {}
    for name, s in zip(names, shards, strict=True):
        i = int(s["index"])
        if i in seen:
            raise WorkbenchError(f"shard {i}/{n} given twice ({seen[i]} and {name}); give each "
                                 "shard once")
        seen[i] = name
    missing = [i for i in range(n) if i not in seen]
    if missing:
        which = ", ".join(f"{i}/{n}" for i in missing)
        have = ", ".join(f"{i}/{n}" for i in sorted(seen))
        raise WorkbenchError(f"shard {which} missing (have {have}); build it with --shard "
                             f"{missing[0]}/{n} and merge all {n} parts, or the merge would "
                             "silently cover part of the data")
    return sorted(range(len(metas)), key=lambda j: int(shards[j]["index"]))


def _refuse_repeats(metas: list[dict], paths: list[str | Path]) -> None:
    """A build given twice (the same file, or two whole builds of the same data) would count
    every window twice: refused."""
    seen: dict = {}
    for path in paths:
        where = Path(path).resolve()
        if where in seen:
            raise WorkbenchError(f"{path} is given twice (as {seen[where]} too); merging a build "
                                 "with itself would count every window twice")
        seen[where] = path
    whole = {}
    for path, meta in zip(paths, metas, strict=True):
        data = meta.get("data")
        if meta.get("shard") is not None or not isinstance(data, dict) or not data.get("sha256"):
            continue
        key = (tuple(str(data.get(k)) for k in DATA_IDENTITY),
               str((meta.get("amap") or {}).get("window_offset", 0)))
        if key in whole:
            raise WorkbenchError(
                f"{whole[key]} and {path} are builds of the same data (sha256 {data['sha256']}, "
                "same windows): merging them would count every window twice; merge builds of "
                "different data, or the --shard parts of one build")
        whole[key] = path


def merged_meta(metas: list[dict], paths: list[str | Path]) -> dict:
    """The first part's metadata without its shard, naming what was merged."""
    out = {k: v for k, v in metas[0].items() if k != "shard"}
    out["merged_from"] = [
        {"path": str(p), "shard": m.get("shard"), "data_sha256": (m.get("data") or {}).get("sha256")}
        for p, m in zip(paths, metas, strict=True)]
    if any(m.get("shard") is None for m in metas):  # different corpora: keep each one's data
        out["data"] = [m.get("data") for m in metas]
    return out


def _n_windows(meta: dict) -> int:
    data = meta.get("data") or {}
    if isinstance(data, list):  # itself a merge of whole builds
        return sum(int(d.get("n_windows", 0)) for d in data)
    return int(data.get("n_windows", 0))


def _part_accumulators(part, meta: dict, offset: int | None) -> dict:
    """The accumulators of one part, rebuilt from its states (window ids shifted by ``offset``)."""
    from workbench.distributed import unflat_states
    from workbench.kernels.dimstats import DimStats
    from workbench.kernels.histogram import Histogram
    from workbench.kernels.moments import Moments
    from workbench.kernels.sample import BottomK

    st = part.states
    dims = unflat_states(st, "dims")
    sample = unflat_states(st, "sample")
    if offset is not None:
        sample["ids"] = sample["ids"].clone()
        sample["ids"][:, 0] += offset
    n_vars, d = dims["mean"].shape
    k = max(int(part.settings.get("sample", 0)), int(part.settings.get("scatter_points", 0)))
    return {
        "moments": Moments.from_state_dict(unflat_states(st, "moments")),
        "hist": Histogram.from_state_dict(unflat_states(st, "hist")),
        "dims": DimStats(n_vars, d).load_state_dict(dims),
        "sample": BottomK(k, sample["values"].shape[1], sample["ids"].shape[1]).load_state_dict(sample),
    }


def merge_distributions(paths: list[str | Path]):
    """One ``DistributionsResult`` from shard artifacts (files or folders), folded in order."""
    from workbench.analyses.distributions import DistributionsResult, result_from_states

    parts = [DistributionsResult.load(p) for p in paths]
    metas = [{**r.meta, "settings": r.settings} for r in parts]
    order = check_parts(metas, paths)
    merged = None
    whole_builds = all(m.get("shard") is None for m in metas)
    offset = 0  # whole builds each number their windows from 0: give the later ones distinct ids
    for j in order:
        try:
            accs = _part_accumulators(parts[j], metas[j], offset if whole_builds else None)
        except (KeyError, IndexError, ValueError, RuntimeError, WorkbenchError) as exc:
            from workbench.artifacts import damaged

            raise damaged(paths[j], f"its accumulator states are damaged or missing ({exc})",
                          "rebuild that part") from None
        if whole_builds:
            offset += _n_windows(metas[j])
        merged = accs if merged is None else {a: merged[a].merge(accs[a]) for a in merged}
    first = parts[order[0]]
    meta = merged_meta([metas[j] for j in order], [paths[j] for j in order])
    meta.pop("settings", None)
    token_labels = first.token_labels if all(p.token_labels == first.token_labels for p in parts) else None
    return result_from_states(merged, first.labels, first.settings, meta, token_labels)


def merge_lens(paths: list[str | Path]):
    """One ``LensResult`` from lens shard artifacts: statistics added, every window's ranks
    taken from the part that ran it (-1 elsewhere: an elementwise max), the first window's
    read-outs from the first part (every part holds them)."""
    import torch

    from workbench.analyses.lens import LensResult
    from workbench.kernels.lens_stats import LensStats

    parts = [LensResult.load(p) for p in paths]
    metas = [r.meta for r in parts]
    order = check_parts(metas, paths)
    if any(m.get("shard") is None for m in metas):
        raise WorkbenchError("lens merge folds the --shard parts of one build (each holds every "
                             "window's slot); whole builds of different data do not line up")
    first = parts[order[0]]
    stats = None
    for j in order:
        part = parts[j]
        if not torch.equal(part.window_tokens, first.window_tokens):
            raise WorkbenchError(f"{paths[j]} holds other windows than {paths[order[0]]}: "
                                 "merge the parts of one build")
        try:
            st = LensStats(len(part.layer_labels), int(part.meta["d_vocab"])).load_state_dict(
                {k[len("state.stats."):]: v for k, v in part.states.items()})
        except (KeyError, WorkbenchError) as exc:
            from workbench.artifacts import damaged

            raise damaged(paths[j], f"its lens statistics are damaged or missing ({exc})",
                          "rebuild that part") from None
        stats = st if stats is None else stats.merge(st)
        if j != order[0]:
            torch.maximum(first.window_ranks, part.window_ranks, out=first.window_ranks)
            if first.window_watch_ranks is not None:
                torch.maximum(first.window_watch_ranks, part.window_watch_ranks,
                              out=first.window_watch_ranks)
    first.dataset = stats.compute()
    first.states = {f"state.stats.{k}": v for k, v in stats.state_dict().items()}
    first.meta = merged_meta([metas[j] for j in order], [paths[j] for j in order])
    return first
