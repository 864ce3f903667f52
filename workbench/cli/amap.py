"""``workbench amap build | merge | export | contexts``: neuron AMAPs over a dataset (SYSIF)."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import (
    add_input_args,
    add_pass_args,
    int_list,
    nonneg_int,
    positive_float,
    positive_int,
)


def register(sub) -> None:
    p = sub.add_parser("amap", help="neuron activation maps (AMAPs): build, merge, export, "
                       "contexts, pages",
                       description="Mean MLP activation of every neuron per token (input token, "
                       "or the model's argmax prediction), over a dataset in windows.")
    cmds = p.add_subparsers(dest="amap_command", metavar="ACTION", required=True)

    b = cmds.add_parser("build", help="build an AMAP over a text, file or dataset",
                        description="SYSIF defaults: --window 15 --stride 15, no BOS. Resumable: "
                        "checkpoints every --checkpoint-every batches; --resume continues.")
    add_input_args(b, window=15, bos=False)
    b.add_argument("--modes", default="input,output", help="input,output (default) or one")
    b.add_argument("--positions", action="store_true",
                   help="also key each window position k as pseudo-token [POS_k]")
    b.add_argument("--layers", type=int_list, default=None, help="e.g. 0,1 (default: all)")
    b.add_argument("--sum-device", default=None, help="device for the sums (e.g. cpu)")
    b.add_argument("--top-k", type=positive_int, default=8, help="max-activating windows kept per unit")
    b.add_argument("--count-bos", action="store_true",
                   help="count the BOS position as a key too (with --bos; left out by default)")
    b.add_argument("--context-units", type=nonneg_int, default=2,
                   help="units per layer whose contexts are written to amap_contexts.json")
    add_pass_args(b, "amap")
    b.add_argument("--memory-limit-gib", type=positive_float, default=None,
                   help="refuse to build when the sums need more than this (default: 80%% free)")
    b.add_argument("--no-html", action="store_true", help="skip amap.html")
    b.set_defaults(func=build_main)

    m = cmds.add_parser("merge", help="add AMAPs of disjoint data (e.g. shards) into one")
    m.add_argument("inputs", nargs="+", type=Path, help="AMAP folders")
    m.add_argument("--out", type=Path, required=True, help="output folder")
    m.set_defaults(func=merge_main)

    e = cmds.add_parser("export", help="SYSIF's DataFrame layout as parquet")
    e.add_argument("amap", type=Path, help="an AMAP folder")
    e.add_argument("--parquet", type=Path, nargs="?", const=True, default=True,
                   help="output file (default DIR/amap.parquet)")
    e.add_argument("--modes", default=None, help="modes to export (default: all built)")
    e.add_argument("--layers", type=int_list, default=None, help="layers (default: all)")
    e.add_argument("--tokens", nargs="+", default=None, metavar="TOKEN",
                   help="token texts (exactly as decoded) or ids; default: all tokens")
    e.add_argument("--top", type=positive_int, default=None, help="only the N most frequent input tokens")
    e.set_defaults(func=export_main)

    c = cmds.add_parser("contexts", help="max-activating windows of chosen units, token by token",
                        description="Reloads the model and data named in the AMAP's metadata, "
                        "re-runs each unit's max-activating windows and prints the unit's "
                        "activation at every token (the peak marked). A --text or --file build "
                        "needs the same --text/--file flag again.")
    _add_unit_args(c)
    c.add_argument("--top", type=positive_int, default=None, help="windows per unit (default: all kept)")
    c.add_argument("--json", type=Path, default=None, metavar="OUT",
                   help="also write the contexts as JSON (amap_contexts.json's layout)")
    _add_rebuild_args(c)
    c.set_defaults(func=contexts_main)

    g = cmds.add_parser("pages", help="a page per unit: histogram, contexts, top tokens, output "
                        "effect",
                        description="For each --unit, one HTML page in --out: the unit's "
                        "activation histogram over the AMAP's data (one pass of the model), its "
                        "max-activating contexts shaded token by token, its top tokens by mean "
                        "activation with counts, and its direct effect on the logits "
                        "(W_out[neuron] · W_U); index.html links them.")
    _add_unit_args(g)
    g.add_argument("--out", type=Path, default=None, help="output folder (default: AMAP/pages)")
    g.add_argument("--mode", default="input", choices=["input", "output"],
                   help="AMAP mode of the top-tokens table")
    g.add_argument("--min-count", type=positive_int, default=1,
                   help="top tokens: only tokens seen at least this often")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_rebuild_args(g)
    g.set_defaults(func=pages_main)


def _add_unit_args(c) -> None:
    c.add_argument("amap", type=Path, help="an AMAP folder")
    c.add_argument("--unit", action="append", required=True, metavar="L_N",
                   help="unit LAYER_NEURON, e.g. 1_17 (repeat, or 1_17,0_3)")


def _add_rebuild_args(c) -> None:
    """Flags naming the model and data an AMAP was built on (read back from its metadata)."""
    c.add_argument("--model", default=None, help="default: the model named in the metadata")
    c.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    c.add_argument("--dtype", default=None, help="the build's --dtype, if it gave one")
    c.add_argument("--batch-size", type=positive_int, default=32, help="windows per forward pass")
    src = c.add_mutually_exclusive_group()
    src.add_argument("--text", help="the build's --text (not stored in the AMAP)")
    src.add_argument("--file", type=Path, help="the build's --file (only its name is stored)")
    src.add_argument("--dataset", help="the build's --dataset (default: from the metadata)")
    c.add_argument("--field", default=None, help="the build's --field")
    c.add_argument("--limit", type=positive_int, default=None,
                   help="the build's --limit (default: the documents the build read)")


def build_main(args) -> int:
    from workbench.analyses.amap import build
    from workbench.cli.common import load_inputs, pass_options
    from workbench.distributed import DistContext
    from workbench.paths import resolve_device
    from workbench.sharding import parse_shard
    from workbench.views.amap import section
    from workbench.views.html import Page

    parse_shard(args.shard) if args.shard else None  # before the model loads
    modes = [x.strip() for x in args.modes.split(",") if x.strip()]
    if not modes or any(m not in ("input", "output") for m in modes):
        from workbench.errors import WorkbenchError

        raise WorkbenchError(f"--modes {args.modes!r}: give input, output or input,output")
    if args.sum_device:
        from workbench.paths import check_device

        check_device(args.sum_device, "--sum-device")  # before the model loads
    # Under torchrun (WORLD_SIZE > 1) this joins the process group: gloo on CPU, nccl on CUDA.
    ctx = DistContext.from_env(device=resolve_device(args.device))
    try:
        with ctx.guard("amap build"):
            model, windows = load_inputs(args)
            limit = None if args.memory_limit_gib is None else int(args.memory_limit_gib * 2**30)
            options = dict(batch_size=args.batch_size, progress=not args.quiet and ctx.is_main,
                           modes=modes,
                           positions=args.positions, layers=args.layers,
                           sum_device=args.sum_device,
                           top_k=args.top_k, context_units=args.context_units,
                           count_bos=args.count_bos, memory_limit=limit,
                           **pass_options(args, ctx))
            options.pop("checkpoint_dir")  # build checkpoints into its --out
            result = build(model, windows, args.out, **options)
    finally:
        ctx.close()
    if not ctx.is_main:  # rank 0 writes the whole build
        return 0
    t = result.throughput
    print(f"{t['tokens']:,} tokens in {t['seconds']:.1f}s ({t['tokens_per_s']:,.0f} tokens/s); "
          f"invariants: {'all hold' if all(result.invariants.values()) else result.invariants}")
    if not args.no_html:
        header = {"model": model.cfg.model_name, "input": windows.source,
                  "windows": len(windows), "modes": ",".join(result.modes)}
        Page("Neuron AMAPs", header).add(section(result)).write(args.out / "amap.html")
    print(f"wrote {args.out / 'amap.safetensors'}")
    return 0


def merge_main(args) -> int:
    from workbench.analyses.amap_export import merge_dirs
    from workbench.cli.common import check_out

    check_out(args.out)
    result = merge_dirs(args.inputs)
    path = result.save(args.out)
    kept = "kept" if result.top is not None else "dropped (different data)"
    print(f"merged {len(args.inputs)} AMAPs ({result.n_windows} windows; max-activating windows "
          f"{kept}) into {path}")
    return 0


def export_main(args) -> int:
    from workbench.analyses.amap import load
    from workbench.analyses.amap_export import write_parquet
    from workbench.cli.common import check_out

    out = args.amap / "amap.parquet" if args.parquet is True else args.parquet
    check_out(out.parent)
    result = load(args.amap)
    tokens = None
    if args.tokens is not None:
        tokens = [int(t) if t.isdigit() else t for t in args.tokens]
    modes = None if args.modes is None else [x.strip() for x in args.modes.split(",")]
    path = write_parquet(result, out, modes=modes, layers=args.layers, tokens=tokens, top=args.top)
    print(f"wrote {path}")
    return 0


def contexts_main(args) -> int:
    from workbench.analyses.amap import load
    from workbench.analyses.amap_contexts import check_units, parse_unit, read_contexts
    from workbench.artifacts import write_json
    from workbench.cli.common import preflight
    from workbench.errors import WorkbenchError

    preflight(argparse.Namespace(device=args.device, dtype=args.dtype, file=args.file,
                                 field=args.field, out=None if args.json is None else args.json.parent))
    if args.json is not None and args.json.is_dir():
        raise WorkbenchError(f"--json {args.json} is a folder; give a file path such as "
                             f"{args.json / 'contexts.json'}")
    result = load(args.amap)
    units = check_units(result, [parse_unit(u) for text in args.unit  # before the model loads
                                 for u in text.split(",") if u.strip()])
    if result.top is None:
        raise WorkbenchError(f"{args.amap} holds no max-activating windows (a merge of AMAPs of "
                             "different data drops them); read contexts from a single build")
    model, windows = _model_and_windows(args, result)
    contexts = read_contexts(model, windows, result, units=units, batch_size=args.batch_size)
    if args.top is not None:
        contexts = [{**c, "windows": c["windows"][: args.top]} for c in contexts]
    for c in contexts:
        print(format_unit(c))
    if args.json is not None:
        print(f"wrote {write_json(args.json, contexts)}")
    return 0


def _model_and_windows(args, result):
    """The model and windows an AMAP was built on, checked against its weights and data hash."""
    from workbench.data import rebuild_windows
    from workbench.errors import WorkbenchError
    from workbench.identity import weights_hash
    from workbench.models import load_model

    name = args.model or result.meta.get("model")
    processed = result.meta.get("weight_processing") not in (None, "none", "unknown")
    model = load_model(name, device=args.device, dtype=args.dtype or result.meta.get("dtype"),
                       processing=processed)
    if weights_hash(model) != result.meta.get("weights_sha256_16"):
        raise WorkbenchError(
            f"the model {name!r} loaded now has other weights than the AMAP's (weights sha256 "
            f"{weights_hash(model)} vs {result.meta.get('weights_sha256_16')}); pass the build's "
            "--model and --dtype")
    windows = rebuild_windows(model, result.meta.get("data", {}), text=args.text, file=args.file,
                              dataset=args.dataset, field=args.field, limit=args.limit)
    return model, windows


def pages_main(args) -> int:
    from workbench.analyses.amap import load
    from workbench.analyses.amap_contexts import check_units, parse_unit
    from workbench.analyses.neuron_pages import unit_pages, write_pages
    from workbench.cli.common import preflight

    out = args.out or args.amap / "pages"
    preflight(argparse.Namespace(device=args.device, dtype=args.dtype, file=args.file,
                                 field=args.field, out=out, quiet=args.quiet))
    result = load(args.amap)
    result._mode(args.mode)
    units = check_units(result, [parse_unit(u) for text in args.unit
                                  for u in text.split(",") if u.strip()])  # before the model
    model, windows = _model_and_windows(args, result)
    pages = unit_pages(model, windows, result, units, mode=args.mode, min_count=args.min_count,
                       batch_size=args.batch_size, progress=not args.quiet)
    header = {"model": result.meta.get("model"), "AMAP": str(args.amap),
              "data": (result.meta.get("data") or {}).get("source", "merged")}
    paths = write_pages(pages, out, header)
    print(f"wrote {len(pages)} neuron page(s) and {paths[-1]}")
    return 0


def format_unit(context: dict) -> str:
    """One unit's windows, a token per line with the unit's activation; the peak is marked."""
    import json

    lines = [f"unit {context['unit']} (layer {context['layer']}, neuron {context['neuron']}): "
             f"{len(context['windows'])} max-activating windows"]
    for rank, w in enumerate(context["windows"], 1):
        lines.append(f"  #{rank} window {w['window']} (document {w['doc']}, from token "
                     f"{w['start']}): max {w['max']:.4f} at position {w['peak']}")
        width = max(len(json.dumps(t, ensure_ascii=False)) for t in w["tokens"])
        for pos, (tok, act) in enumerate(zip(w["tokens"], w["acts"], strict=True)):
            mark = "  <- peak" if pos == w["peak"] else ""
            lines.append(f"    {pos:>4} {json.dumps(tok, ensure_ascii=False):<{width}} "
                         f"{act:+.4f}{mark}")
    return "\n".join(lines)
