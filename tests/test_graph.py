"""Graph mode on tiny hand-built nets, against references assembled by hand from the
octave modules (which test_octave checks against the independent reference)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import octswap
from octswap.layers import OctaveBatchNorm2d, OctaveConv2d, merge_frequencies, split_frequencies
from octswap.policy import Policy, Rule
from tests.reference import ref_pool

ANY = Policy(alpha=0.5, min_channels=0, min_feature_size=0)


def _randomize_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def convert(model, policy=ANY, shape=(3, 16, 16)):
    # Sliced weights: the references below are built with OctaveConv2d.from_conv, and what is
    # checked here is the rewrite (tests/test_transfer.py checks the resampled transfer).
    converted, plan = octswap.convert(model, policy, input_shape=shape, mode="graph", transfer="sliced")
    return converted.eval(), plan


def by_name(plan):
    return {d.name: d for d in plan.layers}


def test_conv_stack_equals_hand_built_octave_stack():
    net = _randomize_bn(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 8, 3, padding=1),
    ))  # fmt: skip
    policy = Policy(alpha=0.5, min_channels=0, min_feature_size=0, rules=(Rule(name="9", alpha=0.0),))
    converted, plan = convert(net, policy, (3, 15, 15))
    d = by_name(plan)
    assert (d["0"].in_low, d["0"].out_low) == (0, 8) and d["0"].reason.startswith("first")
    assert (d["3"].in_low, d["3"].out_low) == (8, 16)
    assert (d["9"].in_low, d["9"].out_low) == (16, 0) and d["9"].reason.startswith("last")
    assert plan.boundaries == ()

    c0 = OctaveConv2d.from_conv(net[0], in_low=0, out_low=8)
    c3 = OctaveConv2d.from_conv(net[3], in_low=8, out_low=16)
    c6 = OctaveConv2d.from_conv(net[6], in_low=16, out_low=16)
    c9 = OctaveConv2d.from_conv(net[9], in_low=16, out_low=0)
    bns = [OctaveBatchNorm2d.from_bn(net[i], low=low).eval() for i, low in ((1, 8), (4, 16), (7, 16))]

    def relu(pair):
        return tuple(F.relu(t) for t in pair)

    x = torch.randn(2, 3, 15, 15)
    want = c9(relu(bns[2](c6(relu(bns[1](c3(relu(bns[0](c0(x))))))))))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want)
    assert converted(x).shape == net(x).shape


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)  # plain (the policy keeps it)
        y = torch.relu(self.a(x))
        y = self.b(y) + x  # pair + plain: x gets split
        z = self.head(y)  # last conv
        return torch.flatten(F.adaptive_avg_pool2d(z, 1), 1)


def test_residual_add_with_plain_operand_splits_it():
    net = Residual().eval()
    policy = Policy(alpha=0.5, min_channels=0, min_feature_size=0,
                    rules=(Rule(name="stem", skip=True), Rule(name="head", alpha=0.0)))  # fmt: skip
    converted, plan = convert(net, policy, (3, 11, 11))
    assert [b["kind"] for b in plan.boundaries] == ["split"]
    a = OctaveConv2d.from_conv(net.a, in_low=0, out_low=8)
    b = OctaveConv2d.from_conv(net.b, in_low=8, out_low=8)
    head = OctaveConv2d.from_conv(net.head, in_low=8, out_low=0)
    x = torch.randn(2, 3, 11, 11)
    s = net.stem(x)
    y = tuple(torch.relu(t) for t in a(s))
    yb = b(y)
    xs = split_frequencies(s, 8)
    z = head((yb[0] + xs[0], yb[1] + xs[1]))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


class Branches(nn.Module):
    """Two octave branches concatenated, a BatchNorm on the concatenation, then a conv."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(8, 12, 3, padding=1)
        self.right = nn.Conv2d(8, 20, 1)
        self.bn = nn.BatchNorm2d(32)
        self.out = nn.Conv2d(32, 16, 3, padding=1)
        self.tail = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = self.bn(torch.cat([self.left(x), self.right(x)], dim=1))
        return self.tail(self.out(torch.relu(y)))


