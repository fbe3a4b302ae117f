"""timm models by name: built without downloads, traced with timm's conventions, converted,
saved and rebuilt through timm (issue 12)."""

from __future__ import annotations

import pytest
import torch

import octswap
from octswap.errors import ModelLoadError, WeightsError
from octswap.models import default_input_shape
from octswap.octave import OctaveChannelwise

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
