"""timm models by name: built without downloads, traced with timm's conventions, converted,
saved and rebuilt through timm (issue 12)."""

from __future__ import annotations

import pytest
import torch

import octswap
from octswap.errors import ModelLoadError, WeightsError
from octswap.models import default_input_shape
from octswap.layers import OctaveChannelwise

timm = pytest.importorskip("timm")


def test_timm_name_builds_without_weights_and_records_its_source():
    model, source = octswap.load_model("timm:resnet18")
    assert isinstance(model, timm.models.ResNet) and not model.training
    assert source.kind == "timm" and source.name == "timm:resnet18" and source.weights is None
    assert default_input_shape(model) == tuple(model.pretrained_cfg["input_size"])


def test_unknown_name_and_pretrained_are_refused():
    with pytest.raises(ModelLoadError, match=r"unknown timm model 'resnet5' \(did you mean timm:resnet50"):
        octswap.load_model("timm:resnet5")
    with pytest.raises(ModelLoadError, match="never downloads"):
        octswap.load_model("timm:resnet18", kwargs={"pretrained": True})


def test_timm_checkpoint_formats_load_through_timms_loader(tmp_path):
    """timm training checkpoints hold the weights under state_dict / state_dict_ema, with DDP's
    module. prefix; EMA weights win, as timm's own loader decides."""
    model, _ = octswap.load_model("timm:resnet18")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "train.pth.tar"
    torch.save({"epoch": 3, "state_dict": state, "state_dict_ema": ema}, path)
    loaded, source = octswap.load_model("timm:resnet18", weights=str(path))
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight + 1.0)
    assert source.weights == str(path.resolve())
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(WeightsError, match="holds a whole pickled model .*state_dict"):
        octswap.load_model("timm:resnet18", weights=str(tmp_path / "whole.pt"))


def test_batchnorm_act_splits_per_branch_and_round_trips(tmp_path):
    """efficientnet_b0 normalises with BatchNormAct2d (BatchNorm + SiLU in one module): graph mode
    splits it per branch, so the depthwise/SE blocks convert; the checkpoint rebuilds through timm."""
    model, source = octswap.load_model("timm:efficientnet_b0")
    converted, plan = octswap.convert(model, alpha=0.5)
    assert len(plan.octave_layers) >= 30  # of 81 (none before BatchNormAct2d had a handler)
    assert any(isinstance(m, OctaveChannelwise) for m in converted.modules())
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        y = converted.eval()(x)
        assert y.shape == model(x).shape
    path = octswap.save(tmp_path / "e.pt", converted, plan, source=source)
    with torch.no_grad():
        assert torch.equal(octswap.load(path)(x), y)


def test_alpha_zero_keeps_a_timm_model_exact():
    model, _ = octswap.load_model("timm:efficientnet_b0")
    converted, plan = octswap.convert(model, alpha=0.0, input_shape=(3, 64, 64))
    assert not plan.octave_layers
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x))


def test_missing_timm_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # `import timm` now fails
    with pytest.raises(ModelLoadError, match=r"timm models need timm: pip install 'octswap\[timm\]'"):
        octswap.load_model("timm:resnet18")


def test_cli_lists_and_converts_timm_models(tmp_path):
    import json

    from typer.testing import CliRunner

    from octswap.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "timm:resnet1*", "-f", "json"])
    assert listed.exit_code == 0 and {"name": "timm:resnet18", "task": "timm"} in json.loads(listed.stdout)
    out = tmp_path / "r.pt"
    result = runner.invoke(app, ["convert", "timm:resnet18", "--alpha", "0.5", "-o", str(out), "-f", "json"])
    assert result.exit_code == 0, result.output
    ckpt = octswap.read_checkpoint(out)
    assert ckpt.source.kind == "timm" and ckpt.plan.input_shape == (3, 224, 224)  # pretrained_cfg's size
    assert ckpt.plan.octave_layers


def test_zoo_manifests_expand_timm_globs():
    from octswap.zoo import expand_models

    names = expand_models("timm:resnet1*", exclude=["*d", "timm:*clip*"])
    assert "timm:resnet18" in names and "timm:resnet101" in names
    assert not [n for n in names if n.endswith("d") or "clip" in n]
    assert expand_models("timm:efficientnet_b0") == ["timm:efficientnet_b0"]


def test_zoo_tasks_probe_timm_models_at_their_own_size():
    from octswap.zoo import _run_task, manifest_from_dict

    task = manifest_from_dict({"models": ["timm:resnet10t"], "defaults": {"alphas": [0.5]}}).tasks[0]
    assert task.input_size is None  # the model's own pretrained_cfg size
    record = _run_task(task, None)
    assert record["status"] == "ok" and record["convs_converted"] > 0


