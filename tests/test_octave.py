"""OctaveConv2d / OctaveBatchNorm2d / OctaveConvBlock against the independent reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from octswap.layers import (
    OctaveBatchNorm2d,
    OctaveConv2d,
    OctaveConvBlock,
    low_channels,
    merge_frequencies,
    split_frequencies,
)
from tests.reference import ref_low, ref_octave, ref_pool, ref_up

ALPHAS = (0.0, 0.125, 0.25, 0.5, 0.75)


def _pair_input(n: int, channels: int, low: int, size: tuple[int, int]):
    gen = torch.Generator().manual_seed(channels * 1000 + size[0] * 10 + size[1])
    x_h = torch.randn(n, channels - low, *size, generator=gen, dtype=torch.float64)
    x_l = torch.randn(n, low, (size[0] + 1) // 2, (size[1] + 1) // 2, generator=gen, dtype=torch.float64)
    return x_h, x_l


def _check(conv: nn.Conv2d, alpha_in: float, alpha_out: float, size: tuple[int, int], n: int = 2) -> None:
    conv = conv.double()
    octave = OctaveConv2d.from_conv(conv, alpha_in=alpha_in, alpha_out=alpha_out)
    gin = conv.in_channels // conv.groups if conv.groups > 1 else 1
    gout = conv.out_channels // conv.groups if conv.groups > 1 else 1
    in_low = ref_low(conv.in_channels, alpha_in, gin)
    out_low = ref_low(conv.out_channels, alpha_out, gout)
    assert (octave.in_low, octave.out_low) == (in_low, out_low)
    x_h, x_l = _pair_input(n, conv.in_channels, in_low, size)
    got = octave((x_h, x_l) if in_low else x_h)
    want_h, want_l = ref_octave(
        x_h, x_l if in_low else None, conv.weight, conv.bias,
        in_low=in_low, out_low=out_low, stride=conv.stride[0], padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups,
    )  # fmt: skip
    plain_shape = conv(torch.zeros(1, conv.in_channels, *size, dtype=torch.float64)).shape[-2:]
    if out_low:
        got_h, got_l = got
        torch.testing.assert_close(got_l, want_l)
    else:
        assert isinstance(got, torch.Tensor)
        got_h = got
    # The high branch has exactly the shape the original conv gives, odd sizes included.
    assert got_h.shape[-2:] == plain_shape
    torch.testing.assert_close(got_h, want_h)


@pytest.mark.parametrize("alpha_in,alpha_out", list(itertools.product(ALPHAS, ALPHAS)))
@pytest.mark.parametrize("stride", [1, 2])
def test_dense_matches_reference(alpha_in, alpha_out, stride):
    conv = nn.Conv2d(16, 24, 3, stride=stride, padding=1, bias=True)
    for size in ((7, 7), (8, 6)):
        _check(conv, alpha_in, alpha_out, size)


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 1), (5, 1), (3, 2), ((1, 7), 1)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_kernels_dilation_bias(kernel, dilation, stride, bias):
    ks = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = tuple(dilation * (k - 1) // 2 for k in ks)
    conv = nn.Conv2d(12, 20, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    for size in ((9, 9), (10, 5), (1, 1)):
        _check(conv, 0.25, 0.5, size)


@pytest.mark.parametrize("alpha_in,alpha_out", [(0.5, 0.5), (0.0, 0.25), (0.25, 0.0), (0.75, 0.75), (0.125, 0.5)])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_and_grouped(alpha_in, alpha_out, stride):
    depthwise = nn.Conv2d(16, 16, 3, stride=stride, padding=1, groups=16)
    multiplier = nn.Conv2d(8, 16, 3, stride=stride, padding=1, groups=8)
    grouped = nn.Conv2d(32, 64, 3, stride=stride, padding=1, groups=8)
    for conv in (depthwise, multiplier, grouped):
        _check(conv, alpha_in, alpha_out, (11, 7))


def test_depthwise_has_no_cross_paths():
    octave = OctaveConv2d(32, 32, 3, alpha_in=0.5, alpha_out=0.5, padding=1, groups=32)
    assert octave.h2l is None and octave.l2h is None
    assert octave.h2h.groups == 16 and octave.l2l.groups == 16
    assert sum(p.numel() for p in octave.parameters()) == sum(p.numel() for p in nn.Conv2d(32, 32, 3, groups=32).parameters())


@settings(max_examples=40, deadline=None)
@given(
    cin=st.integers(1, 24),
    cout=st.integers(1, 24),
    alpha_in=st.sampled_from(ALPHAS),
    alpha_out=st.sampled_from(ALPHAS),
    stride=st.sampled_from([1, 2]),
    kernel=st.sampled_from([1, 3]),
    h=st.integers(1, 13),
    w=st.integers(1, 13),
)
def test_any_size_any_channels(cin, cout, alpha_in, alpha_out, stride, kernel, h, w):
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)
    _check(conv, alpha_in, alpha_out, (h, w), n=1)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 4, 16])
def test_alpha_zero_is_the_original_conv_bit_for_bit(stride, groups):
    conv = nn.Conv2d(16, 32, 3, stride=stride, padding=1, groups=groups)
    x = torch.randn(3, 16, 13, 10)
    octave = OctaveConv2d.from_conv(conv, alpha_in=0.0, alpha_out=0.0)
    assert torch.equal(octave(x), conv(x))
    block = OctaveConvBlock.from_conv(conv, alpha_in=0.0, alpha_out=0.0)
    assert torch.equal(block(x), conv(x))


@pytest.mark.parametrize("groups", [1, 8])
def test_parameters_unchanged(groups):
    conv = nn.Conv2d(64, 128, 3, padding=1, groups=groups)
    for a in ALPHAS:
        octave = OctaveConv2d.from_conv(conv, alpha_in=a, alpha_out=a)
        assert sum(p.numel() for p in octave.parameters()) == sum(p.numel() for p in conv.parameters())


def test_block_matches_split_reference():
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1).double()
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    block = OctaveConvBlock.from_conv(conv, alpha_in=0.25, alpha_out=0.5)
    x_h, x_l = x[:, :12], ref_pool(x[:, 12:])
    y_h, y_l = ref_octave(x_h, x_l, conv.weight, conv.bias, in_low=4, out_low=12, stride=2,
                          padding=(1, 1), dilation=(1, 1), groups=1)  # fmt: skip
    want = torch.cat([y_h, ref_up(y_l, y_h.shape[-2:])], dim=1)
    got = block(x)
    assert got.shape == conv(x).shape
    torch.testing.assert_close(got, want)


def test_split_merge_shapes_and_values():
    x = torch.randn(2, 10, 7, 5)
    h, low = split_frequencies(x, 4)
    assert h.shape == (2, 6, 7, 5) and low.shape == (2, 4, 4, 3)
    torch.testing.assert_close(low, ref_pool(x[:, 6:]))
    merged = merge_frequencies(h, low)
    assert merged.shape == x.shape
    torch.testing.assert_close(merged[:, 6:], ref_up(ref_pool(x[:, 6:]), (7, 5)))


def test_low_channels_rounding():
    assert low_channels(100, 0.29) == 29  # not 28 from 0.29 * 100 = 28.999...
    assert low_channels(3, 0.25) == 0
    assert low_channels(128, 0.3, groups=32) == 36
    with pytest.raises(ValueError, match="alpha"):
        low_channels(8, 1.0)


def _nearest_multiple(channels: int, alpha: float, unit: int) -> int:
    """Brute force: of the splits 0, unit, ..., channels - unit, the one nearest to
    alpha * channels, the smaller on a tie."""
    candidates = range(0, channels, unit)
    return min(candidates, key=lambda low: (abs(low - alpha * channels), low))


def test_low_channels_with_a_channel_multiple_by_hand():
    assert low_channels(144, 0.375, multiple=16) == 48  # 54 -> 48 (3 x 16), not 64
    assert low_channels(192, 0.375, multiple=16) == 64  # 72 is 4.5 blocks: the tie goes down
    assert low_channels(64, 0.125, multiple=16) == 0  # 8 is half a block: the conv stays plain
    assert low_channels(64, 0.2, multiple=16) == 16  # 12.8 -> 16, more than floor's 12
    assert low_channels(32, 0.9, multiple=16) == 16  # never every channel
    assert low_channels(24, 0.5, multiple=16) == 12  # 24 is no multiple of 16: floor, unaligned
    assert low_channels(128, 0.3, groups=32, multiple=16) == 32  # lcm(16, 4) = 16
    assert low_channels(96, 0.5, groups=4, multiple=16) == 48  # groups of 24: lcm 48
    assert low_channels(64, 0.5, multiple=1) == low_channels(64, 0.5) == 32
    with pytest.raises(ValueError, match="multiple"):
        low_channels(64, 0.5, multiple=0)


@settings(max_examples=200, deadline=None)
@given(blocks=st.integers(1, 64), alpha=st.floats(0.0, 0.99), multiple=st.sampled_from([2, 8, 16]))
def test_low_channels_with_a_channel_multiple_is_the_nearest_aligned_split(blocks, alpha, multiple):
    channels = blocks * multiple
    low = low_channels(channels, alpha, multiple=multiple)
    assert low % multiple == 0 and (channels - low) % multiple == 0
    assert low == _nearest_multiple(channels, alpha, multiple) or abs(
        abs(low - alpha * channels) - abs(_nearest_multiple(channels, alpha, multiple) - alpha * channels)
    ) < 1e-6  # a tie within floating-point noise of alpha * channels


def test_batchnorm_split_matches_original():
    bn = nn.BatchNorm2d(24)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    bn.eval()
    octave = OctaveBatchNorm2d.from_bn(bn, low=8)
    assert not octave.training
    x = torch.randn(2, 24, 6, 6)
    low_in = torch.randn(2, 8, 3, 3)
    y_h, y_l = octave((x[:, :16], low_in))
    torch.testing.assert_close(y_h, bn(x)[:, :16])
    # The low branch uses the last 8 channels' statistics.
    full_low = bn(torch.cat([torch.zeros(2, 16, 3, 3), low_in], dim=1))[:, 16:]
    torch.testing.assert_close(y_l, full_low)


def test_bad_inputs_raise_clear_errors():
    octave = OctaveConv2d(16, 16, 3, alpha_in=0.5, alpha_out=0.5, padding=1)
    with pytest.raises(TypeError, match="pair"):
        octave(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match="low branch"):
        octave((torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)))
    with pytest.raises(ValueError, match="padding"):
        OctaveConv2d(8, 8, 3, padding=0)
    with pytest.raises(ValueError, match="stride"):
        OctaveConv2d(8, 8, 3, padding=1, stride=3)
    with pytest.raises(ValueError, match="groups"):
        OctaveConv2d(8, 6, 3, padding=1, groups=4)


def test_gradients_flow_to_all_paths():
    octave = OctaveConv2d(8, 8, 3, alpha_in=0.5, alpha_out=0.5, padding=1)
    y_h, y_l = octave((torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)))
    (y_h.sum() + y_l.sum()).backward()
    for name in ("h2h", "h2l", "l2h", "l2l"):
        assert getattr(octave, name).weight.grad.abs().sum() > 0


def test_old_import_paths_still_work():
    """octswap.octave and octswap.kernels re-export what they held before octswap.layers."""
    import octswap.kernels
    import octswap.layers
    import octswap.octave

    for name in [*octswap.octave.__all__, "CONVERTIBLE_CONVS", "conv_padding", "conv_weight", "is_convertible_conv",
                 "module_type"]:  # fmt: skip
        assert getattr(octswap.octave, name) is getattr(octswap.layers, name), name
    assert octswap.octave.kernels is octswap.layers.kernels
    for name in octswap.kernels.__all__:
        assert getattr(octswap.kernels, name) is getattr(octswap.layers.kernels, name), name
