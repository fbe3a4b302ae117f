"""The inference path: fused octave kernels, BatchNorm folding, in-place adds, checkpoints.

Every speed-path output is compared with the reference computation (the independent
reference in tests/reference.py, or the unprepared model). Speed itself is measured
in benchmarks/, not here.
"""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from torch import fx, nn
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from octswap.inference import (
    InferenceOptions,
    add_into,
    fold_batchnorm,
    inference_options,
    inplace_adds,
    optimize_for_inference,
)
from octswap.layers import OctaveBatchNorm2d, OctaveConv2d, OctaveConvBlock, fused_kernels, fused_kernels_available
from tests.nets import TinyResNet
from tests.reference import ref_octave

CL = torch.channels_last
needs_fused = pytest.mark.skipif(not fused_kernels_available(), reason="this torch build has no fused oneDNN conv")


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding has something to get wrong."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


def _count(model: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# ------------------------------------------------------------ fused kernels
@needs_fused
@pytest.mark.parametrize(
    "alpha_in,alpha_out,kernel,stride",
    [c for c in itertools.product((0.0, 0.25, 0.5), (0.0, 0.25, 0.5), (1, 3), (1, 2)) if c[0] or c[1]],
)
def test_fused_path_matches_independent_reference(alpha_in, alpha_out, kernel, stride):
    conv = nn.Conv2d(16, 24, kernel, stride=stride, padding=kernel // 2, bias=True)
    octave = OctaveConv2d.from_conv(conv, alpha_in=alpha_in, alpha_out=alpha_out).eval().to(memory_format=CL)
    for size in (7, 8, 13):
        gen = torch.Generator().manual_seed(size)
        x_h = torch.randn(2, 16 - octave.in_low, size, size, generator=gen).contiguous(memory_format=CL)
        x_l = torch.randn(2, octave.in_low, (size + 1) // 2, (size + 1) // 2, generator=gen)
        x_l = x_l.contiguous(memory_format=CL)
        with torch.inference_mode():
            got = octave((x_h, x_l) if octave.in_low else x_h)
        want_h, want_l = ref_octave(
            x_h.double(), x_l.double() if octave.in_low else None, conv.weight.double(), conv.bias.double(),
            in_low=octave.in_low, out_low=octave.out_low, stride=stride, padding=conv.padding,
            dilation=conv.dilation, groups=1,
        )  # fmt: skip
        got_h, got_l = got if octave.out_low else (got, None)
        torch.testing.assert_close(got_h.double(), want_h, rtol=1e-4, atol=1e-4)
        if octave.out_low:
            torch.testing.assert_close(got_l.double(), want_l, rtol=1e-4, atol=1e-4)


@needs_fused
def test_fused_path_runs_only_where_it_may(monkeypatch):
    octave = OctaveConv2d(16, 16, 3, padding=1).eval().to(memory_format=CL)
    x = (torch.randn(1, 8, 8, 8).contiguous(memory_format=CL), torch.randn(1, 8, 4, 4).contiguous(memory_format=CL))
    calls = []
    monkeypatch.setattr(OctaveConv2d, "_forward_fused", lambda self, h, l: calls.append(1) or (h, l))
    with torch.no_grad():
        octave(x)
        assert len(calls) == 1
        octave((x[0].contiguous(), x[1].contiguous()))  # NCHW: reference path
        with fused_kernels(False):
            octave(x)
        copy.deepcopy(octave).double()((x[0].double(), x[1].double()))  # not float32
    octave(x)  # autograd on: the fused op has no backward
    assert len(calls) == 1


@pytest.mark.parametrize("alpha_in,alpha_out", [(0.0, 0.375), (0.375, 0.375), (0.375, 0.0), (0.25, 0.5)])
def test_grouped_octave_conv_on_channels_last_slices(alpha_in, alpha_out):
    # Grouped paths read channel slices of their branch; on channels-last maps those
    # slices are copied to dense channels-last tensors first (speed). Values and
    # gradients must be those of the independent reference, whatever the layout.
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=8, bias=True)
    octave = OctaveConv2d.from_conv(conv, alpha_in=alpha_in, alpha_out=alpha_out).to(memory_format=CL)
    gen = torch.Generator().manual_seed(3)
    x_h = torch.randn(2, 32 - octave.in_low, 9, 9, generator=gen).contiguous(memory_format=CL).requires_grad_()
    x_l = torch.randn(2, octave.in_low, 5, 5, generator=gen).contiguous(memory_format=CL).requires_grad_()
    got = octave((x_h, x_l) if octave.in_low else x_h)
    got_h, got_l = got if octave.out_low else (got, None)
    want_h, want_l = ref_octave(
        x_h.detach().double(), x_l.detach().double() if octave.in_low else None, conv.weight.double(),
        conv.bias.double(), in_low=octave.in_low, out_low=octave.out_low, stride=1, padding=conv.padding,
        dilation=conv.dilation, groups=8,
    )  # fmt: skip
    torch.testing.assert_close(got_h.double(), want_h, rtol=1e-4, atol=1e-4)
    if octave.out_low:
        torch.testing.assert_close(got_l.double(), want_l, rtol=1e-4, atol=1e-4)
    # The same module on NCHW inputs gives the same gradients (copies are differentiable).
    loss = got_h.square().sum() + (got_l.square().sum() if got_l is not None else 0)
    loss.backward()
    grads = (x_h.grad.clone(), None if x_l.grad is None else x_l.grad.clone())
    x_h2 = x_h.detach().contiguous().requires_grad_()
    x_l2 = x_l.detach().contiguous().requires_grad_()
    out = octave((x_h2, x_l2) if octave.in_low else x_h2)
    out_h, out_l = out if octave.out_low else (out, None)
    (out_h.square().sum() + (out_l.square().sum() if out_l is not None else 0)).backward()
    torch.testing.assert_close(x_h2.grad, grads[0], rtol=1e-5, atol=1e-5)
    if octave.in_low:
        torch.testing.assert_close(x_l2.grad, grads[1], rtol=1e-5, atol=1e-5)


@needs_fused
def test_fused_and_reference_agree_on_a_converted_model():
    model = _randomize_bn(TinyResNet()).eval()
    converted, _ = octswap.convert(model, alpha=0.5, input_shape=(3, 15, 15))
    fast = optimize_for_inference(converted)
    x = torch.randn(2, 3, 15, 15).contiguous(memory_format=CL)
    with torch.inference_mode():
        with fused_kernels(False):
            reference = fast(x)
        fused = fast(x)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ folding
def _octave_net(alpha: float, groups: int = 1) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = OctaveConv2d(16, 32, 3, alpha_in=alpha, alpha_out=alpha, padding=1, groups=groups, bias=False)
            self.bn = OctaveBatchNorm2d(32, low=self.conv.out_low)
            self.last = OctaveConv2d(32, 8, 1, alpha_in=alpha, alpha_out=0.0, in_low=self.conv.out_low)
            self.bn_last = nn.BatchNorm2d(8)

        def forward(self, pair):
            h, l = self.bn(self.conv(pair))
            return self.bn_last(self.last((torch.relu(h), torch.relu(l))))

    return Net()


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_fold_octave_conv_and_pair_batchnorm(groups):
    net = _randomize_bn(_octave_net(0.25, groups)).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # OctaveBatchNorm2d's parts too
            _randomize_bn(nn.Sequential(m), seed=m.num_features)
    low = net.conv.in_low
    pair = (torch.randn(2, 16 - low, 9, 9), torch.randn(2, low, 5, 5))
    folded = fold_batchnorm(net)
    assert isinstance(folded, fx.GraphModule)
    assert _count(folded, (nn.BatchNorm2d, OctaveBatchNorm2d)) == 0
    with torch.no_grad():
        torch.testing.assert_close(folded(pair), net(pair), rtol=1e-5, atol=1e-5)
    # The caller's model is untouched (pure function).
    assert _count(net, OctaveBatchNorm2d) == 1 and net.conv.h2h.bias is None


def test_fold_plain_resnet_and_graph_mode_conversion():
    model = _randomize_bn(TinyResNet()).eval()
    converted, _ = octswap.convert(model, alpha=0.25, input_shape=(3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    for net in (model, converted):
        folded = fold_batchnorm(net)
        assert _count(folded, (nn.BatchNorm2d, OctaveBatchNorm2d)) == 0
        with torch.no_grad():
            torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_fold_layer_mode_blocks():
    model = _randomize_bn(TinyResNet()).eval()
    converted, _ = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16), mode="layer")
    assert _count(converted, OctaveConvBlock) > 0
    folded = fold_batchnorm(converted)
    assert _count(folded, nn.BatchNorm2d) == 0
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), converted(x), rtol=1e-5, atol=1e-5)