def test_concat_keeps_the_original_channel_order():
    net = _randomize_bn(Branches())
    policy = Policy(alpha=0.5, min_channels=0, min_feature_size=0, rules=(Rule(name="tail", alpha=0.0),))
    converted, plan = convert(net, policy, (8, 10, 10))
    d = by_name(plan)
    assert (d["out"].in_low, d["out"].out_low) == (6 + 10, 8)
    left = OctaveConv2d.from_conv(net.left, in_low=0, out_low=6)
    right = OctaveConv2d.from_conv(net.right, in_low=0, out_low=10)
    # pair order: [left high, right high; left low, right low] in original channel numbers
    order = list(range(0, 6)) + list(range(12, 22)) + list(range(6, 12)) + list(range(22, 32))
    bn = OctaveBatchNorm2d.from_bn(net.bn, low=16, order=order).eval()
    out = OctaveConv2d.from_conv(net.out, in_low=16, out_low=8, in_order=order)
    tail = OctaveConv2d.from_conv(net.tail, in_low=8, out_low=0)
    x = torch.randn(2, 8, 10, 10)
    (lh, ll), (rh, rl) = left(x), right(x)
    y = bn((torch.cat([lh, rh], 1), torch.cat([ll, rl], 1)))
    want = tail(out(tuple(torch.relu(t) for t in y)))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want)


class CatOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 8, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return torch.flatten(self.c(torch.cat([self.a(x), self.b(x)], 1)), 1)


def test_merge_at_a_boundary_restores_order():
    """c's input is a reordered pair; c is the only consumer so a, b stay octave and c is
    fed through in_order; its own output is merged before flatten (so c becomes 'last')."""
    net = CatOut().eval()
    converted, plan = convert(net, ANY, (4, 8, 8))
    d = by_name(plan)
    assert d["c"].reason.startswith("last") and d["c"].in_low == 8
    with torch.no_grad():
        x = torch.randn(1, 4, 8, 8)
        a = OctaveConv2d.from_conv(net.a, in_low=0, out_low=4)(x)
        b = OctaveConv2d.from_conv(net.b, in_low=0, out_low=4)(x)
        order = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]
        c = OctaveConv2d.from_conv(net.c, in_low=8, out_low=0, in_order=order)
        want = torch.flatten(c((torch.cat([a[0], b[0]], 1), torch.cat([a[1], b[1]], 1))), 1)
        torch.testing.assert_close(converted(x), want)


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.c, self.d = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.e = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        y = torch.cat([self.c(self.a(x)), self.d(self.b(x))], 1)
        return self.e(y), torch.flatten(y, 1)


def test_merge_restores_the_original_channel_order():
    """The concatenated pair feeds an octave conv (so it stays a pair) and a flatten,
    which gets a merge that puts every channel back where the original had it."""
    two = Two().eval()
    converted, plan = convert(two, ANY, (4, 9, 9))
    assert [b["kind"] for b in plan.boundaries] == ["merge"]
    with torch.no_grad():
        x = torch.randn(1, 4, 9, 9)
        parts = []
        for first, second in ((two.a, two.c), (two.b, two.d)):
            y = OctaveConv2d.from_conv(second, in_low=4, out_low=4)(OctaveConv2d.from_conv(first, in_low=0, out_low=4)(x))
            parts.append(merge_frequencies(*y))
        torch.testing.assert_close(converted(x)[1], torch.flatten(torch.cat(parts, 1), 1))


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.proj = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(y)))))
        return self.proj(y * s)


def test_squeeze_excitation_pools_each_branch_and_gates_each():
    net = SE().eval()
    policy = Policy(alpha=0.5, min_channels=0, min_feature_size=4, rules=(Rule(name="proj", alpha=0.0),))
    converted, plan = convert(net, policy, (3, 8, 8))
    assert [b["kind"] for b in plan.boundaries] == ["pooled-merge"]
    conv = OctaveConv2d.from_conv(net.conv, in_low=0, out_low=8)
    proj = OctaveConv2d.from_conv(net.proj, in_low=8, out_low=0)
    x = torch.randn(2, 3, 8, 8)
    h, low = conv(x)
    pooled = torch.cat([F.adaptive_avg_pool2d(h, 1), F.adaptive_avg_pool2d(low, 1)], 1)
    s = torch.sigmoid(net.fc2(torch.relu(net.fc1(pooled))))
    want = proj((h * s[:, :8], low * s[:, 8:]))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want)


