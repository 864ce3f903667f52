"""Artifacts: safetensors + JSON round trip, atomic writes, ordinary file modes."""

import json
import os
import stat

import pytest
import torch

from workbench import artifacts


def test_save_round_trips_and_files_get_the_umask_mode(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "b": torch.linspace(0, 1, 5, dtype=torch.float64)}
    old = os.umask(0o022)
    try:
        path = artifacts.save(tmp_path / "x.safetensors", tensors, {"model": "m", "n": 3})
    finally:
        os.umask(old)
    loaded, meta = artifacts.load(path)
    assert set(loaded) == {"a", "b"}
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    assert meta == {"model": "m", "n": 3}
    assert json.loads(path.with_suffix(".json").read_text()) == meta
    # safetensors itself creates 0600 files; an artifact must be readable like any output
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize("low_bytes", [b"\x80", b"PK"])
def test_a_header_length_that_looks_like_a_pickle_still_loads(tmp_path, low_bytes):
    """The first 8 bytes are the header's length: 0x80.. (a pickle's first byte) or "PK" (a zip's)
    can be a real length, and such a file must load, not be called a pickle."""
    from safetensors.torch import save_file

    from workbench.artifacts import load

    path = tmp_path / "a.safetensors"
    for pad in range(0, 40000):
        save_file({"x": torch.arange(3)}, str(path), metadata={"workbench": json.dumps({"p": "a" * pad})})
        if path.read_bytes()[: len(low_bytes)] == low_bytes:
            break
    else:
        pytest.fail("no padding gave the wanted header length")
    tensors, meta = load(path)
    assert tensors["x"].tolist() == [0, 1, 2] and len(meta["p"]) == pad


class _Killed(BaseException):
    """A kill: not an Exception, so no clean-up handler runs."""


def _visible(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_a_set_commit_killed_at_any_step_leaves_the_old_set_or_the_new(tmp_path, monkeypatch):
    """``commit_set`` killed at each file-system step in turn (every write, rename, move and
    removal), then read back (``recover``, as every load does first): the folder holds exactly
    the old build's files or exactly the new build's, never a mix."""
    from pathlib import Path

    from workbench import artifacts

    old = {"amap.safetensors": b"old tensors", "amap.json": b"old meta", "ctx.json": b"old ctx",
           "notes.txt": b"the user's own file"}
    new = {"amap.safetensors": b"new tensors", "amap.json": b"new meta",
           "build.json": b"new timings"}
    want_new = {**{k: v for k, v in old.items() if k == "notes.txt"}, **new}
    steps = ("replace", "rename", "unlink", "rmdir", "touch", "write_bytes")
    outcomes = set()
    for kill_at in range(1, 200):
        folder = tmp_path / f"k{kill_at}"
        folder.mkdir()
        for name, data in old.items():
            (folder / name).write_bytes(data)
        calls = {"n": 0}
        originals = {s: getattr(Path, s) for s in steps}

        def counted(step, calls=calls, kill_at=kill_at, originals=originals):
            def wrapper(self, *a, **k):
                calls["n"] += 1
                if calls["n"] == kill_at:
                    raise _Killed(step)
                return originals[step](self, *a, **k)
            return wrapper

        for s in steps:
            monkeypatch.setattr(Path, s, counted(s))
        writers = {n: (lambda p, d=d: p.write_bytes(d)) for n, d in new.items()}
        killed = False
        try:
            artifacts.commit_set(folder, "amap", writers, remove=("ctx.json", "build.json"))
        except _Killed:
            killed = True
        finally:
            for s in steps:
                monkeypatch.setattr(Path, s, originals[s])
        artifacts.recover(folder, "amap")
        got = _visible(folder)
        assert got in (old, want_new), (kill_at, sorted(got))
        assert not [p for p in folder.iterdir() if p.name.startswith(".commit")]
        outcomes.add("new" if got == want_new else "old")
        if not killed:
            break
    else:
        raise AssertionError("the commit never ran to its end")
    assert outcomes == {"old", "new"} and kill_at > 8  # kills landed before and after the commit point
