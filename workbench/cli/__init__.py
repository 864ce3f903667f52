"""The ``workbench`` command. Each subcommand lives in its own module with ``register(sub)``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from workbench.errors import WorkbenchError

# Modules under workbench.cli that define register(subparsers); absent ones are not yet built.
COMMANDS = ["run", "models", "distributions", "lens", "attention", "factors", "amap", "semantics"]


def build_parser() -> argparse.ArgumentParser:
    from workbench import __version__

    parser = argparse.ArgumentParser(
        prog="workbench",
        description="TransformerLens research workbench: hidden-state distributions, logit lens, "
        "neuron AMAPs, NMF factors and attention views, offline by default.",
    )
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if importlib.util.find_spec(f"workbench.cli.{name}") is not None:
            importlib.import_module(f"workbench.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
