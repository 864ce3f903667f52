"""Flags shared by the analysis commands, and turning them into (model, windows)."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.models import DEFAULT_MODEL


def _int_at_least(low: int, words: str):
    """An argparse type: a whole number >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be {words}")
        return value

    return parse


positive_int = _int_at_least(1, "1 or more")
nonneg_int = _int_at_least(0, "0 or more")


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return value


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated whole numbers >= 0, e.g. ``0,3``."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers separated by commas, "
                                         "e.g. 0,3") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give layers 0 or more, e.g. 0,3")
    return out


def add_pass_args(p: argparse.ArgumentParser, what: str) -> None:
    """Flags of every corpus pass (``capture.run``): checkpoints, resume, shards."""
    p.add_argument("--checkpoint-every", type=positive_int, default=50,
                   help="batches between checkpoints in --out (also every 5 minutes)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint a killed run left in --out")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help=f"analyse only the I-th of N slices of the windows (a job-array task, "
                   f"numbered from 0); fold the N parts with `workbench {what} merge`")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: a kill


def check_merge_args(args, command: str) -> None:
    """``workbench COMMAND merge PARTS --out DIR``: parts only, no input or shard flags."""
    from workbench.errors import WorkbenchError

    if args.action != "merge":
        raise WorkbenchError(f"unexpected arguments {args.parts}; to fold shard artifacts run "
                             f"`workbench {command} merge A B ... --out DIR`")
    if args.text is not None or args.file is not None or args.dataset is not None or args.shard:
        raise WorkbenchError("merge folds existing artifacts: give their paths, not "
                             "--text/--file/--dataset/--shard")


def pass_options(args, ctx) -> dict:
    """``capture.run``'s options from ``add_pass_args``'s flags (checkpoints in --out)."""
    from workbench.sharding import parse_shard

    return {"checkpoint_dir": args.out, "checkpoint_every": args.checkpoint_every,
            "resume": args.resume, "max_batches": args.stop_after,
            "shard": parse_shard(args.shard) if args.shard else None,
            "ctx": ctx if ctx.is_distributed else None}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default float32)")
    p.add_argument("--weight-processing", action="store_true",
                   help="hub models only: apply TransformerLens' weight processing (fold LN, "
                   "centre weights); off by default, so hidden states are HF's")


def add_input_args(p: argparse.ArgumentParser, window: int | None = None,
                   source_required: bool = True, bos: bool | None = None) -> None:
    """--model/--device/--dtype, one input source, windowing, --out, --batch-size.

    ``source_required=False`` for commands that also take artifacts instead (``... merge``).
    """
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=source_required)
    src.add_argument("--text", help="the text to analyse")
    src.add_argument("--file", type=Path, help="a UTF-8 text file, or .jsonl (see --field)")
    src.add_argument("--dataset", help="wordnet-glosses (offline) or an HF datasets name "
                     "(name:config when it has configurations)")
    p.add_argument("--field", default="text", help="JSONL / dataset field (default text)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="at most this many dataset documents (default: all)")
    p.add_argument("--window", type=positive_int, default=window, help="tokens per window (default: the model's context, at most 1024 with the specials)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="tokens between windows (default: --window, no overlap)")
    if bos is False:  # SYSIF's windows: BOS is off unless asked
        p.add_argument("--bos", dest="bos", action="store_true", default=False,
                       help="prepend BOS to each window (default: no BOS)")
    else:
        p.add_argument("--no-bos", dest="bos", action="store_false", default=None,
                       help="do not prepend BOS ([CLS]) to each window (default: BOS on)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or loader messages")


def check_out(out: Path) -> None:
    """``--out`` must be (or become) a writable folder: found now, not after the analysis ran."""
    import os

    from workbench.errors import WorkbenchError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"--out {out} is a file, not a folder; give a folder path")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise WorkbenchError(f"--out {out} lies under {probe}, which is a file; give a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WorkbenchError(f"--out {out}: {probe} is not writable; choose a folder you can write")


def preflight(args) -> list[str] | None:
    """Everything about the flags that can be checked without the model, checked now: ``--out``,
    the devices, the dtype and the input file (read and validated), so a mistake costs no model
    load. ``--quiet`` also silences the loaders. Returns the ``--file``'s documents (or None)."""
    import os

    from workbench.models import _dtype
    from workbench.paths import resolve_device

    if getattr(args, "out", None) is not None:
        check_out(args.out)
    if getattr(args, "device", None) is not None:
        resolve_device(args.device)
    if getattr(args, "dtype", None) is not None:
        _dtype(args.dtype)
    documents = None
    if getattr(args, "file", None) is not None:
        from workbench.inputs import read_file_documents

        documents = read_file_documents(args.file, getattr(args, "field", None) or "text")
    if getattr(args, "quiet", False):
        os.environ["WORKBENCH_QUIET"] = "1"  # the loaders' first-load messages too
    return documents


def load_inputs(args):
    """The model and windows named by ``add_input_args`` flags (``--out`` checked first)."""
    from workbench.data import load_windows
    from workbench.models import load_model

    documents = preflight(args)
    model = load_model(args.model, device=args.device, dtype=args.dtype,
                       processing=getattr(args, "weight_processing", False))
    windows = load_windows(
        model, text=args.text, file=args.file, dataset=args.dataset, field=args.field,
        window=args.window, stride=args.stride, bos=args.bos, limit=args.limit,
        file_documents=documents,
    )
    if args.text is not None and args.text.endswith(" ") and not args.text.endswith("  "):
        import warnings

        warnings.warn("the text ends with a space, which tokenizes to a lone space piece the "
                      "model rarely saw in training; drop the trailing space", stacklevel=2)
    return model, windows
