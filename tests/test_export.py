"""`octswap export`: ONNX and torch.export files that run without octswap, validated.

Every round trip is checked twice: by the export's own validation, and here by running
the written file directly (onnxruntime / torch.export.load) on inputs the validation
never saw (another batch size, another height and width) against the PyTorch model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from octswap.errors import ConversionError, ExportValidationError, InputError, MissingExtraError, OutputExistsError
from octswap.export import export_model
from octswap.export.onnx_file import misaligned_octave_convs
from octswap.export.onnx_file import run_onnx
from octswap.export.program import read_program_metadata
from octswap.export.validation import validate, validation_inputs
from octswap.layers import upsample
from tests.nets import tiny_resnet

TINY = "tests.nets:tiny_resnet"


def _scaled_close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0, atol=rel * scale)


def _onnx_outputs(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _inverted_residual() -> nn.Module:
    """MobileNetV2-like: expansion, depthwise 3x3, projection, residual; then a head."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
            self.expand = nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64),
                                    nn.ReLU6())  # fmt: skip
            self.project = nn.Sequential(nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16))
            self.head = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = x + self.project(self.dw(self.expand(x)))
            return self.head(x.mean((2, 3)))

    return Net()


def _grouped() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 24, 1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=3), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=3), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding them is actually checked."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