def test_depthwise_inverted_residual():
    """MobileNetV2 layout: expansion 'first', depthwise octave, projection 'last'."""
    net = nn.Sequential(nn.Conv2d(16, 64, 1), nn.ReLU6(), nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU6(),
                        nn.Conv2d(64, 16, 1)).eval()  # fmt: skip
    policy = Policy(alpha=0.25, min_channels=0, min_feature_size=0, rules=(Rule(name="4", alpha=0.0),))
    converted, plan = convert(net, policy, (16, 9, 9))
    d = by_name(plan)
    assert [(d[n].in_low, d[n].out_low) for n in ("0", "2", "4")] == [(0, 16), (16, 16), (16, 0)]
    e = OctaveConv2d.from_conv(net[0], in_low=0, out_low=16)
    dw = OctaveConv2d.from_conv(net[2], in_low=16, out_low=16)
    p = OctaveConv2d.from_conv(net[4], in_low=16, out_low=0)
    x = torch.randn(2, 16, 9, 9)
    want = p(tuple(F.relu6(t) for t in dw(tuple(F.relu6(t) for t in e(x)))))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want)


def test_octave_output_only_merged_stays_plain():
    """A conv whose pair would go straight into flatten gains nothing: it stays plain."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 2)).eval()
    converted, plan = convert(net, ANY, (3, 8, 8))
    assert plan.layers[0].action == "keep"
    assert plan.layers[0].reason.startswith("no octave conv consumes its output")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(converted(x), net(x))


class Conflict(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


def test_add_of_different_splits_resplits_the_second_operand():
    """Operands with different channel splits meet at an add: the second is merged and split
    again like the first, and the plan records the boundary with the convs on each side."""
    net = Conflict().eval()
    policy = Policy(alpha=0.5, min_channels=0, min_feature_size=0, rules=(Rule(name="b", alpha=0.25),))
    converted, plan = convert(net, policy, (8, 8, 8))
    split = [b for b in plan.boundaries if b["kind"] == "split"]
    assert len(split) == 1 and split[0]["reason"].startswith(
        "operands have different channel splits: 8 low of 16 from a vs 4 low of 16 from b")
    a = OctaveConv2d.from_conv(net.a, alpha_in=0.0, alpha_out=0.5)
    b = OctaveConv2d.from_conv(net.b, alpha_in=0.0, alpha_out=0.25)
    c = OctaveConv2d.from_conv(net.c, alpha_in=0.5, alpha_out=0.0)
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        b_again = split_frequencies(merge_frequencies(*b(x)), 8)
        want = c(tuple(u + v for u, v in zip(a(x), b_again)))
        torch.testing.assert_close(converted(x), want)
    converted, plan = convert(Conflict().eval(), ANY, (8, 8, 8))  # same alpha: no boundary
    assert plan.boundaries == ()


def test_grouped_conv_gets_an_aligned_split():
    """The producer of a grouped conv rounds its low channels to whole groups."""
    net = nn.Sequential(nn.Conv2d(8, 24, 1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1, groups=3),
                        nn.Conv2d(24, 24, 1), nn.Conv2d(24, 8, 1)).eval()  # fmt: skip
    policy = Policy(alpha=0.5, min_channels=0, min_feature_size=0, rules=(Rule(name="4", alpha=0.0),))
    converted, plan = convert(net, policy, (8, 6, 6))
    d = by_name(plan)
    assert d["0"].out_low == 8 and d["2"].in_low == 8  # 12 rounded down to whole groups of 8
    assert plan.boundaries == ()
    x = torch.randn(1, 8, 6, 6)
    assert converted(x).shape == net(x).shape


def test_graph_checkpoint_round_trip(tmp_path, tiny_resnet):
    model, source = octswap.load_model("tests.nets:tiny_resnet")
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    assert plan.mode == "graph" and isinstance(converted, torch.fx.GraphModule)
    path = octswap.save(tmp_path / "g.pt", converted, plan, source=source)
    again = octswap.load(path, allow_import=True)
    x = torch.randn(2, 3, 21, 19)
    with torch.no_grad():
        assert torch.equal(again(x), converted.eval()(x))


def test_graph_training_step():
    model = _randomize_bn(Residual())
    converted, _ = convert(model, Policy(alpha=0.5, min_channels=0, min_feature_size=0), (3, 12, 12))
    converted.train()
    loss = converted(torch.randn(4, 3, 12, 12)).square().mean()
    loss.backward()
    assert converted.a.h2l.weight.grad is not None and converted.b.l2l.weight.grad.abs().sum() > 0


def test_split_reference_pooling():
    x = torch.randn(1, 6, 5, 5)
    h, low = split_frequencies(x, 2)
    torch.testing.assert_close(low, ref_pool(x[:, 4:]))


# --------------------------------------------------------- every input size (issue 11)
class Pooled(nn.Module):
    """VGG/DenseNet-like: pairs go through floor-mode pooling between octave convs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.d = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.a(x))))
        x = F.avg_pool2d(self.b(x), 2)
        x = F.max_pool2d(self.c(x), kernel_size=3, stride=2)
        return self.head(self.d(x).mean((2, 3)))


