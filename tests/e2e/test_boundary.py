"""The boundary (issue 17): every damaged file and every bad flag is one line, exit 2, and nothing
in ``--out`` changes. Cases are generated: damage kinds × every command that reads artifacts, and
bad flags × every command. In-process (``workbench.cli.main``) so ~200 cases stay fast; a raw
exception escaping ``main`` fails the case, as a traceback would."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from workbench.cli import main

TEXT = "the cat sat on the mat and the dog sat on the log by the door. " * 4
TINY = ("--model", "random-tiny", "--quiet")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _all_flags() -> set[str]:
    import argparse

    from workbench.cli import build_parser

    flags, todo = set(), [build_parser()]
    while todo:
        parser = todo.pop()
        for a in parser._actions:
            flags |= set(a.option_strings)
            if isinstance(a, argparse._SubParsersAction):
                todo += list(a.choices.values())
    return flags


FLAGS = _all_flags()


def assert_one_line(rc, err, *, names: str | None = None):
    """Exit 2, one line, no traceback, and every flag the advice names exists (the user's own
    wrong flag, quoted back after "unrecognized arguments", aside)."""
    import re

    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    if names is not None:
        assert names in err, err
    advice = re.sub(r"unrecognized arguments: [^;(]*", "", err)
    advice = re.sub(r"\(for --?[\w-]+\)", "", advice)
    named = set(re.findall(r"(?<![\w/-])--[a-z][\w-]*", advice))
    assert named <= FLAGS, f"the message names flags that do not exist: {named - FLAGS}: {err}"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small AMAP (with contexts), a checkpoint of a killed build, two distributions parts."""
    from _pytest.capture import CaptureFixture  # noqa: F401 (capsys is function-scoped)

    d = tmp_path_factory.mktemp("boundary")
    (d / "a.txt").write_text(TEXT)
    common = ("amap", "build", *TINY, "--file", d / "a.txt", "--positions", "--batch-size", "1",
              "--no-html", "--window", "8")
    assert main([str(a) for a in (*common, "--out", d / "amap")]) == 0
    (d / "b.txt").write_text("a second text with other words, in windows of its own. " * 3)
    assert main([str(a) for a in (*common[:-2], "--window", "8", "--file", d / "b.txt",
                                  "--out", d / "amap_b")]) == 0
    assert main([str(a) for a in (*common, "--out", d / "ckpt", "--checkpoint-every", "1",
                                  "--stop-after", "2")]) == 2
    for i, text in enumerate(["one text about cats and mats", "another about dogs and logs"]):
        assert main(["distributions", *TINY, "--text", text, "--out", str(d / f"dist{i}"),
                     "--sample", "20", "--scatter-points", "20"]) == 0
    return d


# --- damage kinds: each takes the good file and writes a damaged one in its place -------------

def _rewrite_meta(path: Path, edit) -> None:
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(str(path))
    meta["workbench"] = edit(meta.get("workbench", "{}"))
    save_file(tensors, str(path), metadata=meta)


def _edit_json(mutate):
    def edit(raw: str) -> str:
        obj = json.loads(raw)
        mutate(obj)
        return json.dumps(obj)
    return edit


def truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path):
    path.write_bytes(b"")


def random_bytes(path):
    path.write_bytes(os.urandom(4096))


def a_pickle(path):
    path.write_bytes(pickle.dumps({"sum.input": [1, 2, 3]}, protocol=4))


def torch_save(path):
    torch.save({"sum.input": torch.zeros(3)}, path)


def link_to_dev_zero(path):
    path.unlink()
    path.symlink_to("/dev/zero")


def header_lies(path):  # a header length far past the end of the file
    data = path.read_bytes()
    path.write_bytes((len(data) * 10).to_bytes(8, "little") + data[8:])