CASES = {
    "tiny_resnet-graph": (tiny_resnet, "graph", 0.5),
    "tiny_resnet-layer": (tiny_resnet, "layer", 0.5),
    "depthwise": (_inverted_residual, "graph", 0.5),
    "grouped": (_grouped, "graph", 0.34),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_round_trip_small_nets(case, tmp_path):
    build, mode, alpha = CASES[case]
    original = _randomize_bn(build())
    shape = (3, 32, 32)
    converted, plan = octswap.convert(original, alpha=alpha, input_shape=shape, mode=mode)
    assert plan.octave_layers, "the case must convert something"
    result = export_model(converted, tmp_path / "m.onnx", input_shape=shape, dynamic=True)
    # The export's own checks: two sizes (even, odd) and two batch sizes.
    assert result.validation is not None and result.validation.passed
    assert [c.input_shape for c in result.validation.checks] == [(2, 3, 32, 32), (1, 3, 31, 31)]
    assert result.dynamic_axes == {0: "batch", 2: "height", 3: "width"}
    # And here, on shapes the validation never used.
    for batch, h, w in ((3, 35, 30), (1, 32, 33)):
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            expected = converted.eval()(x)
        _scaled_close(_onnx_outputs(result.path, x), expected)


@pytest.mark.parametrize(("name", "alpha"), [("resnet18", 0.25),
                                             pytest.param("mobilenet_v2", 0.5, marks=pytest.mark.slow)])  # ~1 min
def test_onnx_round_trip_zoo(name, alpha, tmp_path):
    original = _randomize_bn(torchvision.models.get_model(name))
    shape = (3, 64, 64)
    converted, plan = octswap.convert(original, alpha=alpha, input_shape=shape)
    assert plan.octave_layers
    result = export_model(converted, tmp_path / f"{name}.onnx", input_shape=shape, dynamic=True)
    assert result.validation.passed
    x = torch.randn(3, 3, 67, 70)
    with torch.no_grad():
        expected = converted(x)
    _scaled_close(_onnx_outputs(result.path, x), expected)


def test_static_export_fixes_the_size_and_resizes_by_constant_scales(tmp_path):
    """--static: no crops and no size computations, resizes by scales (ONNX Runtime's NCHWc form)."""
    converted, _ = octswap.convert(_randomize_bn(tiny_resnet()), alpha=0.5, input_shape=(3, 32, 32))
    result = export_model(converted, tmp_path / "s.onnx", input_shape=(3, 32, 32), dynamic=False, batch=4)
    assert result.dynamic_axes == {}
    assert [c.input_shape for c in result.validation.checks] == [(4, 3, 32, 32)]
    model = onnx.load(str(result.path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 3, 32, 32]
    ops = [n.op_type for n in model.graph.node]
    assert "Resize" in ops and "Slice" not in ops and "Shape" not in ops
    constants = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Resize":
            # Resize(X, roi, scales): a constant scales input and no sizes input.
            assert len(node.input) == 3 and node.input[2] in constants


def test_residual_sums_are_reassociated_for_conv_fusion(tmp_path):
    """(conv + upsampled) + shortcut becomes conv + (upsampled + shortcut), so that the ReLU
    after the block follows an Add with a single-use Conv operand, which ONNX Runtime fuses
    (Conv + Sum + activation) instead of running the Add and the ReLU as two passes."""
    converted, _ = octswap.convert(_randomize_bn(tiny_resnet()), alpha=0.5, input_shape=(3, 32, 32))
    plain = export_model(converted, tmp_path / "plain.onnx", input_shape=(3, 32, 32), dynamic=False, rewrite=False)
    fused = export_model(converted, tmp_path / "fused.onnx", input_shape=(3, 32, 32), dynamic=False)
    assert fused.details["rewrites"] > 0 and fused.validation.passed

    def stranded_relus(path) -> int:
        graph = onnx.load(str(path)).graph
        producer = {out: n for n in graph.node for out in n.output}
        uses: dict[str, int] = {}
        for n in graph.node:
            for i in n.input:
                uses[i] = uses.get(i, 0) + 1

        def single_use_conv(value: str) -> bool:
            return value in producer and producer[value].op_type == "Conv" and uses[value] == 1

        count = 0
        for n in graph.node:
            add = producer.get(n.input[0]) if n.op_type == "Relu" else None
            if add is not None and add.op_type == "Add" and not any(map(single_use_conv, add.input)):
                count += 1
        return count

    assert stranded_relus(plain.path) > 0
    assert stranded_relus(fused.path) == 0


def _inverted_residuals() -> nn.Module:
    """MobileNetV2's blocks (ReLU6 after every conv but the projections), channels in whole
    NCHWc blocks at alpha 0.5 with channel_multiple 16."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.ops import Conv2dNormActivation

    model = nn.Sequential(Conv2dNormActivation(3, 32, activation_layer=nn.ReLU6), InvertedResidual(32, 32, 1, 2),
                          InvertedResidual(32, 64, 2, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5))
    _randomize_bn(model)
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # pre-activations on both sides of [0, 6]
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 4)
    return model


def _ops_after(path, op: str, producer_op: str) -> int:
    graph = onnx.load(str(path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    return sum(1 for n in graph.node if n.op_type == op and producer.get(n.input[0]) == producer_op)


def _reorders(path, tmp_path) -> int:
    """Layout conversions in ONNX Runtime's optimized graph of ``path``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sum(n.op_type.startswith("Reorder") for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_relu6_after_an_octave_sum_stays_in_the_blocked_layout(tmp_path):
    """Clip(a + b, 0, 6) becomes relu(s) - relu(relu(s) - 6) (ops ONNX Runtime's NCHWc
    transformer keeps blocked): no Clip is left after a sum, the optimized graph has fewer
    layout conversions, and the file computes what PyTorch does, above 6 and below 0 too."""
    model = _inverted_residuals()
    policy = octswap.Policy(alpha=0.5, channel_multiple=16, min_channels=16)
    converted, plan = octswap.convert(model, policy, input_shape=(3, 32, 32))
    assert len(plan.octave_layers) >= 5
    seen = []
    for m in model.modules():
        if isinstance(m, nn.ReLU6):
            m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].flatten().clone()))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model(x)
        expected = converted(x)
    flat = torch.cat(seen)
    assert (flat > 6).any() and (flat < 0).any()

    plain = export_model(converted, tmp_path / "plain.onnx", input_shape=(3, 32, 32), dynamic=False, batch=4,
                         rewrite=False)  # fmt: skip
    fused = export_model(converted, tmp_path / "fused.onnx", input_shape=(3, 32, 32), dynamic=False, batch=4)
    assert fused.validation.passed
    assert _ops_after(plain.path, "Clip", "Add") > 0
    assert _ops_after(fused.path, "Clip", "Add") == 0
    before, after = _reorders(plain.path, tmp_path), _reorders(fused.path, tmp_path)
    assert after < before or before == 0  # no NCHWc on this CPU: nothing to remove
    got = ort.InferenceSession(str(fused.path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    _scaled_close(torch.from_numpy(got), expected, rel=1e-5)


def test_pt2_round_trip_and_metadata(tmp_path):
    converted, plan = octswap.convert(_randomize_bn(tiny_resnet()), alpha=0.5, input_shape=(3, 32, 32))
    result = export_model(converted, tmp_path / "m.pt2", format="pt2", input_shape=(3, 32, 32), dynamic=True,
                          metadata={"octswap.alpha": "0.5"})  # fmt: skip
    assert result.validation.passed and len(result.validation.checks) == 2
    module = torch.export.load(str(result.path)).module()
    x = torch.randn(3, 3, 29, 34)
    with torch.no_grad():
        _scaled_close(module(x), converted(x))
    meta = read_program_metadata(result.path)
    assert meta["octswap.alpha"] == "0.5" and meta["octswap.version"] == octswap.__version__


def test_validation_catches_a_file_that_computes_something_else(tmp_path):
    converted, _ = octswap.convert(_randomize_bn(tiny_resnet()), alpha=0.5, input_shape=(3, 32, 32))
    result = export_model(converted, tmp_path / "m.onnx", input_shape=(3, 32, 32), dynamic=True)
    other = _randomize_bn(tiny_resnet())  # same architecture, other weights
    check = validate(other, run_onnx(result.path), validation_inputs((3, 32, 32), batch=None, dynamic=True),
                     runtime="ONNX Runtime")  # fmt: skip
    assert not check.passed
    assert "tolerance" in check.failure() and "2x3x32x32" in check.failure()


class _Counter(nn.Module):
    """Adds how often it was called: an exporter records the count at export time only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x).mean((2, 3)) + 100.0 * self.calls


def test_failed_validation_writes_nothing(tmp_path):
    target = tmp_path / "m.onnx"
    with pytest.raises(ExportValidationError, match="validation failed: .*was not written"):
        export_model(_Counter(), target, input_shape=(3, 16, 16))
    assert list(tmp_path.iterdir()) == []
    # --no-validate writes it anyway.
    result = export_model(_Counter(), target, input_shape=(3, 16, 16), validate_file=False)
    assert result.validation is None and target.is_file()


class _Branchy(nn.Module):
    """Branches on the data: an exporter cannot capture it as one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.relu() if y.mean() > 0 else -y


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_model_the_exporter_cannot_capture_fails_in_one_line(fmt, tmp_path):
    with pytest.raises(ConversionError, match=f"^{fmt} export failed: ") as caught:
        export_model(_Branchy(), tmp_path / f"b.{fmt}", format=fmt, input_shape=(3, 8, 8))
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_raise_before_any_work(tmp_path):
    model = tiny_resnet()
    with pytest.raises(InputError, match="unknown export format 'tflite'"):
        export_model(model, tmp_path / "m.tflite", format="tflite", input_shape=(3, 16, 16))
    with pytest.raises(InputError, match="--opset applies to ONNX"):
        export_model(model, tmp_path / "m.pt2", format="pt2", opset=18, input_shape=(3, 16, 16))
    (tmp_path / "there.onnx").write_text("keep me")
    with pytest.raises(OutputExistsError):
        export_model(model, tmp_path / "there.onnx", input_shape=(3, 16, 16))
    assert (tmp_path / "there.onnx").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.onnx"]


def test_misaligned_octave_branches_are_named_in_a_warning(tmp_path, caplog):
    """64 channels at alpha 0.125: 56 high + 8 low, not multiples of ONNX Runtime's NCHWc block."""
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 10, 1))  # fmt: skip
    converted, plan = octswap.convert(net.eval(), alpha=0.125, input_shape=(3, 16, 16))
    assert [d.name for d in plan.octave_layers] == ["2", "4", "6"]
    # "2" reads the 64 plain channels (its outputs are padded by ONNX Runtime itself); "4" and "6" read 56 + 8.
    assert misaligned_octave_convs(converted) == ["4", "6"]
    with caplog.at_level("WARNING", logger="octswap.export.onnx_file"):
        export_model(converted, tmp_path / "m.onnx", input_shape=(3, 16, 16))
    assert "not a multiple of 16" in caplog.text
    aligned, _ = octswap.convert(net.eval(), alpha=0.25, input_shape=(3, 16, 16))
    assert misaligned_octave_convs(aligned) == []
    rounded, plan = octswap.convert(net.eval(), octswap.Policy(alpha=0.125, channel_multiple=16), input_shape=(3, 16, 16))
    assert not plan.octave_layers and misaligned_octave_convs(rounded) == []  # 8 of 64 rounds to 0: kept plain
    rounded, plan = octswap.convert(net.eval(), octswap.Policy(alpha=0.2, channel_multiple=16), input_shape=(3, 16, 16))
    # 12.8 of 64 rounds to 16; "6" (64 -> 10) is the last octave conv and writes a plain tensor.
    assert [(d.in_low, d.out_low) for d in plan.octave_layers] == [(0, 16), (16, 16), (16, 0)]
    assert misaligned_octave_convs(rounded) == []