def test_untraceable_model_folds_sequential_pairs():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
                return self.body(x)
            return -self.body(x)

    net = _randomize_bn(Untraceable()).eval()
    folded = fold_batchnorm(net)
    assert not isinstance(folded, fx.GraphModule) and _count(folded, nn.BatchNorm2d) == 0
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_training_and_shared_batchnorms_are_left_alone():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.a(x)) + self.bn(self.b(x))

    assert _count(fold_batchnorm(Shared().eval()), nn.BatchNorm2d) == 1
    training = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))  # train mode: batch statistics
    assert _count(fold_batchnorm(training), nn.BatchNorm2d) == 1


# -------------------------------------------------------------- in-place adds
def test_add_into_writes_in_place_only_without_autograd():
    a, b = torch.ones(2, 3), torch.ones(3)
    with torch.no_grad():
        assert add_into(a, b) is a and a.eq(2).all()
    a = torch.ones(2, 3)
    out = add_into(a, b)  # autograd on: a new tensor, a untouched
    assert out is not a and a.eq(1).all()
    with torch.no_grad():
        small = torch.ones(3)
        out = add_into(small, torch.ones(2, 3))  # would broadcast a itself: a new tensor
        assert out.shape == (2, 3) and small.eq(1).all()
        column = torch.ones(2, 1)
        out = add_into(column, torch.ones(1, 3))  # both broadcast: a new (2, 3) tensor
        assert out.shape == (2, 3) and column.eq(1).all()
        a = torch.ones(2, 3, 4)
        assert add_into(a, torch.ones(3, 1)) is a and a.eq(2).all()  # b broadcasts into a