def meta_not_json(path):
    _rewrite_meta(path, lambda raw: raw[: len(raw) // 2])


FILE_DAMAGE = [truncated, empty, random_bytes, a_pickle, torch_save, link_to_dev_zero,
               header_lies, meta_not_json]

AMAP_EDITS = {
    "n_positions changed": lambda m: m["amap"].update(n_positions=m["amap"]["n_positions"] + 3),
    "key_strs shortened": lambda m: m["amap"].update(key_strs=m["amap"]["key_strs"][:-5]),
    "n_windows changed": lambda m: m["amap"].update(n_windows=m["amap"]["n_windows"] + 1),
    "n_windows a string": lambda m: m["amap"].update(n_windows="many"),
    "amap section a list": lambda m: m.update(amap=[1, 2]),
    "n_layers dropped": lambda m: m.pop("n_layers"),
    "key_strs not text": lambda m: m["amap"].update(key_strs=[1] * len(m["amap"]["key_strs"])),
}
DIST_EDITS = {
    "labels shortened": lambda m: m.update(labels=m["labels"][:-1]),
    "labels not text": lambda m: m.update(labels=[0] * len(m["labels"])),
    "settings a string": lambda m: m.update(settings="fast"),
}
CKPT_EDITS = {
    "next_window past the end": lambda m: m.update(next_window=10_000),
    "next_window moved back": lambda m: m.update(next_window=1),
    "batches a string": lambda m: m.update(batches="2"),
    "batch_size dropped": lambda m: m.pop("batch_size"),
}


def _commands(d: Path, target: str, work: Path) -> list[tuple]:
    """Every command that reads the damaged artifact ``target`` (amap / dist / ckpt)."""
    if target == "amap":
        return [
            ("amap", "export", work / "amap", "--parquet", work / "out" / "x.parquet"),
            ("amap", "merge", work / "amap", d / "amap_b", "--out", work / "out"),
            ("amap", "contexts", work / "amap", "--unit", "0_1", *TINY[:2], "--file", d / "a.txt"),
            ("semantics", "--amap", work / "amap", "--model", "random-tiny", "--out", work / "out"),
        ]
    if target == "dist":
        return [("distributions", "merge", work / "dist0", d / "dist1", "--out", work / "out")]
    return [("amap", "build", *TINY, "--file", d / "a.txt", "--positions", "--batch-size", "1",
             "--no-html", "--window", "8", "--checkpoint-every", "1", "--resume",
             "--out", work / "ckpt")]


FILES = {"amap": ("amap", "amap.safetensors"), "dist": ("dist0", "distributions.safetensors"),
         "ckpt": ("ckpt", "amap.ckpt.safetensors")}


def _case(built, tmp_path, target):
    folder, name = FILES[target]
    work = tmp_path / "work"
    shutil.copytree(built / FILES[target][0], work / folder)
    (work / "out").mkdir()
    (work / "out" / "keep.txt").write_text("results of an earlier run")
    return work, work / folder / name


CASES = ([(t, f.__name__) for t in FILES for f in FILE_DAMAGE]
         + [("amap", e) for e in AMAP_EDITS] + [("dist", e) for e in DIST_EDITS]
         + [("ckpt", e) for e in CKPT_EDITS])


@pytest.mark.parametrize("target, damage", CASES)
def test_damaged_artifacts_are_one_line_for_every_command_that_reads_them(
        built, tmp_path, capsys, monkeypatch, target, damage):
    edits = AMAP_EDITS | DIST_EDITS | CKPT_EDITS
    work, path = _case(built, tmp_path, target)
    if damage in edits:
        _rewrite_meta(path, _edit_json(edits[damage]))
    else:
        globals()[damage](path)
    monkeypatch.setattr("workbench.analyses.semantics.analyze", _never("semantics"))
    for cmd in _commands(built, target, work):
        before = {"out": snapshot(work / "out"), "artifact": snapshot(path.parent)}
        rc, _, err = run_cli(capsys, *cmd)
        assert_one_line(rc, err, names=path.name)
        assert snapshot(work / "out") == before["out"], f"{cmd[:2]} changed --out"
        assert snapshot(path.parent) == before["artifact"], f"{cmd[:2]} changed the artifact"


@pytest.mark.parametrize("damage", ["not json", "a dict", "windows without tokens"])
def test_damaged_contexts_file_is_one_line(built, tmp_path, capsys, damage):
    work, _ = _case(built, tmp_path, "amap")
    ctx = work / "amap" / "amap_contexts.json"
    assert ctx.exists()
    good = json.loads(ctx.read_text())
    if damage == "not json":
        ctx.write_text(ctx.read_text()[:100])
    elif damage == "a dict":
        ctx.write_text(json.dumps({"unit": "0_1"}))
    else:
        good[0]["windows"][0].pop("tokens")
        ctx.write_text(json.dumps(good))
    rc, _, err = run_cli(capsys, "amap", "export", work / "amap", "--parquet", work / "o.parquet")
    assert_one_line(rc, err, names="amap_contexts.json")
    assert not (work / "o.parquet").exists()


def test_a_build_merged_with_itself_is_refused(built, tmp_path, capsys):
    for parts in [(built / "amap", built / "amap"), (built / "amap", tmp_path / "copy")]:
        shutil.copytree(built / "amap", tmp_path / "copy", dirs_exist_ok=True)
        rc, _, err = run_cli(capsys, "amap", "merge", *parts, "--out", tmp_path / "m")
        assert_one_line(rc, err)
        assert "twice" in err and not (tmp_path / "m").exists()
    rc, _, err = run_cli(capsys, "distributions", "merge", built / "dist0", built / "dist0",
                         "--out", tmp_path / "d")
    assert_one_line(rc, err)
    assert "twice" in err


def test_the_good_artifacts_still_load(built, tmp_path, capsys):
    """The control: the same commands on undamaged copies succeed (so the cases above fail for
    the damage, not for the command line)."""
    for target in FILES:
        work, _ = _case(built, tmp_path / target, target)
        for cmd in _commands(built, target, work)[:3]:
            if cmd[0] == "semantics":
                continue
            rc, _, err = run_cli(capsys, *cmd)
            assert rc == 0, (cmd, err)


# --- bad flags × every command: refused before the model loads --------------------------------

def _never(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} ran although the command line was wrong")
    return fail


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "good.txt").write_text(TEXT)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "null.jsonl").write_text('{"text": "fine"}\n{"text": null}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("results of an earlier run")
    return tmp_path


INPUT_COMMANDS = [("run",), ("distributions",), ("lens",), ("attention",), ("factors",),
                  ("amap", "build")]
COMMON_BAD = [
    ("--window", "0"), ("--window", "ten"), ("--batch-size", "-1"), ("--limit", "0"),
    ("--stride", "0"), ("--device", "toaster"), ("--device", "cuda:7"), ("--dtype", "float8"),
    ("--out", "{a_file}"), ("--out", "{a_file}/sub"), ("--file", "{missing.txt}"),
    ("--file", "{latin1.txt}"), ("--file", "{null.jsonl}"), ("--file", "{broken.jsonl}"),
    ("--file", "{tmp}"), ("--topk", "5"), ("--n_components", "3"),
]
SPECIFIC_BAD = {
    ("lens",): [("--k", "0"), ("--budget-mib", "0"), ("--generate", "-1"), ("--mode", "rwa")],
    ("factors",): [("--components", "0"), ("--layers", "x"), ("--window-index", "-1"),
                   ("--max-iter", "0"), ("--signed", "both")],
    ("attention",): [("--max-positions", "0"), ("--window-index", "-2")],
    ("distributions",): [("--bins", "0"), ("--sample", "0"), ("--symlog", "-1"),
                         ("--shard", "3/2"), ("--shard", "one")],
    ("amap", "build"): [("--modes", "inputs"), ("--layers", "-1"), ("--top-k", "0"),
                        ("--shard", "2/2"), ("--sum-device", "toaster"),
                        ("--memory-limit-gib", "0"), ("--context-units", "-1"),
                        ("--sum-dtype", "float8")],
    ("run",): [("--only", "lens,nope")],
}
FLAG_CASES = [(c, f, v) for c in INPUT_COMMANDS for f, v in COMMON_BAD + SPECIFIC_BAD.get(c, [])]


def _fill(value: str, root: Path) -> str:
    """``{name}`` → a path under ``root`` (``{tmp}``: root itself)."""
    import re

    return re.sub(r"\{([^}]*)\}", lambda m: str(root if m[1] == "tmp" else root / m[1]), value)


@pytest.mark.parametrize("command, flag, value", FLAG_CASES,
                         ids=[f"{' '.join(c)} {f} {v}" for c, f, v in FLAG_CASES])
def test_bad_flags_are_one_line_before_the_model_loads(inputs, capsys, monkeypatch, command,
                                                       flag, value):
    monkeypatch.setattr("workbench.models.load_model", _never("the model loaded"))
    args = {"--model": "random-tiny", "--file": str(inputs / "good.txt"),
            "--out": str(inputs / "out")}
    args[flag] = _fill(value, inputs)
    flat = [x for k, v in args.items() for x in (k, v)]
    before = snapshot(inputs / "out")
    rc, out, err = run_cli(capsys, *command, *flat, "--quiet")
    assert_one_line(rc, err)
    assert snapshot(inputs / "out") == before
    assert not out.strip()


ARTIFACT_BAD = [
    ("amap", "export", "{amap}", "--top", "-5"),
    ("amap", "export", "{amap}", "--layers", "a,b"),
    ("amap", "export", "{amap}", "--parquet", "{a_file}/x.parquet"),
    ("amap", "contexts", "{amap}", "--unit", "zero"),
    ("amap", "contexts", "{amap}", "--unit", "9_0"),
    ("amap", "contexts", "{amap}", "--unit", "0_1", "--device", "toaster"),
    ("amap", "contexts", "{amap}", "--unit", "0_1", "--file", "{missing.txt}"),
    ("amap", "contexts", "{amap}", "--unit", "0_1", "--json", "{tmp}"),
    ("amap", "merge", "{amap}", "--out", "{a_file}"),
    ("amap", "merge", "{missing}", "{amap}", "--out", "{out}"),
    ("semantics", "--amap", "{amap}", "--permutations", "0"),
    ("semantics", "--amap", "{amap}", "--layers", "a"),
    ("semantics", "--amap", "{amap}", "--layers", "7"),
    ("semantics", "--amap", "{amap}", "--mode", "outputs"),
    ("semantics", "--amap", "{amap}", "--device", "toaster"),
    ("semantics", "--amap", "{amap}", "--out", "{a_file}"),
    ("semantics", "--amap", "{missing}"),
    ("distributions", "merge", "{dist}", "--out", "{out}"),
    ("distributions", "merge", "{dist}", "{missing}", "--out", "{out}"),
]


@pytest.mark.parametrize("case", ARTIFACT_BAD, ids=[" ".join(c) for c in ARTIFACT_BAD])
def test_bad_flags_of_artifact_commands_are_one_line(built, inputs, capsys, monkeypatch, case):
    monkeypatch.setattr("workbench.models.load_model", _never("the model loaded"))
    where = {"amap": built / "amap", "dist": built / "dist0", "out": inputs / "out"}
    args = [str(where[a.strip("{}")]) if a.strip("{}") in where else _fill(a, inputs)
            for a in case]
    before = snapshot(inputs / "out"), snapshot(built / "amap")
    rc, _, err = run_cli(capsys, *args)
    assert_one_line(rc, err)
    assert (snapshot(inputs / "out"), snapshot(built / "amap")) == before


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.integers(max_value=0), st.text(min_size=1, max_size=6).filter(
    lambda s: not s.strip().lstrip("+").isdigit() and not s.startswith("-"))),
    flag=st.sampled_from(["--window", "--batch-size", "--k", "--limit"]))
