"""Every corpus analysis through the one engine: the lens as 2 shards + ``lens merge`` and over 2
processes (torchrun, gloo) against one process, and ``--resume`` after a stop for the lens and
the distributions (byte-identical artifacts). The gloss corpus's 50 first documents."""

from __future__ import annotations

import pytest
import torch

from tests.torchrun import gloss_model, torchrun
from workbench.analyses.lens import LensResult
from workbench.artifacts import load
from workbench.cli import main

ARTIFACT = "lens.safetensors"
BASE = ["--model", gloss_model(), "--dataset", "wordnet-glosses", "--limit", "50", "--device",
        "cpu", "--quiet", "--batch-size", "8", "--window", "32"]
ARGS = [*BASE, "--k", "5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lens")
    assert main(["lens", *ARGS, "--out", str(root / "single")]) == 0
    for i in range(2):
        assert main(["lens", *ARGS, "--shard", f"{i}/2", "--out", str(root / f"shard{i}")]) == 0
    assert main(["lens", "merge", str(root / "shard1"), str(root / "shard0"),
                 "--out", str(root / "merged")]) == 0
    res = torchrun(["-m", "workbench", "lens", *ARGS, "--out", str(root / "torchrun")])
    assert res.returncode == 0, res.stderr[-4000:]
    return root


def same_lens(a: dict, b: dict, what: str) -> None:
    """Integer tensors equal except on rank near-ties (the engine batches by length, so a logit
    can round differently between batch widths: at most 1 in 10^4 ranks, off by 1), floats
    within 1e-5."""
    assert set(a) == set(b), f"{what}: {sorted(set(a) ^ set(b))}"
    for k, x in a.items():
        y = b[k]
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}{k}"
        if x.is_floating_point():
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, equal_nan=True, msg=what + k)
        else:
            off = x != y
            assert float(off.double().mean()) <= 1e-4, f"{what}{k}: {int(off.sum())} differ"
            if off.any():
                assert int((x[off] - y[off]).abs().max()) <= 1, f"{what}{k}"


def test_lens_shards_and_torchrun_equal_one_process(runs):
    single, m1 = load(runs / "single" / ARTIFACT)
    for name in ("merged", "torchrun"):
        other, m2 = load(runs / name / ARTIFACT)
        same_lens(single, other, f"{name} vs one process: ")
        assert m2["data"]["sha256"] == m1["data"]["sha256"]
    # every window's ranks are there once (-1 only on padding / the last position)
    merged = LensResult.load(runs / "merged")
    assert int(merged.dataset["n_positions"]) == int(single["window_tokens"].ge(0).sum())
    assert [p["shard"]["index"] for p in load(runs / "merged" / ARTIFACT)[1]["merged_from"]] == [0, 1]
    assert (runs / "merged" / "lens.html").exists()
    assert not (runs / "torchrun" / "checkpoints").exists()


def test_lens_merge_refuses_a_missing_part_and_a_repeat(runs, tmp_path, capsys):
    assert main(["lens", "merge", str(runs / "shard0"), str(runs / "shard0"),
                 "--out", str(tmp_path / "m")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["lens", "merge", str(runs / "shard0"), str(runs / "single"),
                 "--out", str(tmp_path / "m")]) == 2
    assert "not --shard parts" in capsys.readouterr().err


@pytest.mark.parametrize("command, artifact, extra", [
    ("lens", ARTIFACT, ["--k", "5"]),
    ("distributions", "distributions.safetensors", ["--sample", "64", "--scatter-points", "256"]),
])
def test_stopped_then_resumed_is_byte_identical(tmp_path, capsys, command, artifact, extra):
    args = [command, *BASE, *extra,
            "--checkpoint-every", "3"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "stopped"
    assert main([*args, "--stop-after", "4", "--out", str(out)]) == 2  # as a kill would
    assert "stopped after 4 batches" in capsys.readouterr().err
    assert (out / f"{command}.ckpt.safetensors").exists() and not (out / artifact).exists()
    assert main([*args, "--out", str(out)]) == 2  # a leftover checkpoint is never ignored
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--out", str(out)]) == 0
    assert (out / artifact).read_bytes() == (tmp_path / "whole" / artifact).read_bytes()
    assert not (out / f"{command}.ckpt.safetensors").exists()