def test_convs_the_original_could_not_run_blocked_are_not_named():
    """A conv reading 24 channels runs in the plain layout before conversion too: no warning for it."""
    net = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 64, 1), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, padding=1))  # fmt: skip
    converted, plan = octswap.convert(net.eval(), alpha=0.25, input_shape=(3, 16, 16))
    assert [d.name for d in plan.octave_layers] == ["2", "4"]  # "2": 24 plain channels in, 48 + 16 out
    assert misaligned_octave_convs(converted) == []


def test_upsample_scale_form_equals_exact_size_form():
    """The x2 form octswap exports is the same computation as the exact-size resize."""
    for h, w in ((8, 8), (7, 8), (8, 5), (1, 3)):
        x = torch.randn(2, 3, (h + 1) // 2, (w + 1) // 2)
        expected = torch.nn.functional.interpolate(x, size=(h, w), mode="nearest")
        assert torch.equal(upsample(x, (h, w)), expected)


# ------------------------------------------------------------------------- CLI
@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    result = CliRunner().invoke(app, ["convert", TINY, "--alpha", "0.5", "-s", "32", "-o", str(folder / "oct.pt")])
    assert result.exit_code == 0, result.output
    return folder / "oct.pt"


def test_cli_export_checkpoint_then_run_without_octswap(runner, checkpoint, tmp_path):
    target = tmp_path / "oct.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--to", "onnx", "-o", str(target), "-f", "json", "--dynamic",
                                 "--allow-import"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["validation"]["passed"] and len(report["validation"]["checks"]) == 2
    meta = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert meta["octswap.source"] == TINY and meta["octswap.alpha"] == "0.5" and meta["octswap.mode"] == "graph"
    assert meta["octswap.channel_multiple"] == "1"
    assert json.loads(meta["octswap.plan"])["converted"] > 0
    assert json.loads(meta["octswap.report"])["flops_after"] < json.loads(meta["octswap.report"])["flops_before"]
    # A fresh interpreter with onnxruntime and numpy only: octswap never imported.
    model = octswap.load(checkpoint, allow_import=True)
    x = torch.randn(2, 3, 45, 38)
    with torch.no_grad():
        np.save(tmp_path / "x.npy", x.numpy())
        np.save(tmp_path / "expected.npy", model(x).numpy())
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(target)!r}, providers=['CPUExecutionProvider'])\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); e = np.load({str(tmp_path / 'expected.npy')!r})\n"
        "(y,) = s.run(None, {s.get_inputs()[0].name: x})\n"
        "assert 'octswap' not in sys.modules and 'torch' not in sys.modules\n"
        "print(float(np.abs(y - e).max() / np.abs(e).max()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert float(done.stdout) < 1e-4


