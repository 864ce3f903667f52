"""``workbench run``: the main job. Every analysis on the input → artifacts, report.html and
summary.json in ``--out`` (see ``workbench.report``)."""

from __future__ import annotations

from workbench.cli.common import add_input_args


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="every analysis on the input: artifacts + report.html + summary.json",
        description="Run every analysis (distributions, logit lens, attention, NMF factors, "
        "input AMAP) on a text or file with one model and write their artifacts, one "
        "self-contained report.html (opens offline) and summary.json into --out.",
    )
    add_input_args(p)
    p.add_argument("--only", default=None,
                   help="comma-separated subset, e.g. lens,attention (default: all)")
    p.set_defaults(func=main)


def main(args) -> int:
    from workbench.cli.common import load_inputs
    from workbench.errors import WorkbenchError
    from workbench.report import REGISTRY, run_all

    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        known = [e.name for e in REGISTRY]
        unknown = [x for x in only if x not in known]
        if unknown:
            raise WorkbenchError(f"--only {unknown}: unknown analyses; choose from {known}")
    model, windows = load_inputs(args)
    settings = {"window": args.window, "stride": args.stride, "dtype": args.dtype,
                "requested_device": args.device}
    summary = run_all(model, windows, args.out, batch_size=args.batch_size,
                      progress=not args.quiet, only=only, settings=settings)
    for name, a in summary["analyses"].items():
        status = f"{a['seconds']['total']:.1f} s → {a['artifact']}" if a["status"] == "ok" \
            else a.get("reason", a["status"])
        print(f"  {name:<14} {status}")
    size = summary["report"]["bytes"] / 2**20
    print(f"wrote {args.out / 'report.html'} ({size:.1f} MiB) and {args.out / 'summary.json'} "
          f"in {summary['total_seconds']:.1f} s")
    return 0
