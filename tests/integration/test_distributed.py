"""Reducing accumulators across 2 gloo processes equals one process and the offline merge.

Each test launches ``torchrun --nproc-per-node 2`` on ``dist_kernels_worker.py`` (a few seconds).
The expected values are computed here, in this process, without torch.distributed.
"""

from __future__ import annotations

import torch

from tests.integration import dist_kernels_worker as worker
from tests.torchrun import torchrun
from workbench.artifacts import load

WORKER = "tests/integration/dist_kernels_worker.py"


def single_process() -> dict[str, torch.Tensor]:
    return worker.flat_state(worker.feed(worker.accumulators(), 0, worker.N_ROWS))


def offline_merge() -> dict[str, torch.Tensor]:
    """Each shard built alone, then folded with ``merge`` in shard order (what merge CLIs do)."""
    parts = [worker.feed(worker.accumulators(), *worker.bounds(r, 2)) for r in range(2)]
    return worker.flat_state({k: parts[0][k].merge(parts[1][k]) for k in parts[0]})


def test_two_process_reduce_equals_single_process_and_offline_merge(tmp_path):
    res = torchrun([WORKER, str(tmp_path), "ok"])
    assert res.returncode == 0, res.stderr[-3000:]
    rank0, _ = load(tmp_path / "rank0.safetensors")
    rank1, _ = load(tmp_path / "rank1.safetensors")
    single, merged = single_process(), offline_merge()
    assert set(rank0) == set(single) == set(merged)
    for name in single:
        # every rank ends with the same result, bit for bit
        assert torch.equal(rank0[name], rank1[name]), name
        # same fold as the offline merge: bit for bit
        assert torch.equal(rank0[name], merged[name]), name
        if name.startswith("sample/") or not rank0[name].is_floating_point():
            # counts, histograms and the bottom-k sample are order-free: exact
            assert torch.equal(rank0[name], single[name]), name
        else:
            torch.testing.assert_close(rank0[name], single[name], rtol=1e-6, atol=1e-9)
    # the reduce covered every row once
    assert int(rank0["moments/count"]) == worker.N_ROWS
    assert int(rank0["hist/counts"].sum() + rank0["hist/under"].sum()
               + rank0["hist/over"].sum()) == worker.N_ROWS * 6


def test_ranks_with_different_accumulators_refuse_to_reduce(tmp_path):
    res = torchrun([WORKER, str(tmp_path), "mismatch"])
    assert res.returncode != 0
    assert "differs across ranks" in res.stderr and "d_vocab" in res.stderr, res.stderr[-3000:]
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_failing_rank_is_named_by_the_others_and_nothing_is_written(tmp_path):
    res = torchrun([WORKER, str(tmp_path), "raise"])
    assert res.returncode != 0
    assert "rank 0 of 2 (gloo): rank 1 failed: kernel test: WorkbenchError: simulated failure" \
        in res.stderr, res.stderr[-3000:]
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_rank_killed_outright_is_named_by_the_others(tmp_path):
    res = torchrun([WORKER, str(tmp_path), "ok"], env={"WORKBENCH_TEST_DIE_RANK": "1"})
    assert res.returncode != 0
    assert "rank 0 of 2 (gloo): rank 1 died or was killed" in res.stderr, res.stderr[-3000:]
    assert not list(tmp_path.glob("*.safetensors"))
