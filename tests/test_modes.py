"""Conversion modes: graph, layer, and auto (graph where fx can rewrite the model, else regions, else layer);
regions mode itself: tests/test_regions.py."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from octswap.errors import UntraceableError
from tests.nets import gated, tiny_resnet, untraceable

SHAPE = (3, 16, 16)


def test_auto_uses_graph_mode_where_the_model_traces():
    converted, plan = octswap.convert(tiny_resnet().eval(), alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "graph" and isinstance(converted, torch.fx.GraphModule)
    assert not any("layer mode" in w for w in plan.warnings)


def test_graph_mode_refuses_an_untraceable_model_with_fx_reason():
    with pytest.raises(UntraceableError, match="does not trace with torch.fx .*control flow.*--mode auto"):
        octswap.convert(gated().eval(), alpha=0.5, input_shape=SHAPE, mode="graph")


def test_auto_falls_back_to_layer_mode_with_one_warning(caplog):
    model = untraceable().eval()
    with caplog.at_level(logging.WARNING, logger="octswap"):
        converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "layer" and not isinstance(converted, torch.fx.GraphModule)
    fallbacks = [r.getMessage() for r in caplog.records if "layer mode" in r.getMessage()]
    assert len(fallbacks) == 1 and "control flow" in fallbacks[0]
    assert fallbacks[0] in plan.warnings
    assert plan.octave_layers, "layer mode converts the same model"
    layer_plan = octswap.make_plan(model, octswap.Policy(alpha=0.5), input_shape=SHAPE, mode="layer")
    assert [d.action for d in plan.layers] == [d.action for d in layer_plan.layers]
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape


def test_auto_plan_records_the_mode_used():
    plan = octswap.make_plan(untraceable(), octswap.Policy(alpha=0.5), input_shape=SHAPE)
    assert plan.mode == "layer" and any("does not trace" in w for w in plan.warnings)
    plan = octswap.make_plan(gated(), octswap.Policy(alpha=0.5), input_shape=SHAPE)
    assert plan.mode == "regions" and any("does not trace" in w for w in plan.warnings)
    assert octswap.make_plan(tiny_resnet(), octswap.Policy(alpha=0.5), input_shape=SHAPE).mode == "graph"


def test_cli_default_mode_falls_back_and_says_so(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "tests.nets:untraceable", "--input-size", "16", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "layer" and any("layer mode" in w for w in data["warnings"])
    assert "graph mode cannot convert this model" in result.stderr
    result = runner.invoke(app, ["plan", "tests.nets:gated", "--input-size", "16", "--mode", "graph"])
    assert result.exit_code == 1 and "does not trace with torch.fx" in result.stderr
    assert "Traceback" not in result.output


def test_checkpoint_of_a_fallback_reloads_in_layer_mode(tmp_path):
    model = untraceable().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "layer"
    path = tmp_path / "untraceable.pt"
    octswap.save(path, converted, plan, source=octswap.ModelSource(kind="import", name="tests.nets:untraceable"))
    loaded = octswap.load(path, allow_import=True)
    x = torch.randn(1, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), converted(x))


def test_auto_fallback_probes_once_and_warns_once(caplog):
    policy = octswap.Policy(alpha=0.5, rules=(octswap.Rule(name="nowhere", alpha=0.25),))
    with caplog.at_level(logging.WARNING, logger="octswap"):
        plan = octswap.make_plan(untraceable(), policy, input_shape=SHAPE)
    messages = [r.getMessage() for r in caplog.records]
    assert plan.mode == "layer"
    assert sum("matches no conv" in m for m in messages) == 1 and sum("layer mode" in m for m in messages) == 1


def test_unknown_mode_is_an_input_error():
    from octswap.errors import InputError

    with pytest.raises(InputError, match="unknown conversion mode 'fast'"):
        octswap.make_plan(tiny_resnet(), input_shape=SHAPE, mode="fast")


def _splits(model: torch.nn.Module) -> list[tuple[int, int, int, int]]:
    return [(m.in_high, m.in_low, m.out_high, m.out_low) for m in model.modules()
            if isinstance(m, octswap.OctaveConv2d)]  # fmt: skip


@pytest.mark.parametrize("mode", ["graph", "layer"])
def test_channel_multiple_aligns_every_split_and_survives_a_checkpoint(tmp_path, mode):
    """alpha 0.375 of 32 channels is 12 (floor); rounded to multiples of 16 it is 16 + 16."""
    model, source = octswap.load_model("tests.nets:tiny_resnet")
    plain, _ = octswap.convert(model, octswap.Policy(alpha=0.375), input_shape=SHAPE, mode=mode)
    assert any(low == 12 for split in _splits(plain) for low in split)  # the unrounded split is unaligned
    policy = octswap.Policy(alpha=0.375, channel_multiple=16)
    converted, plan = octswap.convert(model, policy, input_shape=SHAPE, mode=mode)
    splits = _splits(converted)
    assert splits and all(n % 16 == 0 for split in splits for n in split)
    assert any(split[3] == 16 for split in splits)
    assert [(d.in_low, d.out_low) for d in plan.octave_layers] == [s[1::2] for s in splits]
    path = octswap.save(tmp_path / "m.pt", converted, plan, source=source)
    again = octswap.load(path, allow_import=True)
    assert _splits(again) == splits
    x = torch.randn(2, 3, 17, 16)
    with torch.no_grad():
        assert torch.equal(again(x), converted.eval()(x))
