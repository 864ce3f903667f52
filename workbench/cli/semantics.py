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
    p.add_argument("--control", choices=["none", "random-init"], default="none",
                   help="random-init: also build the AMAP of a randomly initialised model of the "
                   "same shape and tokenizer over the same data and run the same tests on it "
                   "(surface form alone); the verdicts need the trained model to beat it")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="with --control: the AMAP build's --text (not stored in it)")
    src.add_argument("--file", type=Path, help="with --control: the build's --file")
    src.add_argument("--dataset", help="with --control: the build's --dataset (default: from "
                     "the AMAP's metadata)")
    p.add_argument("--field", default=None, help="with --control: the build's --field")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="with --control: the build's --limit (default: the documents it read)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="windows per forward pass of the control's AMAP build")
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
    windows = None
    if args.control != "none":  # the data first: a --file build without --file fails fast
        from workbench.data import rebuild_windows

        windows = rebuild_windows(model, amap.meta.get("data", {}), text=args.text,
                                  file=args.file, dataset=args.dataset, field=args.field,
                                  limit=args.limit)
    options = dict(mode=args.mode, prefix="" if args.no_prefix_space else " ",
                   layers=args.layers, max_lemmas=args.max_lemmas, tsne_points=args.tsne_points,
                   n_permutations=args.permutations, seed=args.seed)
    result = analyze(model, amap, progress=not args.quiet, **options)
    if windows is not None:
        from workbench.analyses.semantics import compare, control

        _, ctrl = control(model, amap, windows, batch_size=args.batch_size,
                          progress=not args.quiet, **options)
        result.control = compare(result, ctrl)
    out = args.out or args.amap
    path = result.save(out)
    header = {"model": model.cfg.model_name, "amap": str(args.amap), "mode": args.mode,
              "lemmas kept": result.counts["kept"], "permutations": args.permutations}
    html = Page("WordNet semantics of an AMAP", header).add(section(result, args.top))
    html_path = html.write(out / "semantics.html")
    from workbench.analyses.semantics import p_text

    controls = {(r["layer"], r["label"]): r for r in result.control}
    for t in result.tests:
        line = (f"layer {t['layer']} {t['label']:8s} T={t['statistic']:+.4f} "
                f"{p_text(t['p_value'], args.permutations)} effect={t['effect_size']:+.2f} "
                f"(n={t['n_items']})")
        c = controls.get((t["layer"], t["label"]))
        if c is not None:
            line += (f"  control T={c['T control']:+.4f} "
                     f"{p_text(c['p control'], args.permutations)}  supported: {c['supported']}")
        print(line)
    print(f"wrote {path} and {html_path}")
    return 0
