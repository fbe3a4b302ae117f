"""Discovery and planning on tiny hand-built nets: every decision and its reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import octswap
from octswap.errors import InputError, PolicyError
from octswap.conversion import make_plan as _make_plan
from octswap.plan import Plan
from octswap.policy import Policy, Rule


def make_plan(model, policy=None, **options):
    """The policy's own decisions, conv by conv (layer mode: no graph refinement)."""
    return _make_plan(model, policy, **{"mode": "layer", **options})


def decisions(plan: Plan) -> dict[str, tuple[str, str]]:
    return {d.name: (d.action, d.reason) for d in plan.layers}


def test_probe_records_shapes_and_stem(tiny_resnet):
    plan = make_plan(tiny_resnet, Policy(alpha=0.5), input_shape=(3, 17, 17))
    sites = {d.name: d.site for d in plan.layers}
    assert list(sites) == ["stem", "layer1.conv1", "layer1.conv2", "layer1.shortcut",
                           "layer2.conv1", "layer2.conv2", "layer2.shortcut"]  # fmt: skip
    assert sites["stem"].is_stem and not sites["layer1.conv1"].is_stem
    assert sites["stem"].input_size == (17, 17) and sites["stem"].output_size == (17, 17)
    assert sites["layer2.conv1"].output_size == (9, 9)  # stride 2 on an odd map rounds up
    assert sites["layer1.shortcut"].kind == "pointwise" and sites["layer1.conv1"].kind == "regular"
    assert plan.output == [1, 10]


def test_default_guards(tiny_resnet):
    plan = make_plan(tiny_resnet, Policy(alpha=0.5, min_feature_size=10), input_shape=(3, 17, 17))
    d = decisions(plan)
    assert d["stem"] == ("keep", "stem: 3 input channels < min_channels 16")
    assert d["layer1.conv1"][0] == "octave"
    assert d["layer2.conv1"] == ("keep", "feature map 9x9 < min_feature_size 10")
    octave = {x.name: x for x in plan.octave_layers}
    assert (octave["layer1.conv1"].in_low, octave["layer1.conv1"].out_low) == (8, 16)


def test_force_lifts_the_soft_guards(tiny_resnet):
    policy = Policy(alpha=0.5, min_feature_size=10, rules=(Rule(name="layer2.conv1", alpha=0.5, force=True),))
    assert decisions(make_plan(tiny_resnet, policy, input_shape=(3, 17, 17)))["layer2.conv1"][0] == "octave"


def test_skip_and_alpha_zero_reasons(tiny_resnet):
    policy = Policy(alpha=0.5, rules=(Rule(pattern="layer2.*", skip=True), Rule(name="layer1.conv2", alpha=0.0)))
    d = decisions(make_plan(tiny_resnet, policy, input_shape=(3, 16, 16)))
    assert d["layer2.conv1"] == ("keep", "policy: skip (rules[0] (pattern 'layer2.*'))")
    assert d["layer1.conv2"] == ("keep", "alpha 0 (rules[1] (name 'layer1.conv2'))")


def test_too_few_low_channels():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))
    d = decisions(make_plan(net, Policy(alpha=0.05), input_shape=(3, 16, 16)))
    assert d["1"] == ("keep", "alpha 0.05/0.05 gives no low-frequency channels for 16->16")


class WSConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (weight standardisation)."""

    def forward(self, x):
        w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / (self.weight.std() + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.valid = nn.Conv2d(32, 32, 3)  # no padding: not size-preserving
        self.even = nn.Conv2d(32, 32, 2, padding=1)
        self.s3 = nn.Conv2d(32, 32, 3, stride=3, padding=1)
        self.ws = WSConv(32, 32, 3, padding=1)
        self.unused = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return self.ws(self.s3(self.even(self.valid(x))))


def test_geometry_and_module_type_reasons():
    d = decisions(make_plan(Odd(), Policy(alpha=0.5, min_feature_size=0), input_shape=(3, 20, 20)))
    assert d["valid"] == ("keep", "padding (0, 0) does not preserve the map size for kernel (3, 3) (needs (1, 1))")
    assert d["even"][0] == "keep" and "no symmetric 'same' padding" in d["even"][1]
    assert d["s3"] == ("keep", "stride (3, 3) is not supported (octave convs need stride 1 or 2)")
    assert d["ws"][0] == "keep" and "custom Conv2d subclass" in d["ws"][1]
    assert d["unused"] == ("keep", "not run by the probe (unused in eval mode, or on a branch the probe did not take): kept plain")


def test_unmatched_rule_warns_or_fails_when_strict(tiny_resnet, caplog):
    policy = Policy(rules=(Rule(regex="^nothing", skip=True),))
    plan = make_plan(tiny_resnet, policy, input_shape=(3, 16, 16))
    assert plan.warnings == ("policy rules[0] (regex '^nothing') matches no conv in this model",)
    assert "matches no conv" in caplog.text
    with pytest.raises(PolicyError, match="matches no conv"):
        make_plan(tiny_resnet, policy, input_shape=(3, 16, 16), strict=True)


def test_probe_failure_is_an_input_error(tiny_resnet):
    with pytest.raises(InputError, match="does not run on an input of shape 1x1x16x16"):
        make_plan(tiny_resnet, input_shape=(1, 16, 16))


def test_probe_restores_training_mode(tiny_resnet):
    tiny_resnet.train()
    make_plan(tiny_resnet, input_shape=(3, 16, 16))
    assert tiny_resnet.training and tiny_resnet.layer1.bn1.training


def test_plan_round_trips_through_plain_data(tiny_resnet):
    plan = make_plan(tiny_resnet, Policy(alpha=0.375, rules=(Rule(regex="shortcut", alpha_out=0.0),)),
                     input_shape=(3, 15, 15))  # fmt: skip
    again = Plan.from_dict(plan.to_dict())
    assert again == plan
    # The plain form holds builtin types only (checkpoints load with weights_only=True).
    torch.save(plan.to_dict(), buffer := __import__("io").BytesIO())
    buffer.seek(0)
    assert Plan.from_dict(torch.load(buffer, weights_only=True)) == plan


def test_mixed_training_modes_survive_probe_and_conversion(tiny_resnet):
    """A training model with frozen (eval-mode) BatchNorm comes back exactly as it was."""
    import octswap

    tiny_resnet.train()
    tiny_resnet.layer1.bn1.eval()
    make_plan(tiny_resnet, input_shape=(3, 16, 16))
    converted, _ = octswap.convert(tiny_resnet, alpha=0.5, input_shape=(3, 16, 16))
    octswap.report(tiny_resnet, converted, _)
    for model in (tiny_resnet,):
        assert model.training and model.layer2.bn1.training and not model.layer1.bn1.training
    assert converted.training and not converted.layer1.bn1.training and converted.layer2.bn1.training


def test_custom_conv_subclasses_holding_many_convs_are_warned_about():
    class Padded(nn.Conv2d):  # a forward octswap does not know: kept
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    few = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *(nn.Conv2d(16, 16, 3, padding=1) for _ in range(3)),
                        Padded(16, 16, 3))
    many = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), Padded(16, 16, 3), Padded(16, 16, 3))
    policy = octswap.Policy(alpha=0.5)
    assert not any("custom Conv2d" in w for w in octswap.make_plan(few, policy, input_shape=(3, 16, 16)).warnings)
    warnings = [w for w in octswap.make_plan(many, policy, input_shape=(3, 16, 16)).warnings if "custom Conv2d" in w]
    assert len(warnings) == 1 and warnings[0].startswith("2 of 3 convs are custom Conv2d subclasses")
    assert "Padded (2)" in warnings[0]