def test_pooled_pairs_run_at_every_size_the_original_runs_at():
    """Converted at 40 x 40 (where each pool keeps low = ceil(high / 2) by itself), the model
    runs wherever the original does: a 10-wide map pools to 5, its 5-wide low map to 3."""
    net = _randomize_bn(Pooled())
    converted, plan = convert(net, ANY, (3, 40, 40))
    assert all(d.action == "octave" for d in plan.layers)
    assert not [b for b in plan.boundaries if b["kind"] == "merge" and "pool" in b["before"]]
    ran = 0
    for h in range(1, 48, 3):
        for w in (h, h + 5, 2 * h + 1):
            x = torch.randn(1, 3, h, w)
            with torch.no_grad():
                try:
                    want = net(x)
                except RuntimeError:
                    continue
                assert converted(x).shape == want.shape, (h, w)
                ran += 1
    assert ran > 30


def test_pooled_pairs_unchanged_where_the_invariant_already_held():
    """At sizes where per-branch pooling already kept the invariant, the pooled low branch is
    the op's own: the converted model equals one with plain per-branch pooling."""
    net = _randomize_bn(Pooled())
    converted, _ = convert(net, ANY, (3, 40, 40))
    a, b, c, d = (OctaveConv2d.from_conv(getattr(net, n), alpha_in=0.0 if n == "a" else 0.5,
                                         alpha_out=0.0 if n == "d" else 0.5) for n in "abcd")  # fmt: skip
    bn = OctaveBatchNorm2d.from_bn(net.bn, low=8)
    x = torch.randn(2, 3, 40, 56)  # sizes where each pool keeps the invariant by itself
    with torch.no_grad():
        h, low = (F.max_pool2d(F.relu(t), 2) for t in bn(a(x)))
        h, low = (F.avg_pool2d(t, 2) for t in b((h, low)))
        h, low = (F.max_pool2d(t, kernel_size=3, stride=2) for t in c((h, low)))
        want = net.head(d((h, low)).mean((2, 3)))
        torch.testing.assert_close(converted(x), want)


