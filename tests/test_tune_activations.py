"""The activation after each conv, as the tuner finds it and times it under ONNX Runtime."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from octswap.layers.resample import split_frequencies
from octswap.plan import ConvSite
from octswap.policy import Policy
from octswap.tuning.activations import activation_key, following_activations
from octswap.tuning.cache import MeasurementCache
from octswap.tuning.costs import LatencyTable
from octswap.tuning.space import SearchSpace


class _NormAct(nn.BatchNorm2d):
    """A BatchNorm carrying its activation, as timm's BatchNormAct2d does (traced as a leaf here)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class _Block(nn.Module):
    """Not a norm, though it carries an activation: what follows a conv through it is not the conv's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(8, 8, 1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, (_NormAct, _Block)) or super().is_leaf_module(m, name)


class Followed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = lambda: nn.Conv2d(8, 8, 3, padding=1)  # noqa: E731
        self.module_act, self.bn, self.relu6 = conv(), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)
        self.function_act = conv()
        self.method_act = conv()
        self.clamped = conv()
        self.norm_act, self.bn_act = conv(), _NormAct(8)
        self.added = conv()
        self.shared = conv()
        self.leaky = conv()
        self.into_block, self.block = conv(), _Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu6(self.bn(self.module_act(x)))
        x = F.relu(self.function_act(x))
        x = self.method_act(x).relu()
        x = F.hardtanh(self.clamped(x), 0.0, 6.0)
        x = self.bn_act(self.norm_act(x))
        x = self.added(x) + x  # feeds an add, not an activation
        y = self.shared(x)
        x = torch.relu(y) + y  # two users: the activation is not the conv's alone
        x = F.leaky_relu(self.leaky(x), 0.2)
        return self.block(self.into_block(x))


def test_each_convs_activation_is_found_through_a_batchnorm_and_only_where_it_is_the_only_user():
    model = Followed()
    gm = fx.GraphModule(model, _Tracer().trace(model))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("block.")]
    found = following_activations(gm, convs)
    assert {name: activation_key(a) for name, a in found.items()} == {
        "module_act": "ReLU6()",  # not in place: a timed copy
        "function_act": "relu()",
        "method_act": "relu()",
        "clamped": "hardtanh(min_val=0.0, max_val=6.0)",
        "norm_act": "SiLU()",
        "leaky": "leaky_relu(negative_slope=0.2)",
    }
    assert not any(getattr(a, "inplace", False) for a in found.values())
    # Called activations keep their constant arguments: the same values as the model computes.
    t = torch.linspace(-10, 10, 41)
    torch.testing.assert_close(found["clamped"](t), t.clamp(0, 6))
    torch.testing.assert_close(found["leaky"](t), torch.where(t > 0, t, 0.2 * t))
    torch.testing.assert_close(found["method_act"](t), t.clamp(min=0))


def test_mobilenet_v2s_convs_with_relu6_after_them_and_its_projections_without():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.ops.misc import Conv2dNormActivation

    model = torchvision.models.mobilenet_v2()
    space = SearchSpace(model, policy=Policy(), input_shape=(3, 64, 64))
    # Reference: torchvision's own blocks: the conv of each Conv2dNormActivation feeds ReLU6;
    # the projection conv of each inverted residual (a bare Conv2d) feeds none.
    followed = {f"{name}.0" for name, m in model.named_modules() if isinstance(m, Conv2dNormActivation)}
    assert space.candidates and {n: activation_key(a) for n, a in space.activations.items()} == {
        n: "ReLU6()" for n in space.candidates if n in followed
    }
    assert any(n not in followed for n in space.candidates)  # the projections are candidates too


class _Recorder:
    """Stands in for :class:`~octswap.tuning.onnx_costs.OnnxTimer`: keeps what it is asked to time."""

    def __init__(self) -> None:
        self.timed: list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]] = []

    def side_by_side(self, items):
        self.timed.extend((key, module, tuple(inputs)) for key, module, inputs in items)
        return [1.0 for _ in items]


def test_under_onnxruntime_a_conv_and_its_octave_replacement_are_timed_with_the_activation_after_it():
    site = ConvSite("c", "Conv2d", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "zeros", (9, 9), (9, 9), 1)
    table = LatencyTable(MeasurementCache(None, {}, resume=False), batch=2, threads=1, activations={"c": nn.ReLU6()})
    table.onnx = _Recorder()
    table.timing(site, in_low=16, out_low=16, form="pair")
    (_, plain, (x,)), (_, octave, pair) = table.onnx.timed
    with torch.no_grad():
        outputs = [plain(x * 100), *octave(tuple(t * 100 for t in pair))]
        # Reference: the same convs' raw outputs, clamped to [0, 6] by hand.
        raw = [plain.conv(x * 100), *octave.conv(tuple(t * 100 for t in pair))]
    assert len(outputs) == 3
    for out, reference in zip(outputs, raw):
        assert reference.max() > 6 and reference.min() < 0  # the clamp is visible
        torch.testing.assert_close(out, reference.clamp(0, 6))
    assert torch.equal(pair[0], split_frequencies(x, 16)[0])
    # A conv of the same geometry with no activation after it is timed bare, under its own key.
    table.timing(replace(site, name="d"), in_low=16, out_low=16, form="pair")
    (_, plain_bare, _), _ = table.onnx.timed[2:]
    assert isinstance(plain_bare, nn.Conv2d) and table.measured == 2
