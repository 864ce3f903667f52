"""``workbench distributions`` over 2 processes (torchrun, gloo) and as 2 shards + merge, against
the one-process run on the gloss corpus; and what happens when parts are wrong or a rank dies.

The one-process run and the shards run in this process (``workbench.cli.main``); the torchrun
launch is the one subprocess (~20 s on 2 cores).
"""

from __future__ import annotations

import pytest

from tests.torchrun import assert_same_tensors, gloss_model, torchrun
from workbench.artifacts import load, save
from workbench.cli import main

ARTIFACT = "distributions.safetensors"
ARGS = ["--model", gloss_model(), "--dataset", "wordnet-glosses", "--limit", "100", "--device",
        "cpu", "--quiet", "--sample", "64", "--scatter-points", "256", "--batch-size", "8"]


def cli(*argv: str) -> int:
    return main(["distributions", *argv])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    assert cli(*ARGS, "--out", str(root / "single")) == 0
    for i in range(2):
        assert cli(*ARGS, "--shard", f"{i}/2", "--out", str(root / f"shard{i}")) == 0
    assert cli("merge", str(root / "shard0"), str(root / "shard1"), "--out", str(root / "merged")) == 0
    res = torchrun(["-m", "workbench", "distributions", *ARGS, "--out", str(root / "torchrun")])
    assert res.returncode == 0, res.stderr[-4000:]
    return root


def test_two_processes_equal_one_process(runs):
    single, meta1 = load(runs / "single" / ARTIFACT)
    multi, meta2 = load(runs / "torchrun" / ARTIFACT)
    assert_same_tensors(single, multi, what="torchrun vs one process: ")
    # the sample is order-free: bit for bit the same (window, position, dim) picks
    assert (single["sample_ids"] == multi["sample_ids"]).all()
    assert meta1["data"] == meta2["data"] and meta1["settings"] == meta2["settings"]
    # only rank 0 wrote, and it wrote everything
    assert sorted(p.name for p in (runs / "torchrun").iterdir()) == sorted(
        p.name for p in (runs / "single").iterdir())


def test_shards_merged_offline_equal_one_process_and_torchrun(runs):
    single, _ = load(runs / "single" / ARTIFACT)
    merged, meta = load(runs / "merged" / ARTIFACT)
    multi, _ = load(runs / "torchrun" / ARTIFACT)
    assert_same_tensors(single, merged, what="shards+merge vs one process: ")
    # merge and the torchrun reduce fold the same two parts with the same merge: identical
    assert_same_tensors(multi, merged, rtol=0.0, what="shards+merge vs torchrun: ")
    assert [p["shard"]["index"] for p in meta["merged_from"]] == [0, 1]
    parts = [load(runs / f"shard{i}" / ARTIFACT)[0] for i in range(2)]
    assert int(parts[0]["n_samples"][0] + parts[1]["n_samples"][0]) == int(single["n_samples"][0])


def relabel(src, dst, **changes):
    """A copy of artifact folder ``src`` whose metadata has ``changes`` (nested dicts merged):
    what a part built with other flags records, without paying another forward pass."""
    tensors, meta = load(src / ARTIFACT)
    for key, value in changes.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) else value
    save(dst / ARTIFACT, tensors, meta)
    return dst


def test_merge_refuses_a_missing_shard(runs, tmp_path, capsys):
    s0 = relabel(runs / "shard0", tmp_path / "s0", shard={"index": 0, "count": 3})
    s2 = relabel(runs / "shard1", tmp_path / "s2", shard={"index": 2, "count": 3})
    assert cli("merge", str(s0), str(s2), "--out", str(tmp_path / "m")) == 2
    err = capsys.readouterr().err
    assert "shard 1/3 missing" in err and "--shard 1/3" in err, err
    assert cli("merge", str(runs / "shard0"), str(s2), "--out", str(tmp_path / "m")) == 2
    assert "different shard counts" in capsys.readouterr().err
    assert cli("merge", str(runs / "shard0"), str(runs / "shard0"), "--out", str(tmp_path / "m")) == 2
    assert "given twice" in capsys.readouterr().err  # the same folder twice
    copy = relabel(runs / "shard0", tmp_path / "copy")
    assert cli("merge", str(runs / "shard0"), str(copy), "--out", str(tmp_path / "m")) == 2
    assert "shard 0/2 given twice" in capsys.readouterr().err  # a copy of one shard
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("changes, message", [
    ({"settings": {"bins": 100}}, "different settings ['bins']"),
    ({"data": {"sha256": "0" * 64}}, "different data"),
    ({"weights_sha256_16": "0" * 16}, "different weights sha256 16"),
    ({"tokenizer": "another-tokenizer"}, "different tokenizer"),
])
def test_merge_refuses_shards_of_different_models_tokenizers_settings_or_data(
        runs, tmp_path, capsys, changes, message):
    other = relabel(runs / "shard1", tmp_path / "other", **changes)
    assert cli("merge", str(runs / "shard0"), str(other), "--out", str(tmp_path / "m")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_rank_dying_mid_run_stops_the_others_and_nothing_is_written(tmp_path):
    res = torchrun(["-m", "workbench", "distributions", *ARGS, "--out", str(tmp_path)],
                   env={"WORKBENCH_TEST_DIE_RANK": "1"})
    assert res.returncode != 0
    assert "rank 1 died or was killed" in res.stderr, res.stderr[-4000:]
    assert not list(tmp_path.iterdir())
