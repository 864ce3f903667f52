"""The ``workbench`` command. Each subcommand lives in its own module with ``register(sub)``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from workbench.errors import WorkbenchError

# Modules under workbench.cli that define register(subparsers); absent ones are not yet built.
COMMANDS = ["run", "models", "distributions", "lens", "attention", "factors", "amap", "semantics"]


# Names other tools (ecco, bertviz, SYSIF notebooks) use for the workbench's flags.
ALIASES = {"--topk": "--k / --top-k", "--top_k": "--top-k", "--n_components": "--components",
           "--n-components": "--components", "--layer_idx": "--layer", "--n_layers": "--layers",
           "--model_name": "--model", "--batch_size": "--batch-size", "--output": "--out",
           "--output-dir": "--out", "--outdir": "--out", "--input": "--file or --text"}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what was wrong, a "did you mean" where a flag is close to a
    real one, and where to read more. Subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}{self.suggest(message)} "
                  f"(see `{self.prog} --help`)\n")

    def suggest(self, message: str) -> str:
        import difflib
        import re

        hints = []
        if message.startswith("unrecognized arguments"):
            known = [o for o in self._option_string_actions if o.startswith("--")]
            for word in message.split(":", 1)[1].split():
                flag = word.split("=", 1)[0]
                if not flag.startswith("-") or flag in known or re.fullmatch(r"-[\d.]+", flag):
                    continue
                alias = next((a for a in ALIASES.get(flag, "").split(" / ")
                              if a and a.split()[0] in known), None)
                close = difflib.get_close_matches(flag.replace("_", "-"), known, n=1, cutoff=0.7)
                if alias or close:
                    hints.append(f"{alias or close[0]} (for {flag})")
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.6)
            if close:
                hints.append(f"{close[0]!r}")
        return f"; did you mean {', '.join(hints)}?" if hints else ""


def _chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The deepest subcommand parser ``args`` went through (whose flags an extra was meant for)."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or getattr(args, sub.dest, None) not in sub.choices:
            return parser
        parser = sub.choices[getattr(args, sub.dest)]


def build_parser() -> argparse.ArgumentParser:
    from workbench import __version__

    parser = Parser(
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
    args, extras = parser.parse_known_args(argv)
    if extras:
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
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