def test_inplace_adds_keep_outputs_and_skip_shared_operands():
    model = _randomize_bn(TinyResNet()).eval()
    traced = fx.symbolic_trace(model)
    changed = inplace_adds(traced)
    assert changed == 2  # the two residual adds (bn2 output + shortcut)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))

    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            y = self.conv(x)
            return y + x, y  # y is read again: must not be overwritten

    reuse = fx.symbolic_trace(Reuse())
    assert inplace_adds(reuse) == 0


# --------------------------------------------------------- optimize + checkpoint
def test_optimize_for_inference_is_pure_and_recorded():
    model = _randomize_bn(TinyResNet()).eval()
    converted, _ = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    fast = optimize_for_inference(converted)
    assert inference_options(fast) == InferenceOptions()
    assert inference_options(converted) is None and _count(converted, OctaveBatchNorm2d) > 0
    assert all(p.is_contiguous(memory_format=CL) for p in fast.parameters() if p.dim() == 4)
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.contiguous(memory_format=CL)), converted(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x), converted(x), rtol=1e-5, atol=1e-5)  # NCHW input works too


def test_checkpoint_replays_inference_preparation(tmp_path):
    model, source = octswap.load_model("tests.nets:tiny_resnet")
    model = _randomize_bn(model).eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    fast = optimize_for_inference(converted)
    path = octswap.save(tmp_path / "fast.pt", fast, plan, source=source)
    ckpt = octswap.read_checkpoint(path)
    assert ckpt.inference == InferenceOptions()
    loaded = octswap.load(path, allow_import=True)
    assert _count(loaded, (nn.BatchNorm2d, OctaveBatchNorm2d)) == 0
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), fast(x))
    # A plain checkpoint records nothing and loads with its BatchNorms.
    plain = octswap.save(tmp_path / "plain.pt", converted, plan, source=source)
    assert octswap.read_checkpoint(plain).inference is None
    assert _count(octswap.load(plain, allow_import=True), OctaveBatchNorm2d) > 0


