"""``workbench semantics --amap DIR``: WordNet lemma AMAPs, t-SNE per layer, permutation tests
→ semantics.safetensors, semantics.json, semantics.html (in --out, default the AMAP folder)."""

from __future__ import annotations

from pathlib import Path

from workbench.cli.common import check_out, int_list, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "semantics", help="WordNet semantics of an AMAP: t-SNE per layer, permutation tests",
        description="Pool the AMAP columns of each WordNet lemma's tokens into a lemma AMAP, draw "
        "t-SNE maps per layer coloured by topic domain, POS and lexname, and test per layer "
        "whether lemmas sharing a label have more similar AMAPs than chance.",
    )
    p.add_argument("--amap", type=Path, required=True, help="an AMAP folder (workbench amap build)")
    p.add_argument("--model", default=None,
                   help="the model the AMAP was built with (default: the name in its metadata)")
    p.add_argument("--device", default="cpu", help="device to load the model on (default cpu)")
    p.add_argument("--mode", default="input", choices=["input", "output"],
                   help="which AMAP mode's columns to pool")
    p.add_argument("--layers", type=int_list, default=None, help="e.g. 0,3 (default: all in the AMAP)")
    p.add_argument("--no-prefix-space", action="store_true",
                   help="tokenize lemmas without a leading space (default: ' lemma')")
    p.add_argument("--max-lemmas", type=positive_int, default=3000, help="lemmas per test (default 3000)")
    p.add_argument("--tsne-points", type=positive_int, default=1500, help="points per t-SNE (default 1500)")
    p.add_argument("--permutations", type=positive_int, default=1000, help="label shufflings (default 1000)")
    p.add_argument("--top", type=positive_int, default=5, help="labels coloured in the t-SNE (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of t-SNE and the shufflings")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: --amap)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args) -> int:
    from workbench.analyses.amap import load
    from workbench.analyses.semantics import analyze
    from workbench.models import load_model
    from workbench.paths import resolve_device
    from workbench.views.html import Page
    from workbench.views.semantics import section

    resolve_device(args.device)
    check_out(args.out or args.amap)
    amap = load(args.amap)  # a damaged AMAP, a missing mode or layer: refused before the model
    amap._mode(args.mode)
    for layer in args.layers or []:
        amap._row(layer)
    model = load_model(args.model or amap.meta["model"], device=args.device)
    layers = args.layers
    result = analyze(model, amap, mode=args.mode, prefix="" if args.no_prefix_space else " ",
                     layers=layers, max_lemmas=args.max_lemmas, tsne_points=args.tsne_points,
                     n_permutations=args.permutations, seed=args.seed, progress=not args.quiet)
    out = args.out or args.amap
    path = result.save(out)
    header = {"model": model.cfg.model_name, "amap": str(args.amap), "mode": args.mode,
              "lemmas kept": result.counts["kept"], "permutations": args.permutations}
    html = Page("WordNet semantics of an AMAP", header).add(section(result, args.top))
    html_path = html.write(out / "semantics.html")
    for t in result.tests:
        floor = 1 / (args.permutations + 1)  # (1 + hits) / (1 + n): the smallest p there is
        p = f"p<1/{args.permutations + 1}" if t["p_value"] <= floor * (1 + 1e-9) \
            else f"p={t['p_value']:.4f}"
        print(f"layer {t['layer']} {t['label']:8s} T={t['statistic']:+.4f} "
              f"{p} effect={t['effect_size']:+.2f} (n={t['n_items']})")
    print(f"wrote {path} and {html_path}")
    return 0
