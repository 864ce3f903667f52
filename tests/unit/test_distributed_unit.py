"""The one-process side of workbench.distributed: no process group needed."""

import re

import pytest
import torch

from workbench.distributed import DistContext, _identity
from workbench.errors import WorkbenchError
from workbench.kernels.moments import Moments
from workbench.sharding import parse_shard


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 2/3 ") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(WorkbenchError, match="--shard"):
            parse_shard(bad)


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = DistContext.from_env()
    assert (ctx.rank, ctx.world, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    m = Moments(2).update(torch.randn(10, 2))
    before = m.state_dict()
    assert ctx.reduce(m) is m
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_world_size_without_torchrun_env_says_how_to_launch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(WorkbenchError, match="torchrun"):
        DistContext.from_env()


@pytest.mark.parametrize("op", ["sum", "max", "min"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64])
def test_identity_leaves_the_other_operand_unchanged(op, dtype):
    x = (torch.randn(5) * 100).to(dtype)
    fold = {"sum": torch.add, "max": torch.maximum, "min": torch.minimum}[op]
    assert torch.equal(fold(x, _identity(x, op)), x)


def _meta(index=None, count=None, **changes):
    meta = {"model": "m", "weights_sha256_16": "w", "tokenizer": "t", "tokenizer_vocab": 9,
            "data": {"source": "s", "sha256": "x", "window": 15, "stride": 15, "bos": False,
                     "n_windows": 10 + (index or 0)},
            "settings": {"bins": 300, "batch_size": 8}}
    if index is not None:
        meta["shard"] = {"index": index, "count": count}
    for k, v in changes.items():
        meta[k] = {**meta[k], **v} if isinstance(v, dict) else v
    return meta


def test_check_parts_orders_shards_and_ignores_how_the_work_was_done():
    from workbench.analyses.shards import check_parts

    metas = [_meta(2, 3), _meta(0, 3, settings={"batch_size": 32}), _meta(1, 3)]
    assert check_parts(metas, ["a", "b", "c"]) == [1, 2, 0]
    # whole builds over other data merge too (same model and settings)
    assert check_parts([_meta(), _meta(data={"sha256": "y"})], ["a", "b"]) == [0, 1]


@pytest.mark.parametrize("metas, message", [
    ([_meta(0, 3), _meta(2, 3)], "shard 1/3 missing"),
    ([_meta(0, 2), _meta(0, 2)], "shard 0/2 given twice"),
    ([_meta(0, 2), _meta(1, 3)], "different shard counts"),
    ([_meta(0, 2), _meta()], "are not --shard parts"),
    ([_meta(0, 2), _meta(1, 2, settings={"bins": 100})], "different settings ['bins']"),
    ([_meta(0, 2), _meta(1, 2, model="other")], "different model"),
    ([_meta(0, 2), _meta(1, 2, tokenizer="other")], "different tokenizer"),
    ([_meta(0, 2), _meta(1, 2, data={"sha256": "y"})], "different data"),
    ([_meta(0, 1)], "at least two"),
])
def test_check_parts_refuses(metas, message):
    from workbench.analyses.shards import check_parts

    with pytest.raises(WorkbenchError, match=re.escape(message)):
        check_parts(metas, [f"p{i}" for i in range(len(metas))])


def test_resume_refuses_checkpoints_of_another_process_count(tmp_path):
    from workbench import checkpoint

    old = checkpoint.rank_dir(tmp_path, 0, 4)
    old.mkdir(parents=True)
    checkpoint.path(old, "amap").write_bytes(b"")
    checkpoint.check_world(tmp_path, "amap", 4)  # same count: fine
    with pytest.raises(WorkbenchError, match="4 processes.*--nproc-per-node 4"):
        checkpoint.check_world(tmp_path, "amap", 2)