def test_cli_export_model_name_default_output(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", TINY, "--alpha", "0.25", "-s", "24", "--to", "pt2", "--static"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny_resnet-oct0.25.pt2").is_file()
    assert "validated with torch.export" in result.stderr and "dynamic axes: batch)" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "Invalid value for '--format'"),
        (["--opset", "18", "--to", "pt2"], "--opset applies to ONNX files only"),
        (["--opset", "99"], "opset 99 is newer than the installed onnx package writes"),
        (["--to", "pt2", "--format", "onnx"], "--format onnx and --to pt2 disagree"),
        (["--alpha", "0.25"], "--alpha applies to a model, not to a checkpoint"),
        (["-o", "{existing}"], "exists; pass --force to overwrite it"),
        (["--opset", "11"], "opset 11 is older than the dynamo exporter writes"),
        (["--mode", "layer"], "--mode applies to a model, not to a checkpoint"),
        (["--to", "onnx", "-o", "{folder}/m.pt2"], "does not match the output name"),
        (["-o", "{folder}"], "is a directory"),
        (["-o", "{checkpoint}", "--force"], "is the checkpoint being exported"),
    ],
)
def test_cli_export_bad_input(runner, checkpoint, tmp_path, args, message):
    existing = tmp_path / "existing.onnx"
    existing.write_text("keep me")
    args = [a.replace("{existing}", str(existing)).replace("{folder}", str(tmp_path))
            .replace("{checkpoint}", str(checkpoint)) for a in args]  # fmt: skip
    checkpoint_bytes = checkpoint.read_bytes()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["export", str(checkpoint), "--allow-import", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before and existing.read_text() == "keep me"
    assert checkpoint.read_bytes() == checkpoint_bytes


def test_cli_export_missing_extra(runner, checkpoint, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    result = runner.invoke(app, ["export", str(checkpoint), "--allow-import", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "octswap: error: ONNX export needs onnxruntime, which is not installed: pip install 'octswap[export]'"
    )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MissingExtraError):
        export_model(tiny_resnet(), tmp_path / "y.onnx", input_shape=(3, 16, 16))


def test_cli_export_validation_failure_exits_1(runner, tmp_path, monkeypatch):
    """A model that draws noise in eval mode: no file can reproduce it, and the export says so."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "noisy_net.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Noisy(nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.conv = nn.Conv2d(3, 4, 3)\n"
        "    def forward(self, x):\n        y = self.conv(x).mean((2, 3))\n        return y + torch.rand_like(y)\n"
        "def build():\n    return Noisy()\n"
    )
    result = runner.invoke(app, ["export", "noisy_net:build", "--alpha", "0", "-s", "16", "-o", "n.onnx"])
    assert result.exit_code == 1, result.output
    assert "validation failed: at input 2x3x16x16" in result.stderr and "n.onnx was not written" in result.stderr
    assert not [p.name for p in tmp_path.iterdir() if ".onnx" in p.name]


def test_cli_export_format_follows_the_output_suffix(runner, checkpoint, tmp_path):
    result = runner.invoke(app, ["export", str(checkpoint), "--allow-import", "-o", str(tmp_path / "m.pt2"),
                                 "--no-validate"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert torch.export.load(str(tmp_path / "m.pt2")) is not None


class _SizeChecking(nn.Module):
    """Asserts its input size, as torchvision's and timm's ViTs do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == 16, f"Wrong image width! Expected 16 but got {x.shape[-1]}"
        return self.conv(x).mean((2, 3))


def test_a_model_that_asserts_its_size_is_checked_where_it_runs(tmp_path):
    result = export_model(_SizeChecking(), tmp_path / "m.pt2", format="pt2", input_shape=(3, 16, 16), dynamic=True)
    probe, other = result.validation.checks
    assert probe.passed and not probe.skipped
    assert other.skipped and "Wrong image width" in other.note


def test_cli_bench_onnxruntime_refuses_pytorch_only_options(runner):
    result = runner.invoke(app, ["bench", TINY, "--runtime", "onnxruntime", "--compile", "--no-fold-bn"])
    assert result.exit_code == 2
    assert "--no-fold-bn, --compile applies to --runtime pytorch" in result.stderr


def test_cli_bench_onnxruntime(runner):
    result = runner.invoke(app, ["bench", TINY, "--alpha", "0.5", "-s", "32", "--runtime", "onnxruntime",
                                 "--batch", "1,2", "--rounds", "2", "--threads", "1", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["latency"]
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["runtime"] == "onnxruntime" and r["export"] == "32x32 fixed" and r["ratio"] > 0 for r in rows)
    assert all(r["original_peak_mib"] is None for r in rows)


def test_cli_export_model_refuses_an_existing_output_before_converting(runner, tmp_path, monkeypatch):
    existing = tmp_path / "there.onnx"
    existing.write_text("keep me")

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted before checking the output")

    monkeypatch.setattr(octswap, "convert", no_conversion)
    result = runner.invoke(app, ["export", TINY, "-s", "16", "-o", str(existing)])
    assert result.exit_code == 2 and "exists; pass --force to overwrite it" in result.stderr
    assert existing.read_text() == "keep me"
    result = runner.invoke(app, ["export", TINY, "-s", "16", "-o", str(tmp_path / "m.onnx"), "--tolerance", "-1"])
    assert result.exit_code == 2 and "--tolerance" in result.output
    result = runner.invoke(app, ["export", TINY, "-s", "16", "-o", str(tmp_path / "m.onnx"), "--opset", "99"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "opset 99 is newer" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.onnx"]


def test_cli_export_default_is_static_and_checked_at_two_batch_sizes(runner, checkpoint, tmp_path):
    """The default file fixes height and width (ONNX Runtime runs it in its fast layout in any
    session) and leaves the batch free: validated at batch 2 and batch 1."""
    target = tmp_path / "oct.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(target), "-f", "json", "--allow-import"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dynamic_axes"] == {"0": "batch"}
    assert [c["input_shape"] for c in report["validation"]["checks"]] == [[2, 3, 32, 32], [1, 3, 32, 32]]
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(target)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 32, 32] and isinstance(dims[0], str)


@pytest.mark.parametrize("fmt", ["table", "json", "markdown", "csv"])
def test_cli_export_prints_every_format(runner, checkpoint, tmp_path, fmt):
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(tmp_path / "m.pt2"), "-f", fmt, "--allow-import"])
    assert result.exit_code == 0, result.output
    if fmt == "json":
        assert json.loads(result.stdout)["format"] == "pt2"
    elif fmt == "csv":
        header, *rows = result.stdout.strip().splitlines()
        assert header.startswith("input,max abs diff") and len(rows) == 2
    else:
        assert "32x32" in result.stdout and ("| input |" in result.stdout) == (fmt == "markdown")


def test_cli_export_old_spellings_still_work_with_a_warning(runner, checkpoint, tmp_path):
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "pt2", "-o", str(tmp_path / "m.pt2"), "--json",
                                 "--allow-import", "--no-validate"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format"] == "pt2"
    assert "--format pt2 is deprecated" in result.stderr and "--json is deprecated" in result.stderr
