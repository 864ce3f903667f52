"""``workbench lens``: logit lens over a text, file or dataset → lens.safetensors, lens.json,
lens.html in ``--out``. Also ``--shard i/n`` + ``workbench lens merge A B ... --out C``, torchrun
and ``--resume``, as every corpus analysis."""

from __future__ import annotations

from workbench.cli.common import (
    add_input_args,
    add_pass_args,
    nonneg_int,
    positive_float,
    positive_int,
)


def register(sub) -> None:
    p = sub.add_parser(
        "lens", help="logit lens: per-layer predictions, next-token ranks, watched-token ranks",
        description="Project every residual layer through the unembedding (final_ln: with the "
        "final LayerNorm recomputed on that layer; raw: without, as ecco) and write top-k "
        "predictions, ranks of the actual next tokens and of watched tokens at every position.",
    )
    p.add_argument("action", nargs="?", choices=["merge"],
                   help="merge: fold lens artifacts (PARTS) built with --shard i/n into --out")
    p.add_argument("parts", nargs="*", metavar="PARTS",
                   help="with merge: lens.safetensors files or folders holding one")
    add_input_args(p, source_required=False)
    add_pass_args(p, "lens")
    p.add_argument("--mode", choices=["final_ln", "raw"], default="final_ln",
                   help="final_ln (default): ln_final then unembed; raw: unembed only")
    p.add_argument("--k", type=positive_int, default=10, help="top-k predictions kept per layer (default 10)")
    p.add_argument("--watch", nargs="+", default=None, metavar="TOKEN",
                   help='token strings to rank at every layer, each exactly one token, e.g. " is" " are"')
    p.add_argument("--watch-ids", nargs="+", type=int, default=None, metavar="ID",
                   help="token ids to rank at every layer, e.g. 318 389")
    p.add_argument("--generate", type=nonneg_int, default=0, metavar="N",
                   help="greedily generate N tokens after the first window and rank them (as ecco)")
    p.add_argument("--position", type=int, default=None,
                   help="position for the top-k and watch figures (default: the last)")
    p.add_argument("--budget-mib", type=positive_float, default=256,
                   help="memory for the transient logits chunk, MiB (default 256)")
    p.set_defaults(func=main)


def main(args) -> int:
    from workbench import checkpoint
    from workbench.analyses.lens import analyze
    from workbench.cli.common import load_inputs, pass_options
    from workbench.distributed import DistContext
    from workbench.errors import WorkbenchError
    from workbench.paths import resolve_device
    from workbench.sharding import parse_shard

    if args.action == "merge" or args.parts:
        return _merge(args)
    if args.text is None and args.file is None and args.dataset is None:
        raise WorkbenchError("give an input: --text, --file or --dataset (or `workbench lens "
                             "merge PARTS --out DIR` to fold shard artifacts)")
    watch = [*(args.watch or []), *(args.watch_ids or [])] or None
    parse_shard(args.shard) if args.shard else None  # before the model loads
    ctx = DistContext.from_env(device=resolve_device(args.device))
    try:
        with ctx.guard("lens"):
            model, windows = load_inputs(args)
            if args.position is not None:  # checked before the lens runs, not after
                n = int(windows.mask[0].sum()) + args.generate
                if not -n <= args.position < n:
                    raise WorkbenchError(
                        f"--position {args.position} is outside the text's {n} positions "
                        f"(window 0); use 0..{n - 1} (or negative from the end)")
            result = analyze(model, windows, batch_size=args.batch_size,
                             progress=not args.quiet and ctx.is_main, mode=args.mode, k=args.k,
                             watch=watch, generate=args.generate,
                             budget_bytes=int(args.budget_mib * 2**20), **pass_options(args, ctx))
        if ctx.is_main:
            header = {"model": model.cfg.model_name, "input": windows.source, "mode": args.mode,
                      "windows": len(windows),
                      "positions": int(result.dataset["n_positions"]),
                      **({"shard": args.shard} if args.shard else {}),
                      **({"processes": ctx.world} if ctx.is_distributed else {})}
            _write(result, args, header)
        checkpoint.finish(args.out, "lens", ctx)  # once the artifact is written
    finally:
        ctx.close()
    return 0


def _write(result, args, header: dict) -> None:
    from workbench.views.html import Page
    from workbench.views.lens import section

    artifact = result.save(args.out)
    page = Page("Logit lens", header).add(section(result, args.position))
    html = page.write(args.out / "lens.html")
    print(f"wrote {artifact}, {artifact.with_suffix('.json')} and {html}")
    if result.n_windows > 1:
        n = result.n_windows
        shown = "window 0 (extended by generation)" if result.generated_from else "window 0"
        print(f"per-position top-k shown for {shown} of {n}; ranks of every position of all {n} "
              f"windows are in {artifact.name}:window_ranks")


def _merge(args) -> int:
    from workbench.analyses.shards import merge_lens
    from workbench.cli.common import check_merge_args

    check_merge_args(args, "lens")
    result = merge_lens(args.parts)
    _write(result, args, {"model": result.meta.get("model"), "merged parts": len(args.parts)})
    return 0