def test_any_bad_count_is_one_line(inputs, capsys, monkeypatch, value, flag):
    monkeypatch.setattr("workbench.models.load_model", _never("the model loaded"))
    rc, _, err = run_cli(capsys, "lens", "--model", "random-tiny", "--text", "hi", flag,
                         str(value), "--out", str(inputs / "out"))
    assert_one_line(rc, err)


def test_quiet_means_quiet(tmp_path, capsys):
    """--quiet: only the lines saying what was written, nothing on stderr (minilm's loader prints
    "Loading weights" bars and TransformerLens "Moving model to device")."""
    rc, out, err = run_cli(capsys, "attention", "--model", "minilm", "--text", "a cat sat",
                           "--out", tmp_path, "--quiet")
    assert rc == 0, err
    assert err == ""
    assert out.strip().startswith("wrote ") and len(out.strip().splitlines()) == 1


def test_every_option_says_its_default_and_every_command_has_an_example():
    """--help: each option with a default names it; each command ends with an example; no
    command lists both --bos and --no-bos."""
    import argparse

    from workbench.cli import EXAMPLES, build_parser

    def walk(parser):
        yield parser
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    yield from walk(sp)

    for parser in walk(build_parser()):
        text = parser.format_help()
        flags = {o for a in parser._actions for o in a.option_strings}
        assert not {"--bos", "--no-bos"} <= flags, parser.prog
        if parser.prog in EXAMPLES:
            assert "example:\n  workbench" in text, parser.prog
        for a in parser._actions:
            quiet = a.default in (None, False, argparse.SUPPRESS) or not a.option_strings \
                or isinstance(a, argparse._HelpAction)
            if not quiet:
                assert a.help and "default" in parser._get_formatter()._get_help_string(a), \
                    (parser.prog, a.option_strings)
    commands = [p.prog for p in walk(build_parser()) if not any(
        isinstance(a, argparse._SubParsersAction) for a in p._actions)]
    assert set(commands) <= set(EXAMPLES), commands


