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


# One example per command, shown at the end of its --help.
EXAMPLES = {
    "workbench run": "workbench run --text \"The cat sat on the mat.\" --out out/run",
    "workbench models": "workbench models --all",
    "workbench distributions": "workbench distributions --file notes.txt --out out/dist",
    "workbench lens": "workbench lens --text \"The keys to the cabinet\" --watch \" is\" \" are\" "
                      "--out out/lens",
    "workbench attention": "workbench attention --text \"The cat sat on the mat.\" --out out/attn",
    "workbench factors": "workbench factors --text \"The cat sat on the mat.\" --components 6 "
                         "--out out/nmf",
    "workbench amap build": "workbench amap build --dataset wordnet-glosses --model tiny-gloss-lm "
                            "--out out/amap",
    "workbench amap merge": "workbench amap merge out/amap-0 out/amap-1 --out out/amap",
    "workbench amap export": "workbench amap export out/amap --layers 0 --tokens \" the\" \" cat\"",
    "workbench amap contexts": "workbench amap contexts out/amap --unit 1_17 --top 3",
    "workbench amap pages": "workbench amap pages out/amap --unit 1_17 --unit 0_3",
    "workbench semantics": "workbench semantics --amap out/amap --permutations 200",
}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless it already says it); the epilog (the
    example) keeps its line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        quiet = (default is None or default is False or default is argparse.SUPPRESS
                 or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
                 or not action.option_strings)
        if "default" in text.lower() or quiet:
            return text
        shown = default if not isinstance(default, (list, tuple)) else " ".join(map(str, default))
        return f"{text} (default {shown})"

    def _fill_text(self, text, width, indent):
        return "\n".join(indent + line for line in text.splitlines())


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what was wrong, a "did you mean" where a flag is close to a
    real one, and where to read more. Subcommand parsers are of this class too; each gets its
    example (``EXAMPLES``) as epilog."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        example = EXAMPLES.get(self.prog)
        if example and self.epilog is None:
            self.epilog = f"example:\n  {example}"

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
