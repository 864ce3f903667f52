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
