"""Causal 1-D convolutions (Book §3.2.3, Listing 3.1): lengths, causality and receptive fields,
all read off autograd Jacobians in float64."""

import pytest
import torch
from torch import nn

from dgm.core.nn import CausalConv1d
from dgm.models.autoregressive.arm import CausalConvNet


def dependency(net: nn.Module, length: int, in_channels: int = 1) -> torch.Tensor:
    """dep[i, j] = True iff some output channel at position i depends on input position j."""
    net = net.double()
    x = torch.randn(1, in_channels, length, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(net, x, vectorize=True)  # (1, C_out, T, 1, C_in, T)
    return jac.abs().sum(dim=(0, 1, 3, 4)) > 0  # (T, T)


def expected_window(length: int, lo: int, hi: int) -> torch.Tensor:
    """mask[i, j] = (i - hi <= j <= i - lo): output i sees the inputs lo..hi positions back."""
    i = torch.arange(length).unsqueeze(1)
    j = torch.arange(length).unsqueeze(0)
    return (j <= i - lo) & (j >= i - hi)


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (2, 1), (3, 2), (5, 3)])
def test_output_length_equals_input_length(mask_type, kernel_size, dilation):
    conv = CausalConv1d(3, 4, kernel_size, dilation=dilation, mask_type=mask_type)
    for length in (1, 7, 16):
        assert conv(torch.randn(2, 3, length)).shape == (2, 4, length)


@pytest.mark.parametrize("kernel_size,dilation", [(2, 1), (3, 1), (3, 2), (4, 3)])
def test_type_a_sees_strictly_past(kernel_size, dilation):
    length = 16
    conv = CausalConv1d(2, 3, kernel_size, dilation=dilation, mask_type="A")
    dep = dependency(conv, length, in_channels=2)
    taps = torch.zeros(length, length, dtype=torch.bool)
    for tap in range(kernel_size):  # output i sees inputs i - 1 - tap * dilation
        taps |= expected_window(length, 1 + tap * dilation, 1 + tap * dilation)
    assert torch.equal(dep, taps)
    assert not dep.diagonal().any()  # ∂out_i/∂in_i = 0
    assert not dep.triu().any()  # ... and nothing from the future


@pytest.mark.parametrize("kernel_size,dilation", [(2, 1), (3, 1), (3, 2), (4, 3)])
def test_type_b_sees_present_and_past(kernel_size, dilation):
    length = 16
    conv = CausalConv1d(2, 3, kernel_size, dilation=dilation, mask_type="B")
    dep = dependency(conv, length, in_channels=2)
    taps = torch.zeros(length, length, dtype=torch.bool)
    for tap in range(kernel_size):
        taps |= expected_window(length, tap * dilation, tap * dilation)
    assert torch.equal(dep, taps)
    assert dep.diagonal().all()
    assert not dep.triu(diagonal=1).any()


def book_stack() -> nn.Sequential:
    """Fig. 3.3: kernel 2, type A (dilation 1), then type B with dilations 2 and 3."""
    return nn.Sequential(
        CausalConv1d(1, 4, 2, dilation=1, mask_type="A"),
        nn.LeakyReLU(),
        CausalConv1d(4, 4, 2, dilation=2, mask_type="B"),
        nn.LeakyReLU(),
        CausalConv1d(4, 1, 2, dilation=3, mask_type="B"),
    )


def test_book_stack_sees_exactly_seven_previous_inputs():
    length = 20
    dep = dependency(book_stack(), length)
    assert torch.equal(dep, expected_window(length, 1, 7))
    assert int(dep[-1].sum()) == 7


def test_repo_stack_sees_exactly_25_previous_inputs():
    length = 40
    net = CausalConvNet(1, 6, 5, kernel_size=7, dilations=(1, 1, 1, 1))
    assert net.receptive_field == 25
    dep = dependency(net, length)
    assert torch.equal(dep, expected_window(length, 1, 25))
    assert int(dep[-1].sum()) == 25


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("kernel_size,dilations", [(2, (1, 2, 3)), (3, (1, 2, 4, 8)), (4, (1,))])
def test_net_receptive_field_matches_jacobian(kernel_size, dilations, residual):
    length = 40
    net = CausalConvNet(
        1, 5, 3, kernel_size=kernel_size, dilations=dilations, residual=residual
    )
    r = net.receptive_field
    assert r == 1 + sum((kernel_size - 1) * d for d in dilations)
    dep = dependency(net, length)
    assert not dep.diagonal().any() and not dep.triu().any()
    # Every output sees exactly the inputs 1..R back (contiguous for these stacks).
    assert torch.equal(dep, expected_window(length, 1, r))