class SpatialGate(nn.Module):
    """A spatial attention map (N x 1 x H x W) scales an octave pair."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.gate = nn.Conv2d(4, 1, 1)
        self.b = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        return self.b(self.a(x) * torch.sigmoid(self.gate(x)))


def test_spatial_gate_meets_a_pair():
    """On input constant over 2x2 cells, 1x1 octave convs compute exactly what the originals do
    (pooling and nearest upsampling lose nothing there), so the gated model must too; at odd
    sizes it runs and keeps the original's shape."""
    net = SpatialGate().eval()
    converted, plan = convert(net, ANY, (4, 8, 8))
    assert by_name(plan)["a"].action == "octave" and by_name(plan)["b"].in_low == 4
    smooth = torch.randn(2, 4, 5, 3).repeat_interleave(2, 2).repeat_interleave(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(converted(smooth), net(smooth))
        for size in ((7, 7), (9, 4), (1, 1)):
            x = torch.randn(1, 4, *size)
            assert converted(x).shape == net(x).shape


class SharedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.out = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.out(self.block(self.block(self.stem(x))))


def test_a_shared_block_converts_once_with_the_same_split_at_both_calls():
    converted, plan = convert(_randomize_bn(SharedBlock()), ANY, (3, 8, 8))
    shared = by_name(plan)["block.0"]
    assert shared.action == "octave" and shared.in_low == shared.out_low > 0
    assert "called 2 times per forward (shared weights), same split each time" in shared.reason
    assert not plan.boundaries
    x = torch.randn(1, 3, 9, 7)
    with torch.no_grad():
        assert converted(x).shape == (1, 16, 9, 7)


class MixedShared(nn.Module):
    """A shared conv called on a pair, then on a tensor an unknown op (flip) made plain."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = self.shared(self.stem(x))
        return self.out(self.shared(y.flip(-1)))


def test_a_shared_conv_with_differently_split_inputs_is_kept_and_says_why():
    converted, plan = convert(MixedShared(), ANY, (3, 8, 8))
    kept = by_name(plan)["shared"]
    assert kept.action == "keep"
    assert kept.reason.startswith("called 2 times in one forward pass (shared weights), with differently split inputs")
    assert "global alpha" not in kept.reason
    x = torch.randn(1, 3, 9, 7)
    with torch.no_grad():
        assert converted(x).shape == (1, 16, 9, 7)


class Tied(nn.Module):
    """b shares a's weight; t's weight is also used by a functional conv (graph mode sees that)."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.b.weight = self.a.weight
        self.t = nn.Conv2d(32, 32, 3, padding=1)
        self.out = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        x = self.b(F.relu(self.a(self.stem(x))))
        x = F.relu(self.t(x))
        if self.functional:
            x = F.conv2d(x, self.t.weight, self.t.bias, padding=1)
        return self.out(x)


@pytest.mark.parametrize("mode", ["graph", "layer"])
def test_tied_parameters_are_kept_and_stay_tied(mode):
    net = Tied(functional=mode == "graph").eval()
    converted, plan = octswap.convert(net, ANY, input_shape=(3, 8, 8), mode=mode)
    d = by_name(plan)
    assert d["a"].action == d["b"].action == "keep"
    assert d["a"].reason.startswith("parameters shared with b (tied weights)")
    assert d["b"].reason.startswith("parameters shared with a (tied weights)")
    assert converted.a.weight is converted.b.weight
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in net.parameters())
    if mode == "graph":
        assert d["t"].action == "keep" and d["t"].reason.startswith("its parameters are also used directly")
        x = torch.randn(1, 3, 9, 7)
        with torch.no_grad():
            assert converted(x).shape == net(x).shape


