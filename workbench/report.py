"""The main job: every analysis on one input, one report.

1. ``summary = run_all(model, windows, out_dir)`` runs each analysis in ``REGISTRY`` whose modules
   (``workbench.analyses.<name>`` and ``workbench.views.<name>``) exist. The corpus analyses
   (distributions, lens, AMAP) are reducers of ONE pass of the capture engine over the windows
   (``capture.run``); attention and NMF factors then look at the first window.
2. Each writes its artifact (``distributions.safetensors``, ``lens.safetensors``, …; DESIGN.md's
   contract) into ``out_dir``, and its view adds one section to ``report.html``: one self-contained
   page (plotly.js and the widget JS inlined once) with a header of model, data, settings, timings.
3. ``summary.json`` holds the same header plus, per analysis, its status, timings, artifact and
   key numbers. An analysis whose module is not there is listed as ``"not built"``, never faked;
   one that raises is a bug and the error propagates.

Attention and NMF factors look at the first window only (their views are per token); the others
aggregate over every window. The run's AMAP keys the run's own windows (input tokens, BOS left
out); ``workbench amap build`` keeps SYSIF's 15-token windows.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench import artifacts
from workbench.data import Windows

# Attention views hold layers·heads·P² floats twice (widget + model view): cap them near this.
ATTENTION_VALUES = 300_000


@dataclass(frozen=True)
class Entry:
    name: str
    options: Callable[[object, Windows], dict]
    key_numbers: Callable[[object], dict]
    # A reducer of the one corpus pass (its module has a ``*Reducer``), else one window's analysis.
    corpus: bool = False
    # Why this analysis cannot run on this model here (None: it can); the report says so.
    skip: Callable[[object, dict], str | None] | None = None
    # Extra files beside the artifact (model, windows, result, out_dir) → keywords of its section.
    extras: Callable[[object, Windows, object, Path, bool], dict] | None = None


def _first_len(windows: Windows) -> int:
    return int(windows.mask[0].sum())


def _attention_options(model, windows: Windows) -> dict:
    heads = int(model.cfg.n_layers) * int(model.cfg.n_heads)
    cap = max(16, min(128, int(math.sqrt(ATTENTION_VALUES / heads))))
    return {"window_index": 0, "max_positions": cap}


def _factors_options(model, windows: Windows) -> dict:
    return {"window_index": 0, "max_positions": 256, "n_components": min(8, _first_len(windows))}


def _amap_pages(model, windows: Windows, result, out_dir: Path, progress: bool) -> dict:
    """Neuron pages of the units the AMAP section shows, in ``pages/`` beside the report."""
    from workbench.analyses.neuron_pages import unit_pages, write_pages
    from workbench.views.amap import chosen_units

    pages = unit_pages(model, windows, result, chosen_units(result), progress=progress)
    write_pages(pages, out_dir / "pages", {"model": model.cfg.model_name})
    return {"pages_dir": "pages"}


def _from_summary(result) -> dict:
    return result.summary()


def _distributions_numbers(result) -> dict:
    t = result.tensors()
    r2 = t["r2"]
    return {"layers": list(result.labels), "n_samples": t["n_samples"].tolist(),
            "std_by_layer": [round(float(x), 5) for x in t.get("std", t["covariance"].diagonal().sqrt())],
            "r2_first_last": float(r2[0, -1])}


def _lens_numbers(result) -> dict:
    t = result.tensors()
    out = {"layers": list(result.layer_labels), "positions_first_window": int(t["tokens"].shape[0])}
    ranks = t["ranks"]
    if ranks.numel():
        out["median_rank_first_window_by_layer"] = [float(r.float().median()) for r in ranks]
    top1 = t.get("dataset.top1_accuracy")
    if top1 is not None:
        out["top1_accuracy_all_windows_by_layer"] = [round(float(x), 4) for x in top1]
    return out


def _amap_numbers(result) -> dict:
    out = {"layers": list(result.layers)}
    if "input" in result.modes:
        tokens = result.keys("input") < result.amap.d_vocab
        out["distinct_input_tokens"] = int(tokens.sum())
        out["positions_counted"] = int(result.counts("input")[tokens].sum())
    dead = result.dead_units()
    out["dead_units_by_layer"] = [int(x) for x in dead.sum(-1)]
    return out


REGISTRY: list[Entry] = [
    Entry("distributions", lambda m, w: {}, _distributions_numbers, corpus=True),
    Entry("lens", lambda m, w: {}, _lens_numbers, corpus=True),
    # Input-token AMAP of this text only (the corpus-scale build is `workbench amap build`).
    Entry("amap", lambda m, w: {"modes": ("input",)}, _amap_numbers, corpus=True,
          extras=_amap_pages),
    Entry("attention", _attention_options, _from_summary),
    Entry("factors", _factors_options, _from_summary),
]
# Each corpus analysis's reducer: "module:class".
REDUCERS = {"distributions": "workbench.analyses.distributions:DistributionsReducer",
            "lens": "workbench.analyses.lens_reducer:LensReducer",
            "amap": "workbench.analyses.amap_reducer:AmapReducer"}
ORDER = ("distributions", "lens", "attention", "factors", "amap")  # sections of the report


def _skipped_section(name: str, reason: str):
    import html

    from workbench.views.html import Section

    titles = {"amap": "Neuron AMAPs"}
    return Section(titles.get(name, name.capitalize()), [], note=html.escape(reason))


def missing_modules(name: str) -> list[str]:
    mods = [f"workbench.analyses.{name}", f"workbench.views.{name}"]
    return [m for m in mods if importlib.util.find_spec(m) is None]


def _seconds(x: float) -> float:
    return round(x, 3)


def run_all(model, windows: Windows, out_dir: str | Path, *, batch_size: int = 8,
            progress: bool = True, only: list[str] | None = None, settings: dict | None = None,
            ) -> dict:
    """Run every built analysis, write artifacts, ``report.html`` and ``summary.json``.

    The corpus analyses share one pass of the model over ``windows`` (``capture.run``); its time
    is reported once (``summary["corpus_pass"]``) and each of them adds only its own read-out.
    """
    from tqdm.auto import tqdm

    from workbench import capture
    from workbench.views.html import Page

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    entries = [e for e in REGISTRY if only is None or e.name in only]
    analyses: dict[str, dict] = {}
    sections: dict[str, object] = {}
    ready = []  # (entry, analysis module, view module, options)
    for entry in entries:
        missing = missing_modules(entry.name)
        if missing:
            analyses[entry.name] = {"status": "not built", "missing_modules": missing}
            continue
        options = entry.options(model, windows)
        reason = entry.skip(model, options) if entry.skip is not None else None
        if reason is not None:
            analyses[entry.name] = {"status": "skipped", "reason": reason}
            sections[entry.name] = _skipped_section(entry.name, reason)
            continue
        ready.append((entry, importlib.import_module(f"workbench.analyses.{entry.name}"),
                      importlib.import_module(f"workbench.views.{entry.name}"), options))
    # One pass for every corpus analysis: the union of their hooks, one forward per batch.
    reducers = {}
    t0 = time.perf_counter()
    for entry, _, _, options in ready:
        if entry.corpus:
            where, cls = REDUCERS[entry.name].split(":")
            make = getattr(importlib.import_module(where), cls)
            reducers[entry.name] = make(model, windows, batch_size=batch_size, **options)
    corpus_pass = None
    if reducers:
        stats = capture.run(model, windows, list(reducers.values()), batch_size=batch_size,
                            progress=progress, desc="corpus pass (" + ", ".join(reducers) + ")")
        corpus_pass = {**stats.as_dict(), "reducers": list(reducers),
                       "wall_seconds": _seconds(time.perf_counter() - t0)}
    bar = tqdm(ready, desc="workbench run", unit="analysis", disable=not progress,
               dynamic_ncols=True)
    for entry, module, view, options in bar:
        bar.set_postfix_str(entry.name)
        t0 = time.perf_counter()
        if entry.corpus:
            result = reducers[entry.name].finish()
        else:
            result = module.analyze(model, windows, batch_size=batch_size, progress=progress,
                                    **options)
        t1 = time.perf_counter()
        artifact = result.save(out_dir)
        t2 = time.perf_counter()
        extra = entry.extras(model, windows, result, out_dir, progress) if entry.extras else {}
        sections[entry.name] = view.section(result, **extra)
        t3 = time.perf_counter()
        phase = "read_out" if entry.corpus else "analyze"
        analyses[entry.name] = {
            "status": "ok", "artifact": Path(artifact).name,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            "seconds": {phase: _seconds(t1 - t0), "save": _seconds(t2 - t1),
                        "view": _seconds(t3 - t2), "total": _seconds(t3 - t0)},
            "key_numbers": entry.key_numbers(result),
        }
        if entry.corpus:
            analyses[entry.name]["pass"] = "shared corpus pass (summary.corpus_pass)"
    bar.close()
    sections = [sections[n] for n in ORDER if n in sections]
    meta = artifacts.run_metadata(model, windows, batch_size=batch_size, **(settings or {}))
    data = meta["data"]
    timings = ", ".join(f"{n} {a['seconds']['total']:.1f} s" for n, a in analyses.items()
                        if a["status"] == "ok")
    skipped = [n for n, a in analyses.items() if a["status"] == "not built"]
    device = next(model.parameters()).device
    header = {
        "model": f"{meta['model']} (weights sha256 {meta['weights_sha256_16']}, "
                 f"{meta['n_layers']} layers, d_model {meta['d_model']})",
        "data": f"{data['source']} (sha256 {data['sha256'][:12]}…): {data['n_tokens']} tokens in "
                f"{data['n_windows']} window(s) of {data['window']}, stride {data['stride']}",
        "settings": f"device {device}, dtype {next(model.parameters()).dtype}, "
                    f"batch size {batch_size}, workbench {meta['workbench_version']}, "
                    f"torch {meta['torch_version']}",
        "timings": f"{timings} (analysis + artifact + view)",
    }
    if skipped:
        header["not built"] = ", ".join(skipped)
    page = Page(f"Workbench report: {meta['model']}", header)
    for s in sections:
        page.add(s)
    report = page.write(out_dir / "report.html")
    total = time.perf_counter() - start
    summary = {
        "workbench_version": meta["workbench_version"], "torch_version": meta["torch_version"],
        "model": {k: meta[k] for k in ("model", "weights_sha256_16", "tokenizer",
                                       "tokenizer_vocab", "n_layers", "d_model", "d_vocab")},
        "data": data, "settings": {"device": str(device), "batch_size": batch_size,
                                   **(settings or {})},
        "corpus_pass": corpus_pass,
        "analyses": analyses,
        "report": {"file": report.name, "bytes": report.stat().st_size},
        "total_seconds": _seconds(total),
    }
    artifacts.write_json(out_dir / "summary.json", summary)
    return summary
