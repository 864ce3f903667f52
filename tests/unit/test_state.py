"""The accumulator base (workbench/kernels/state.py): what every accumulator gets from declaring
its states once, checked against plain tensor arithmetic and fresh instances."""

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap
from workbench.kernels.moments import Moments
from workbench.kernels.sample import BottomK
from workbench.kernels.state import Accumulator
from workbench.kernels.top_windows import TopWindows


class Three(Accumulator):
    def __init__(self, n=4):
        super().__init__()
        self.add_state("total", torch.zeros(n, dtype=torch.int64), "sum")
        self.add_state("high", torch.full((n,), -torch.inf), "max")
        self.add_state("low", torch.full((n,), torch.inf), "min")

    def update(self, x):
        self.total += x.long()
        torch.maximum(self.high, x, out=self.high)
        torch.minimum(self.low, x, out=self.low)
        return self


def test_merge_reduces_each_state_as_declared_in_place():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, generator=g) * 10 for _ in range(6)]
    a, b = Three(), Three()
    for x in xs[:3]:
        a.update(x)
    for x in xs[3:]:
        b.update(x)
    total = a.states["total"]
    a.merge(b)
    assert a.states["total"] is total  # in place: no copy of the state
    stack = torch.stack(xs)
    assert torch.equal(a.total, stack.long().sum(0))
    assert torch.equal(a.high, stack.amax(0)) and torch.equal(a.low, stack.amin(0))
    assert a.REDUCE == {"total": "sum", "high": "max", "low": "min"}
    with pytest.raises(WorkbenchError, match="different sizes"):
        a.merge(Three(5))


@pytest.mark.parametrize("make, feed", [
    (lambda: Three(), lambda acc: acc.update(torch.arange(4.0))),
    (lambda: Moments(3), lambda acc: acc.update(torch.randn(50, 3))),
    (lambda: BottomK(5, 2), lambda acc: acc.update(torch.arange(9), torch.randn(9, 2),
                                                   torch.zeros(9, 1, dtype=torch.long))),
    (lambda: TopWindows(1, 2, 2, span=2), lambda acc: acc.update(
        torch.randn(1, 3, 4, 2), torch.ones(3, 4, dtype=torch.bool), torch.arange(3))),
    (lambda: Amap(1, 5, 2, ("input",), 3), lambda acc: acc.update(
        torch.randn(1, 1, 3, 2), torch.ones(1, 3, dtype=torch.bool),
        {"input": torch.tensor([[1, 2, 2]])})),
])
def test_reset_state_dict_and_load(make, feed):
    acc = make()
    fresh = make().state_dict()
    feed(acc)
    saved = acc.state_dict()
    assert any(not torch.equal(saved[k], fresh[k]) for k in fresh)  # the feed changed something
    acc.reset()
    assert all(torch.equal(acc.state_dict()[k], v) for k, v in fresh.items())
    acc.load_state_dict(saved)
    assert all(torch.equal(acc.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(WorkbenchError, match="keys"):
        acc.load_state_dict({**saved, "extra": torch.zeros(1)})


def test_load_copies_unless_told_to_adopt():
    state = Three().update(torch.ones(4)).state_dict()
    copied = Three().load_state_dict(state)
    adopted = Three().load_state_dict(state, copy=False)
    assert copied.states["total"] is not state["total"]
    assert adopted.states["total"].data_ptr() == state["total"].data_ptr()
