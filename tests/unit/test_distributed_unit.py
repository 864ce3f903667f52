"""The one-process side of workbench.distributed: no process group needed."""

import pytest
import torch

from workbench.distributed import DistContext, _identity, parse_shard
from workbench.errors import WorkbenchError
from workbench.kernels.moments import Moments


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
