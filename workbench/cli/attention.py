"""``workbench attention``: head, model and neuron views of one window → attention.safetensors,
attention.json, attention.html in ``--out``."""

from __future__ import annotations

from workbench.cli.common import add_input_args, nonneg_int, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "attention", help="attention views: head view, model view (layers × heads), neuron view",
        description="Attention patterns of every layer and head on one window (bertviz's head, "
        "model and neuron views, offline). Encoders take a sentence pair with --text-b.",
    )
    add_input_args(p)
    p.add_argument("--text-b", default=None,
                   help="second sentence of a pair, for encoders such as minilm ([SEP] B [SEP])")
    p.add_argument("--window-index", type=nonneg_int, default=0, help="which window to show (default 0)")
    p.add_argument("--layer", type=int, default=-1, help="neuron-view layer (default: the last)")
    p.add_argument("--query", type=int, default=-1,
                   help="neuron-view query position (default: the last)")
    p.add_argument("--max-positions", type=positive_int, default=None,
                   help="keep only the first N tokens of the window")
    p.set_defaults(func=main)


def main(args) -> int:
    from workbench.analyses.attention import analyze
    from workbench.cli.common import load_inputs
    from workbench.views.attention import section
    from workbench.views.html import Page

    model, windows = load_inputs(args)
    result = analyze(model, windows, window_index=args.window_index, text_b=args.text_b,
                     layer=args.layer, query=args.query, max_positions=args.max_positions)
    artifact = result.save(args.out)
    header = {"model": model.cfg.model_name, "input": windows.source,
              "window": f"{result.window_index} of {len(windows)}",
              "positions": int(result.tokens.shape[0])}
    html = Page("Attention", header).add(section(result)).write(args.out / "attention.html")
    print(f"wrote {artifact}, {artifact.with_suffix('.json')} and {html}")
    return 0