# ----------------------------------------------------- what timm builds with
def _cheaper_and_reloads(model, converted, plan, source, tmp_path, size=(97, 131)):
    """Output shapes at an odd size, FLOPs fall, parameters stay, and the checkpoint
    rebuilds through timm with identical outputs."""
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = converted.eval()(x)
        assert y.shape == model.eval()(x).shape and torch.isfinite(y).all()
    summary = octswap.report(model, converted, plan, memory=False).summary()
    assert summary["flops_after"] < summary["flops_before"]
    assert summary["params_after"] == summary["params_before"]
    path = octswap.save(tmp_path / "c.pt", converted, plan, source=source)
    with torch.no_grad():
        assert torch.equal(octswap.load(path)(x), y)


def test_a_model_that_needs_timms_tracer_converts_in_graph_mode(tmp_path):
    """mobilevit_xxs holds shape-dependent Python (plain torch.fx stops at its control flow);
    timm's leaf modules and autowrapped functions let graph mode trace it."""
    model, source = octswap.load_model("timm:mobilevit_xxs")
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    converted, plan = octswap.convert(model, alpha=0.5)
    assert plan.mode == "graph" and isinstance(converted, torch.fx.GraphModule)
    assert len(plan.octave_layers) >= 15
    _cheaper_and_reloads(model, converted, plan, source, tmp_path)


def test_squeeze_excitation_gates_each_branch(tmp_path):
    """mobilenetv3's SE modules pool each branch globally, run their 1x1 convs once on the
    merged vector and gate both branches: the convs around them convert."""
    model, source = octswap.load_model("timm:mobilenetv3_small_050")
    converted, plan = octswap.convert(model, alpha=0.5)
    se = [d for d in plan.layers if ".se." in d.name]
    assert se and all(d.action == "keep" for d in se)  # 1x1 maps: plain, by the policy
    assert any(b["kind"] == "pooled-merge" for b in plan.boundaries)
    assert len(plan.octave_layers) >= 20
    _cheaper_and_reloads(model, converted, plan, source, tmp_path)


def test_residual_add_of_mixed_splits_is_resplit(tmp_path):
    """A policy gives one side of resnet10t's first residual add another alpha: the add
    re-splits the second operand and records the boundary instead of failing."""
    model, source = octswap.load_model("timm:resnet10t")
    policy = octswap.Policy(alpha=0.5, rules=(octswap.Rule(name="layer1.0.conv2", alpha=0.25),))
    converted, plan = octswap.convert(model, policy)
    splits = [b for b in plan.boundaries if b["reason"].startswith("operands have different channel splits")]
    assert splits, plan.boundaries
    _cheaper_and_reloads(model, converted, plan, source, tmp_path)


