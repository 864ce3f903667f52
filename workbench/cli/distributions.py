"""``workbench distributions``: hidden-state covariance / R², histograms, scatter and pairplot.

Also ``--shard i/n`` (one part of a job array), ``workbench distributions merge A B ... --out C``
(fold the parts) and, under ``torchrun --nproc-per-node N -m workbench distributions ...``, one
build split over N processes (see docs/distributed.md)."""

from __future__ import annotations

import argparse

from workbench.cli.common import (
    add_input_args,
    add_pass_args,
    load_inputs,
    positive_float,
    positive_int,
)


def _layer(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def register(sub) -> None:
    p = sub.add_parser(
        "distributions",
        help="hidden-state distributions: layer covariance / R², histograms, scatter, pairplot",
        description="One streaming pass over the input: covariance and R² between the L+1 hidden "
        "states (each layer's (token, dim) activations as one variable), per-layer histograms, "
        "per-dimension stats and a deterministic sample for scatter plots and the pairplot. "
        "Writes distributions.safetensors, distributions.json and distributions.html to --out.",
    )
    p.add_argument("action", nargs="?", choices=["merge"],
                   help="merge: fold shard artifacts (PARTS) built with --shard i/n into --out")
    p.add_argument("parts", nargs="*", metavar="PARTS",
                   help="with merge: distributions.safetensors files or folders holding one")
    add_input_args(p, source_required=False)
    add_pass_args(p, "distributions")
    p.add_argument("--keep-first", dest="skip_first", action="store_false",
                   help="keep position 0 of each window (excluded by default, as in the seed)")
    p.add_argument("--bins", type=positive_int, default=300, help="histogram bins (default 300)")
    p.add_argument("--range", dest="value_range", type=float, nargs=2, default=None,
                   metavar=("LO", "HI"),
                   help="histogram range (default: sized to the model; the seed's -15 15 where "
                   "its residuals fit, symlog edges over +-1e6 for gemma-3-270m). "
                   "--range -15 15 gives the seed's fixed edges")
    p.add_argument("--symlog", type=positive_float, default=None, metavar="T",
                   help="symmetric-log bins, linear within ±T (for heavy tails)")
    p.add_argument("--layer", type=_layer, default=-1,
                   help="layer for the scatter plots: index or label (emb, h.0, ...; default last)")
    p.add_argument("--pair-layers", type=_layer, nargs="+", default=None,
                   help="layers of the pairplot (default the first four)")
    p.add_argument("--sample", type=positive_int, default=1000, help="pairplot points (default 1000)")
    p.add_argument("--scatter-points", type=positive_int, default=10000,
                   help="scatter plot points (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from workbench import checkpoint
    from workbench.analyses.distributions import analyze
    from workbench.cli.common import pass_options
    from workbench.distributed import DistContext
    from workbench.paths import resolve_device
    from workbench.sharding import parse_shard

    if args.action == "merge" or args.parts:
        return _merge(args)
    shard = parse_shard(args.shard) if args.shard else None
    ctx = DistContext.from_env(device=resolve_device(args.device))
    try:
        with ctx.guard("distributions"):
            model, windows = load_inputs(args)
            result = analyze(
                model, windows, batch_size=args.batch_size,
                progress=not args.quiet and ctx.is_main,
                skip_first=args.skip_first, bins=args.bins, value_range=None if args.value_range is None else tuple(args.value_range),
                symlog=args.symlog, sample=args.sample, scatter_points=args.scatter_points,
                layer=args.layer, pair_layers=args.pair_layers, seed=args.seed,
                **pass_options(args, ctx),
            )
        if ctx.is_main:  # every rank holds the reduced result; one writes it
            data = windows.metadata()
            _write(result, args.out, {
                "model": model.cfg.model_name, "source": data["source"],
                "windows": data["n_windows"], "tokens": data["n_tokens"],
                **({"shard": args.shard} if shard else {}),
                **({"processes": ctx.world} if ctx.is_distributed else {}),
            })
        checkpoint.finish(args.out, "distributions", ctx)  # once the artifact is written
    finally:
        ctx.close()
    return 0


def _write(result, out, header: dict) -> None:
    from workbench.views.distributions import section
    from workbench.views.html import Page

    artifact = result.save(out)
    page = Page("Hidden-state distributions", header={
        **header, "samples per layer": int(result.n_samples[0])}).add(section(result))
    html_path = page.write(out / "distributions.html")
    print(f"wrote {artifact}\nwrote {artifact.with_suffix('.json')}\nwrote {html_path}")


def _merge(args: argparse.Namespace) -> int:
    from workbench.analyses.shards import merge_distributions
    from workbench.cli.common import check_merge_args

    check_merge_args(args, "distributions")
    result = merge_distributions(args.parts)
    _write(result, args.out, {"model": result.meta.get("model"), "merged parts": len(args.parts)})
    return 0
