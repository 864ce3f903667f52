"""Artifacts: safetensors + JSON round trip, atomic writes, ordinary file modes."""

import json
import os
import stat

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
