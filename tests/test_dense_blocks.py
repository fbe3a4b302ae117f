"""Dense building blocks on pairs: FPN / U-Net top-down paths (resize a deeper pair to a
shallower one's size, add or concatenate a lateral pair) without merging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import octswap
from tests.nets import Decoder, Encoder


class TopDown(nn.Module):
    """Encoder -> FPN-style decoder, traceable as a whole."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder(classes=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Resize(nn.Module):
    """conv -> resize -> conv, the resize given as ``how``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 16, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.how == "module":
            y = self.up(y)
        elif self.how == "scale":
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        else:  # to a fixed multiple of the input's own size, bilinear
            y = F.interpolate(y, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear", align_corners=False)
        return self.b(y)


@pytest.mark.parametrize("how", ["module", "scale", "size"])
def test_a_resized_pair_stays_a_pair(how):
    model = Resize(how).eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=(16, 9, 11), mode="graph")
    assert [(d.name, d.in_low, d.out_low) for d in plan.octave_layers] == [("a", 0, 16), ("b", 16, 0)]
    assert not plan.boundaries, plan.boundaries
    a, b = converted.get_submodule("a"), converted.get_submodule("b")
    mode = "bilinear" if how == "size" else "nearest"
    extra = {"align_corners": False} if mode == "bilinear" else {}
    for h, w in ((9, 11), (8, 8), (13, 6)):
        x = torch.randn(2, 16, h, w)
        with torch.no_grad():
            high, low = a(x)  # reference: each branch resized on its own, low to ceil(high / 2)
            high = F.interpolate(high, size=(2 * h, 2 * w), mode=mode, **extra)
            low = F.interpolate(low, size=(math.ceil(2 * h / 2), math.ceil(2 * w / 2)), mode=mode, **extra)
            torch.testing.assert_close(converted(x), b((high, low)))
            assert converted(x).shape == model(x).shape


def test_an_fpn_top_down_path_keeps_its_pairs_at_any_size():
    model = TopDown().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=(3, 32, 32))
    assert plan.mode == "graph"
    decoder = {d.name: d for d in plan.layers if d.name.startswith("decoder.")}
    assert decoder["decoder.lateral"].in_low > 0 and decoder["decoder.smooth.0"].in_low > 0
    assert not [b for b in plan.boundaries if b["kind"] == "split"], plan.boundaries
    for h, w in ((32, 32), (33, 45), (17, 8)):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            assert converted(x).shape == model(x).shape


def test_group_norm_per_branch_equals_group_norm_of_the_merged_map():
    """Reference: F.group_norm on the map the pair stands for (low upsampled, even size)."""
    gn = nn.GroupNorm(8, 32)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    high, low = torch.randn(2, 16, 8, 6), torch.randn(2, 16, 4, 3)
    merged = torch.cat([high, low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)], dim=1)
    want = F.group_norm(merged, 8, gn.weight, gn.bias, gn.eps)
    got_high, got_low = octswap.layers.split_group_norm(gn, low=16)((high, low))
    torch.testing.assert_close(got_high, want[:, :16])
    torch.testing.assert_close(got_low, want[:, 16:, ::2, ::2])
    with pytest.raises(ValueError, match="whole number of groups of 4"):
        octswap.layers.split_group_norm(gn, low=6)


class GroupNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.norm = nn.GroupNorm(4, 32)
        self.b = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.norm(self.a(x))))


def test_a_group_norm_between_convs_keeps_the_pair_with_the_split_on_a_group_boundary():
    model = GroupNormed().eval()
    converted, plan = octswap.convert(model, alpha=0.375, input_shape=(32, 16, 16), mode="graph")
    a, b = (next(d for d in plan.layers if d.name == n) for n in ("a", "b"))
    assert a.out_low == b.in_low == 8  # 0.375 x 32 = 12, rounded down to whole groups of 8
    assert not plan.boundaries
    assert isinstance(converted.get_submodule("norm"), octswap.layers.OctaveChannelwise)
    for h, w in ((16, 16), (15, 9)):
        with torch.no_grad():
            assert converted(torch.randn(1, 32, h, w)).shape == (1, 32, h, w)