def test_same_padding_convs_convert():
    """timm's Conv2dSame pads to TensorFlow's 'same' at run time. With an odd kernel an octave
    conv padded symmetrically computes the same maps: alpha 0 is exact at odd and even sizes,
    strided ones land on ceil(H / 2), and tf_ models convert them."""
    from timm.layers import Conv2dSame

    from octswap.layers import OctaveConv2d

    for stride in (1, 2):
        conv = Conv2dSame(8, 16, 5, stride=stride).eval()
        plain = OctaveConv2d.from_conv(conv)  # alpha 0: a plain conv with the equivalent padding
        octave = OctaveConv2d.from_conv(conv, alpha_in=0.5, alpha_out=0.5)
        for h, w in ((9, 7), (16, 16), (5, 12)):
            x = torch.randn(1, 8, h, w)
            with torch.no_grad():
                y = conv(x)
                assert y.shape[-2:] == (-(-h // stride), -(-w // stride))
                if stride == 1:
                    torch.testing.assert_close(plain(x), y)
                high, low = octave((x[:, :4], torch.randn(1, 4, -(-h // 2), -(-w // 2))))
                assert high.shape[-2:] == y.shape[-2:]
    even = Conv2dSame(8, 16, 2, stride=1)
    plan = octswap.make_plan(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), even, torch.nn.Conv2d(16, 16, 1)),
                             octswap.Policy(alpha=0.5, min_channels=0), input_shape=(3, 16, 16))  # fmt: skip
    assert "no symmetric 'same' padding" in plan.layers[1].reason
    model, _ = octswap.load_model("timm:tf_mobilenetv3_small_minimal_100")
    same = {n for n, m in model.named_modules() if isinstance(m, Conv2dSame)}
    converted, plan = octswap.convert(model, alpha=0.5)
    assert same & {d.name for d in plan.octave_layers}
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape
    exact, _ = octswap.convert(model, alpha=0.0)
    layered, plan = octswap.convert(model, alpha=0.5, mode="layer")  # self-contained blocks too
    assert same & {d.name for d in plan.octave_layers}
    with torch.no_grad():
        torch.testing.assert_close(exact(x), model(x))
        assert layered(x).shape == model(x).shape


def _family_models() -> list[str]:
    from pathlib import Path

    import yaml

    manifest = Path(__file__).resolve().parent.parent / "configs" / "zoo-timm.yaml"
    return [m.removeprefix("timm:") for m in yaml.safe_load(manifest.read_text())["models"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", _family_models())
def test_one_model_per_timm_family_converts_and_runs(name):
    """configs/zoo-timm.yaml (one model per family): converts without error in auto mode
    at its own input size and runs at an odd size with the original's output shape."""
    model, _ = octswap.load_model(f"timm:{name}")
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=default_input_shape(model))
    assert plan.mode in ("graph", "layer")
    c, h, w = default_input_shape(model)
    x = torch.randn(1, c, h + 1, w + 3)
    with torch.no_grad():
        try:
            want = model(x)
        except Exception:  # noqa: BLE001 - models fixed to their size (vision transformers) run there only
            x = torch.randn(1, c, h, w)
            want = model(x)
        assert converted(x).shape == want.shape


def test_weight_standardized_convs_convert_from_the_weight_they_apply():
    """StdConv2d / ScaledStdConv2d (NF-Nets, BiT) convolve with a standardized weight: the
    octave conv starts from that weight, so alpha 0 is exact and the convs convert."""
    from timm.layers import ScaledStdConv2d, StdConv2d

    from octswap.layers import OctaveConv2d

    for conv in (StdConv2d(16, 32, 3, padding=1), ScaledStdConv2d(16, 32, 3, padding=1, gain_init=0.7)):
        with torch.no_grad():
            conv.weight.mul_(3.0).add_(0.5)  # far from standardized already
        x = torch.randn(2, 16, 11, 9)
        with torch.no_grad():
            torch.testing.assert_close(OctaveConv2d.from_conv(conv)(x), conv(x), rtol=1e-5, atol=1e-5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), StdConv2d(32, 32, 3, padding=1),
                              ScaledStdConv2d(32, 32, 3, padding=1), torch.nn.Conv2d(32, 8, 1)).eval()  # fmt: skip
    for mode in ("graph", "layer"):
        converted, plan = octswap.convert(net, alpha=0.5, input_shape=(3, 16, 16), mode=mode)
        assert {d.name for d in plan.octave_layers} >= {"1", "2"}
    exact, _ = octswap.convert(net, alpha=0.0, input_shape=(3, 16, 16))
    x = torch.randn(1, 3, 13, 17)
    with torch.no_grad():
        torch.testing.assert_close(exact(x), net(x), rtol=1e-5, atol=1e-5)


class _LeafBlock(torch.nn.Module):
    """Registered as a timm leaf module, like NF-Net's NormFreeBlock (in-place mul_ inside)."""

    def __init__(self, branch: bool = False) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.gain = torch.nn.Parameter(torch.tensor(0.5))
        self.branch = branch

    def forward(self, x):
        out = self.conv1(x)
        out.mul_(self.gain)  # in place: later readers of `out` see the product
        if self.branch and x.sum() > 0:  # data-dependent: fx cannot trace this one
            out = out + 1
        return self.conv2(torch.relu(out)) + out


def test_timm_leaf_blocks_holding_convs_are_traced_into_when_they_trace():
    from timm.layers import register_notrace_module

    register_notrace_module(_LeafBlock)

    def net(branch):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), _LeafBlock(branch),
                                   torch.nn.Conv2d(32, 32, 3, padding=1)).eval()  # fmt: skip

    model = net(False)
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    assert {"1.conv1", "1.conv2"} <= {d.name for d in plan.octave_layers}
    exact, _ = octswap.convert(model, alpha=0.0, input_shape=(3, 16, 16))
    x = torch.randn(2, 3, 15, 13)
    with torch.no_grad():
        torch.testing.assert_close(exact(x), model(x))  # the in-place mul_ still counts
    blocked = net(True)
    _, plan = octswap.convert(blocked, alpha=0.5, input_shape=(3, 16, 16), mode="graph")
    reasons = {d.name: d.reason for d in plan.layers}
    assert reasons["1.conv1"].startswith("inside 1 (_LeafBlock), a module torch.fx does not trace into")
