"""``argmax_last`` against numpy's argmax (first index of the maximum), ties and NaN included."""

import numpy as np
import pytest
import torch

from workbench.kernels.argmax import argmax_last


@pytest.mark.parametrize("width", [5, 256, 300, 1000, 8192])
@pytest.mark.parametrize("block", [2, 128])
def test_equals_numpy_with_ties_tails_and_rows(width, block):
    g = torch.Generator().manual_seed(width + block)
    x = torch.randint(-3, 4, (2, 7, width), generator=g).float()  # many equal maxima per row
    x[0, 0, -1] = 10.0  # the maximum in the tail (past the last whole block)
    x[0, 1, :] = 1.0  # all equal: index 0
    x[1, 2, width // 2] = 10.0
    x[1, 2, -1] = 10.0  # tie between a block and the tail: the block's comes first
    got = argmax_last(x, block=block)
    assert got.shape == (2, 7)
    assert got.tolist() == np.argmax(x.numpy(), axis=-1).tolist()


def test_nan_and_inf_rows_follow_torch():
    x = torch.randn(4, 1000)
    x[0, 17] = torch.nan
    x[1, 999] = torch.nan
    x[2, :] = -torch.inf
    x[3, 500] = torch.inf
    assert argmax_last(x, block=64).tolist() == x.argmax(-1).tolist()
    assert argmax_last(x[2:], block=64).tolist() == [0, 500]


def test_empty_rows():
    assert argmax_last(torch.zeros(0, 4096)).shape == (0,)