def test_inference_options_validation_names_key_and_value():
    assert InferenceOptions.from_dict(InferenceOptions(compile=True).to_dict()) == InferenceOptions(compile=True)
    with pytest.raises(octswap.InputError, match="'fold' is unknown"):
        InferenceOptions.from_dict({"fold": True})
    with pytest.raises(octswap.InputError, match="'channels_last' must be true or false, got 'yes'"):
        InferenceOptions.from_dict({"channels_last": "yes"})


# ---------------------------------------------------------------------- CLI
def test_convert_optimized_then_report_and_bench(tmp_path):
    runner = CliRunner()
    ckpt = tmp_path / "tiny.pt"
    result = runner.invoke(app, ["convert", "tests.nets:tiny_resnet", "-s", "16", "-a", "0.5", "-o", str(ckpt),
                                 "--optimize-for-inference", "--format", "json", "--no-layers"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert octswap.read_checkpoint(ckpt).inference == InferenceOptions()
    report = runner.invoke(app, ["report", str(ckpt), "--allow-import", "--latency", "--batch", "1", "--rounds",
                                 "2", "--format", "json", "--no-layers"])  # fmt: skip
    assert report.exit_code == 0, report.output
    data = json.loads(report.stdout)
    (row,) = data["latency"]
    assert row["batch"] == 1 and row["fold_bn"] and row["channels_last"] and row["ratio"] > 0
    # Both sides folded: the BatchNorm FLOPs do not count as a saving.
    assert data["summary"]["flops_after"] < data["summary"]["flops_before"]
    nchw = runner.invoke(app, ["bench", str(ckpt), "--allow-import", "--nchw", "--batch", "1"])
    assert nchw.exit_code == 2 and "channels-last" in nchw.stderr


def test_latency_flag_errors():
    runner = CliRunner()
    csv = runner.invoke(app, ["report", "tests.nets:tiny_resnet", "-s", "16", "--latency", "--format", "csv"])
    assert csv.exit_code == 2 and "--latency" in csv.stderr
    typo = runner.invoke(app, ["report", "tests.nets:tiny_resnet", "-s", "16", "--latency", "--batch", "0"])
    assert typo.exit_code == 2 and "--batch" in typo.stderr
    if not torch.cuda.is_available():
        gpu = runner.invoke(app, ["bench", "tests.nets:tiny_resnet", "-s", "16", "--device", "cuda", "--batch", "1"])
        assert gpu.exit_code == 2 and "CUDA" in gpu.stderr


@pytest.mark.slow
def test_compiled_model_matches_eager():
    model = _randomize_bn(TinyResNet()).eval()
    converted, _ = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    compiled = optimize_for_inference(converted, InferenceOptions(compile=True))
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), converted(x), rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_folds_the_parts_of_a_model_fx_cannot_trace_whole():
    # The root checks its input size (untraceable); the encoder's blocks keep their BatchNorms as
    # attributes (bn1, bn2), not in nn.Sequential pairs, and the decoder unpacks a list.
    from tests.nets import BranchingSegmenter

    net = BranchingSegmenter().eval()
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(net)
    folded = fold_batchnorm(net)
    assert type(folded) is BranchingSegmenter and type(folded.encoder.stage1) is type(net.encoder.stage1)
    assert norms == 6 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)
        with pytest.raises(RuntimeError, match="not divisible"):  # its own eager checks stay
            folded(torch.randn(1, 3, 30, 30))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == norms  # the input is untouched
