"""``workbench amap build`` over 2 processes (torchrun, gloo) and as 2 shards + ``amap merge``,
against the one-process build on the gloss corpus; a rank dying mid-run, then ``--resume``.

Sums are fp64 totals (the sparse AMAP's only kind), so "within 1e-6" tests the reduce: the
parts differ from one process only by fp64 rounding of a different addition order.
"""

from __future__ import annotations

import json

import pytest

from tests.torchrun import assert_same_amap, gloss_model, torchrun
from workbench.artifacts import load
from workbench.cli import main
from workbench.sharding import shard_range

ARTIFACT = "amap.safetensors"
ARGS = ["amap", "build", "--model", gloss_model(), "--dataset", "wordnet-glosses", "--limit",
        "100", "--device", "cpu", "--quiet", "--no-html",
        "--positions", "--checkpoint-every", "4", "--batch-size", "8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("amap")
    assert main([*ARGS, "--out", str(root / "single")]) == 0
    for i in range(2):
        assert main([*ARGS, "--shard", f"{i}/2", "--out", str(root / f"shard{i}")]) == 0
    assert main(["amap", "merge", str(root / "shard1"), str(root / "shard0"),
                 "--out", str(root / "merged")]) == 0
    res = torchrun(["-m", "workbench", *ARGS, "--out", str(root / "torchrun")])
    assert res.returncode == 0, res.stderr[-4000:]
    return root


def test_two_processes_equal_one_process(runs):
    single, m1 = load(runs / "single" / ARTIFACT)
    multi, m2 = load(runs / "torchrun" / ARTIFACT)
    # counts exact, fp64 sums within 1e-6, unit maxima and max-activating windows exact
    assert_same_amap(single, multi, what="torchrun vs one process: ")
    assert m1["data"] == m2["data"] and m1["settings"] == m2["settings"]
    assert m2["amap"]["n_windows"] == m1["amap"]["n_windows"]
    # rank 0 read the contexts of the whole data's top windows, as one process does
    ctx1 = json.loads((runs / "single" / "amap_contexts.json").read_text())
    ctx2 = json.loads((runs / "torchrun" / "amap_contexts.json").read_text())
    assert [(u["unit"], [w["window"] for w in u["windows"]]) for u in ctx1] == \
        [(u["unit"], [w["window"] for w in u["windows"]]) for u in ctx2]
    assert not (runs / "torchrun" / "checkpoints").exists()  # dropped once the artifact is written


def test_shards_merged_offline_equal_one_process(runs):
    single, _ = load(runs / "single" / ARTIFACT)
    merged, meta = load(runs / "merged" / ARTIFACT)
    assert_same_amap(single, merged, what="shards+merge vs one process: ")
    assert "shard" not in meta and [p["shard"]["index"] for p in meta["merged_from"]] == [0, 1]
    for i in range(2):
        assert load(runs / f"shard{i}" / ARTIFACT)[1]["shard"]["count"] == 2


def test_merge_refuses_a_missing_shard_and_other_settings(runs, tmp_path, capsys):
    assert main([*ARGS, "--shard", "2/3", "--out", str(tmp_path / "s2")]) == 0
    capsys.readouterr()
    assert main(["amap", "merge", str(runs / "shard0"), str(tmp_path / "s2"),
                 "--out", str(tmp_path / "m")]) == 2
    assert "different shard counts" in capsys.readouterr().err
    assert main([*ARGS, "--shard", "0/3", "--out", str(tmp_path / "s0")]) == 0
    capsys.readouterr()
    assert main(["amap", "merge", str(tmp_path / "s0"), str(tmp_path / "s2"),
                 "--out", str(tmp_path / "m")]) == 2
    assert "shard 1/3 missing" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_rank_dying_mid_run_then_resume(runs, tmp_path):
    out = tmp_path / "out"
    dead = torchrun(["-m", "workbench", *ARGS, "--out", str(out)],
                    env={"WORKBENCH_TEST_DIE_RANK": "1"})
    assert dead.returncode != 0
    assert "rank 1 died or was killed" in dead.stderr, dead.stderr[-4000:]
    assert not (out / ARTIFACT).exists()  # nothing half-written
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    # each rank's own checkpoint; rank 0 may have been anywhere in its slice when torchrun stopped
    # it (on a loaded machine, before its first checkpoint: then it resumes from the start)
    assert kept in (["rank0-of-2", "rank1-of-2"], ["rank1-of-2"]), kept
    # the resume point is the safetensors header (the .json beside it is a copy for people,
    # written after it: a kill between the two leaves the .json one checkpoint behind)
    ckpt0 = out / "checkpoints" / "rank0-of-2" / "amap.ckpt.safetensors"
    done = load(ckpt0)[1]["batches"] if ckpt0.exists() else 0
    resumed = torchrun(["-m", "workbench", *ARGS, "--resume", "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_amap(load(runs / "single" / ARTIFACT)[0], load(out / ARTIFACT)[0],
                        what="resumed torchrun vs one process: ")
    assert not (out / "checkpoints").exists()
    # it resumed: rank 0 ran only the batches after its last checkpoint
    lo, hi = shard_range(load(runs / "single" / ARTIFACT)[1]["amap"]["n_windows"], 0, 2)
    assert json.loads((out / "amap_build.json").read_text())["batches"] == -(-(hi - lo) // 8) - done
