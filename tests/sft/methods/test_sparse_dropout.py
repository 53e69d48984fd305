"""sft.methods.sparse_dropout: LoRA's input dropout drawn as the positions it drops.

The positions must be those of independent Bernoulli(p) trials (checked by counts against the binomial
spread, not against our own earlier output), the forward and the backward must zero the same elements
and scale the others as ``nn.Dropout`` does, and everywhere the fast path does not apply the module
must be ``nn.Dropout`` itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sft.methods.sparse_dropout import MAX_SPARSE_P, SparseDropout, dropped_positions


def within(count: float, expected: float, variance: float, sigmas: float = 5.0) -> bool:
    return abs(count - expected) <= sigmas * math.sqrt(variance)


@pytest.mark.parametrize("draws", [None, 7], ids=["one-batch", "many-batches"])
@pytest.mark.parametrize("p", [0.05, 0.2])
def test_dropped_positions_are_independent_bernoulli_trials(p, draws):
    torch.manual_seed(0)
    n = 400_000 if draws is None else 20_000
    positions = dropped_positions(n, p, draws)
    assert positions.dtype == torch.int64
    assert positions.numel() == positions.unique().numel() and torch.equal(positions, positions.sort().values)
    assert positions.numel() == 0 or (0 <= int(positions[0]) and int(positions[-1]) < n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[positions] = True
    assert within(mask.sum().item(), n * p, n * p * (1 - p))
    for lag in (1, 2, 1000):  # pairs dropped together as often as independent trials are
        pairs = n - lag
        assert within((mask[lag:] & mask[:-lag]).sum().item(), pairs * p * p, pairs * p * p * (1 - p * p)), lag
    halves = mask.view(2, -1).sum(1).tolist()  # no drift along the positions
    assert all(within(h, n / 2 * p, n / 2 * p * (1 - p)) for h in halves)


def test_dropped_positions_of_nothing_and_of_one_element():
    assert dropped_positions(0, 0.1).numel() == 0
    torch.manual_seed(1)
    hits = sum(dropped_positions(1, 0.1).numel() for _ in range(4000))
    assert within(hits, 400, 4000 * 0.1 * 0.9)


@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_forward_and_backward_zero_the_same_elements_and_scale_the_rest(transposed):
    torch.manual_seed(2)
    p = 0.1
    x = torch.randn(64, 96, dtype=torch.float64)
    x = (x.t() if transposed else x).requires_grad_(True)
    y = SparseDropout(p).train()(x)
    kept = y != 0
    assert 0 < (~kept).sum() < x.numel() / 4
    torch.testing.assert_close(y[kept], x.detach()[kept] / (1 - p), rtol=1e-15, atol=0)
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad / (1 - p), 0.0), rtol=1e-15, atol=0)


def test_same_seed_same_mask_and_eval_is_the_identity():
    x = torch.randn(32, 48)
    drop = SparseDropout(0.05)
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)
    assert drop.eval()(x) is x
    assert SparseDropout(0.0).train()(x) is x
    assert isinstance(drop, nn.Dropout)


@pytest.mark.parametrize("p, inplace", [(MAX_SPARSE_P + 0.1, False), (0.05, True)], ids=["large-p", "inplace"])
def test_outside_the_fast_path_it_is_nn_dropout(p, inplace):
    x = torch.randn(32, 48)
    torch.manual_seed(4)
    ours = SparseDropout(p, inplace=inplace).train()(x.clone())
    torch.manual_seed(4)
    theirs = nn.Dropout(p, inplace=inplace).train()(x.clone())
    assert torch.equal(ours, theirs)