class InPlace(nn.Module):
    """A pair mutated in place (``mul_``) and read again afterwards."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.inplace = inplace

    def forward(self, x):
        y = self.a(x)
        if self.inplace:
            y.mul_(2.0)  # per branch
        else:
            y = y * 2.0
        z = self.b(y)
        if self.inplace:
            y.clamp_(-0.5, 0.5)  # no per-branch handler: it runs behind a merge
        else:
            y = y.clamp(-0.5, 0.5)
        return z + y


def test_in_place_ops_on_pairs_keep_their_effect():
    """Graph mode makes in-place ops out-of-place and points later readers at the result:
    the in-place net converts to exactly what its out-of-place twin converts to."""
    mutating, twin = InPlace(True).eval(), InPlace(False).eval()
    twin.load_state_dict(mutating.state_dict())
    policy = Policy(alpha=0.5, min_channels=0, min_feature_size=0)
    got, plan = convert(mutating, policy, (8, 8, 8))
    want, _ = convert(twin, policy, (8, 8, 8))
    assert {d.name for d in plan.octave_layers} == {"a", "b"}
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(got(x), want(x))
        torch.testing.assert_close(convert(mutating, Policy(alpha=0.0), (8, 8, 8))[0](x), mutating(x.clone()))


class Eca(nn.Module):
    """ECA-Net's gate (Wang et al. 2020, as timm writes it): reads ``x.shape``, mixes
    neighbouring channels with a 1-D conv, expands the gate to the map."""

    def __init__(self, twin: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.mix = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.twin = twin

    def forward(self, x):
        x = self.a(x)
        if self.twin:  # the same function without shape reads or expand_as
            gate = self.mix(x.mean((2, 3)).unsqueeze(1)).squeeze(1).sigmoid()[:, :, None, None]
            return self.b(x * gate)
        b, c, h, w = x.shape
        y = self.mix(x.mean((2, 3)).view(b, 1, -1)).view(x.size(0), x.size(1), 1, 1).sigmoid()
        return self.b(x * y.expand_as(x))


def test_shape_reads_and_expanded_gates_do_not_merge_the_pair():
    """``x.shape`` and ``x.size(1)`` are answered from the high branch and the
    expanded gate is split per branch: only ECA's pooled statistics cross the branches
    (in the original channel order, as its 1-D conv needs)."""
    net, twin = Eca().eval(), Eca(twin=True).eval()
    twin.load_state_dict(net.state_dict())
    got, plan = convert(net, ANY, (8, 8, 8))
    assert {d.name for d in plan.octave_layers} == {"a", "b"}
    assert [b["kind"] for b in plan.boundaries] == ["pooled-merge"]
    want, _ = convert(twin, ANY, (8, 8, 8))
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(got(x), want(x))
        torch.testing.assert_close(convert(net, Policy(alpha=0.0), (8, 8, 8))[0](x), net(x))


class Mutates(nn.Module):
    """conv -> an in-place op on its output -> conv (the review's cases)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.how = how

    def forward(self, x):
        y = self.a(x)
        if self.how == "clamp_":
            torch.clamp_(y, min=0.0)
        elif self.how == "sigmoid_":
            torch.sigmoid_(y)
        elif self.how == "clamp":
            y = torch.clamp(y, min=0.0)
        elif self.how == "sigmoid":
            y = torch.sigmoid(y)
        elif self.how == "zero_":
            y.zero_()
        elif self.how == "fill_":
            y.fill_(1.0)
        elif self.how == "view":
            y[:, :8].mul_(0.5)
        return self.b(y)


@pytest.mark.parametrize("how", ["clamp_", "sigmoid_"])
def test_in_place_functions_are_made_out_of_place(how):
    net, twin = Mutates(how).eval(), Mutates(how.rstrip("_")).eval()
    twin.load_state_dict(net.state_dict())
    got, plan = convert(net, ANY, (8, 8, 8))
    want, twin_plan = convert(twin, ANY, (8, 8, 8))
    assert plan.mode == "graph" and plan.layers == twin_plan.layers
    assert how != "sigmoid_" or {d.name for d in plan.octave_layers} == {"a", "b"}  # sigmoid runs per branch
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(got(x), want(x))


@pytest.mark.parametrize(("how", "message"), [
    ("zero_", r"in-place .zero_\(\) on an octave pair"),
    ("fill_", r"in-place .fill_\(\) on an octave pair"),
    ("view", "in-place mul_ on a view"),
])  # fmt: skip
def test_in_place_ops_graph_mode_cannot_keep_fall_back(how, message):
    """No out-of-place form (zero_, fill_) or a mutated view: graph mode refuses rather than
    lose the mutation, and auto mode converts in layer mode instead, exactly."""
    net = Mutates(how).eval()
    with pytest.raises(octswap.ConversionError, match=message):
        octswap.convert(net, ANY, input_shape=(8, 8, 8), mode="graph")
    converted, plan = octswap.convert(net, ANY, input_shape=(8, 8, 8))
    assert plan.mode == "layer" and any(re.search(message, w) for w in plan.warnings)
    exact, _ = octswap.convert(net, Policy(alpha=0.0), input_shape=(8, 8, 8))
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(exact(x), net(x.clone()))
        assert converted(x).shape == net(x.clone()).shape


@pytest.mark.parametrize("mode", ["graph", "auto"])
def test_a_heavy_conv_alone_is_converted_in_layer_form_and_a_light_one_stays_plain(tmp_path, mode):
    from octswap.layers import OctaveConvBlock, resample_paths
    from octswap.rewrite.graph.planning import ALONE
    from tests.nets import LoneConvs

    model, source = octswap.load_model("tests.nets:lone_convs")
    shape = (3, 48, 48)
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=shape, mode=mode)
    layers = by_name(plan)
    heavy, light = layers["heavy"], layers["light"]
    assert heavy.action == "octave" and heavy.reason.startswith(ALONE) and (heavy.in_low, heavy.out_low) == (64, 64)
    assert light.action == "keep" and "no octave conv consumes its output" in light.reason
    assert layers["stem"].action == "keep"
    assert isinstance(converted.get_submodule("heavy"), OctaveConvBlock)
    assert type(converted.get_submodule("light")) is nn.Conv2d
    # The same as the model with that one conv replaced by its layer-mode block, at any size.
    reference = LoneConvs()
    reference.load_state_dict(model.state_dict())
    reference.heavy = OctaveConvBlock.from_conv(model.heavy, alpha_in=0.5, alpha_out=0.5)
    resample_paths(reference.heavy.conv)  # as convert() transfers weights by default
    for size in ((48, 48), (33, 47), (16, 20)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(converted.eval()(x), reference.eval()(x))
    path = octswap.save(tmp_path / "m.pt", converted, plan, source=source)
    loaded = octswap.load(path, allow_import=True)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), converted(x))
