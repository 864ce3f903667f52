"""``workbench factors``: NMF factors of MLP activations on one window → factors.safetensors,
factors.json, factors.html in ``--out``."""

from __future__ import annotations

from workbench.cli.common import add_input_args, nonneg_int, positive_int
from workbench.errors import WorkbenchError


def parse_layers(spec: str | None) -> list[int] | None:
    """``"0-3"``, ``"1,3"``, ``"2"`` → layer list; None → all."""
    if spec is None:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise WorkbenchError(f"--layers {spec!r}: use a range like 0-3 or a list like 1,3") from None
    return out


def register(sub) -> None:
    p = sub.add_parser(
        "factors", help="NMF factors of MLP activations: highlighted tokens, neuron loadings",
        description="Factorize one window's MLP activations (negatives clipped at 0, as ecco) "
        "with NMF: factor strengths over tokens and the neurons, by layer, behind each factor.",
    )
    add_input_args(p)
    p.add_argument("--components", type=positive_int, default=8, help="number of factors (default 8)")
    p.add_argument("--signed", choices=["auto", "clip", "split"], default="auto",
                   help="negative activations: clip at 0 (ecco), split into +/- halves "
                   "(both factorised), or auto: split for gated MLPs (default auto)")
    p.add_argument("--layers", default=None, help="layer range, e.g. 0-3 or 1,3 (default all)")
    p.add_argument("--window-index", type=nonneg_int, default=0, help="which window (default 0)")
    p.add_argument("--max-iter", type=positive_int, default=400, help="NMF iterations at most (default 400)")
    p.add_argument("--seed", type=int, default=0, help="seed for --init random (default 0)")
    p.add_argument("--init", choices=["nndsvda", "nndsvd", "random"], default="nndsvda",
                   help="NMF start (default nndsvda: deterministic)")
    p.set_defaults(func=main)


def main(args) -> int:
    from workbench.analyses.factors import analyze
    from workbench.cli.common import load_inputs
    from workbench.views.factors import section
    from workbench.views.html import Page

    layers = parse_layers(args.layers)  # a bad spec fails before the model loads
    model, windows = load_inputs(args)
    result = analyze(model, windows, n_components=args.components, signed=args.signed,
                     layers=layers, window_index=args.window_index,
                     max_iter=args.max_iter, init=args.init, seed=args.seed)
    artifact = result.save(args.out)
    header = {"model": model.cfg.model_name, "input": windows.source,
              "window": f"{result.window_index} of {len(windows)}",
              "components": result.n_components, "relative error": f"{result.relative_error:.4f}",
              "signed": result.signed,
              "signed relative error": f"{result.signed_relative_error:.4f}"}
    html = Page("NMF factors", header).add(section(result)).write(args.out / "factors.html")
    print(f"wrote {artifact}, {artifact.with_suffix('.json')} and {html}")
    return 0
