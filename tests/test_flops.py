"""FLOP counting: hand-computed costs for tiny nets and the octave closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from octswap.flops import count_cost
from octswap.layers import OctaveConv2d, OctaveConvBlock


def test_plain_conv_and_linear_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    cost = count_cost(net, torch.randn(1, 3, 6, 6))
    conv = 8 * 3 * 9 * 36  # out channels x in channels x kernel area x output pixels
    linear = 288 * 5
    assert cost.by_operator["conv"] == conv
    assert cost.core_flops == conv + linear
    assert cost.params == 8 * 3 * 9 + 8 + 288 * 5 + 5
    assert cost.by_module["0"] == conv


class PoolAdd(nn.Module):
    def forward(self, x):
        a = nn.functional.avg_pool2d(x, 2, 2, ceil_mode=True)
        b = nn.functional.max_pool2d(x, 3, 2, padding=1)
        return a + b


def test_octswap_counts_pooling_and_add():
    cost = count_cost(PoolAdd(), torch.randn(1, 4, 7, 7))
    out = 4 * 4 * 4  # both pools give 4x4 maps
    assert cost.by_operator["avg_pool2d"] == out * 4
    assert cost.by_operator["max_pool2d"] == out * 9
    assert cost.by_operator["add"] == out
    assert "avg_pool2d" not in cost.uncounted and "add" not in cost.uncounted


def test_uncounted_ops_are_listed():
    cost = count_cost(nn.Sequential(nn.Conv2d(3, 4, 1), nn.GELU()), torch.randn(1, 3, 4, 4))
    assert cost.uncounted == {"gelu": 1}


def test_attention_products_are_counted():
    embed, heads, length = 32, 4, 10
    mha = nn.MultiheadAttention(embed, heads, batch_first=True)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    cost = count_cost(Attn(), torch.randn(2, length, embed))
    projections = 2 * length * embed * embed * 4  # q, k, v and out projections
    products = 2 * length * length * embed * 2  # Q K^T and A V
    assert cost.core_flops == projections + products


def octave_conv_flops(cin, cout, k, a_in, a_out, h, w):
    """The paper's cost with integer channel rounding, stride 1, even sizes."""
    in_l, out_l = int(a_in * cin), int(a_out * cout)
    in_h, out_h = cin - in_l, cout - out_l
    full, low = h * w, (h // 2) * (w // 2)
    return k * k * (in_h * out_h * full + (in_h * out_l + in_l * out_h + in_l * out_l) * low)


@pytest.mark.parametrize("alpha", [0.125, 0.25, 0.5, 0.75])
def test_octave_layer_matches_closed_form(alpha):
    cin, cout, h = 64, 96, 16
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    plain = count_cost(conv, torch.randn(1, cin, h, h)).by_operator["conv"]
    octave = OctaveConv2d.from_conv(conv, alpha_in=alpha, alpha_out=alpha)
    in_l = int(alpha * cin)
    pair = (torch.randn(1, cin - in_l, h, h), torch.randn(1, in_l, h // 2, h // 2))
    got = count_cost(octave, (pair,)).by_operator["conv"]
    assert got == octave_conv_flops(cin, cout, 3, alpha, alpha, h, h)
    # and the closed form the paper states, up to channel rounding
    ratio = (1 - alpha) ** 2 + (1 - (1 - alpha) ** 2) / 4
    assert got / plain == pytest.approx(ratio, rel=0.02)


def test_paper_table_ratios():
    """Paper Table 1: 82%, 67%, 44%, 30% of the FLOPs at alpha .125/.25/.5/.75."""
    cin = cout = 256
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    plain = count_cost(conv, torch.randn(1, cin, 16, 16)).by_operator["conv"]
    for alpha, expected in ((0.125, 0.82), (0.25, 0.67), (0.5, 0.44), (0.75, 0.30)):
        octave = OctaveConv2d.from_conv(conv, alpha_in=alpha, alpha_out=alpha)
        low = int(alpha * cin)
        cost = count_cost(octave, ((torch.randn(1, cin - low, 16, 16), torch.randn(1, low, 8, 8)),))
        assert round(cost.by_operator["conv"] / plain, 2) == expected


def test_block_overheads_by_hand():
    """A layer-wise block adds a split pool, an h->l pool, an upsample, two adds and a merge upsample."""
    cin = cout = 32
    h = 10
    block = OctaveConvBlock.from_conv(nn.Conv2d(cin, cout, 3, padding=1), alpha_in=0.5, alpha_out=0.5)
    cost = count_cost(block, torch.randn(1, cin, h, h))
    half = h // 2
    assert cost.by_operator["conv"] == octave_conv_flops(cin, cout, 3, 0.5, 0.5, h, h)
    assert cost.by_operator["avg_pool2d"] == 2 * (16 * half * half * 4)  # split + h->l, 2x2 windows
    assert cost.by_operator["upsample_nearest2d"] == 16 * h * h + 16 * h * h  # l->h and merge
    assert cost.by_operator["add"] == 16 * h * h + 16 * half * half  # the two path sums
    assert cost.flops == sum(cost.by_operator.values())
    assert math.isclose(cost.params, sum(p.numel() for p in block.parameters()))