def test_run_on_text_with_nothing_to_count_names_real_flags(tmp_path, capsys):
    """One byte token and no BOS: distributions has no position left after the first; the
    advice must name flags that exist (it once advised `skip_first=False` to CLI users only)."""
    rc, _, err = run_cli(capsys, "run", *TINY, "--text", "x", "--no-bos", "--out", tmp_path / "o")
    assert_one_line(rc, err)
    assert "--keep-first" in err


def test_run_all_without_source_on_a_short_text(random_tiny, tmp_path):
    """The documented `run_all(model, windows, out)`: a text shorter than the context works
    without `source=` (the AMAP's 15-token windows are cut from the run's own ids)."""
    from workbench.data import load_windows
    from workbench.report import run_all

    summary = run_all(random_tiny, load_windows(random_tiny, text="a short text"), tmp_path,
                      progress=False)
    assert all(a["status"] == "ok" for a in summary["analyses"].values())


def test_the_input_file_is_read_once(inputs, capsys, monkeypatch):
    """The file is read (and checked) before the model loads, and those documents are the ones
    analysed: not read a second time."""
    import workbench.data
    import workbench.inputs

    calls = []
    real = workbench.inputs.read_file_documents

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(workbench.inputs, "read_file_documents", counting)
    monkeypatch.setattr(workbench.data, "read_file_documents", counting)
    rc, _, err = run_cli(capsys, "lens", *TINY, "--file", inputs / "good.txt", "--out",
                         inputs / "out")
    assert rc == 0, err
    assert len(calls) == 1
