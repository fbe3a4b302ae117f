"""The cost report: agreement with torchvision's published GFLOPS, row arithmetic, renderers."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torchvision
from torch import nn

import octswap
from octswap.flops import count_cost


def _models_with_ops() -> list:
    params = []
    for name in torchvision.models.list_models(module=torchvision.models):
        weights = torchvision.models.get_model_weights(name).DEFAULT
        if "_ops" not in weights.meta:
            continue
        # Up to 5 GFLOPS in the default suite (swin_t and vit_b_32 keep attention in it); the rest under `slow`.
        heavy = weights.meta["_ops"] > 5 or weights.meta["num_params"] > 150_000_000
        params.append(pytest.param(name, marks=pytest.mark.slow) if heavy else name)
    return params


@pytest.mark.parametrize("name", _models_with_ops())
def test_unconverted_core_flops_match_torchvision(name):
    """conv + linear (+ attention) multiply-adds equal ``weights.meta["_ops"]`` within 1%,
    traced at the weights' own crop size (299 for inception_v3, 384 for efficientnet_v2_s...)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    crop = weights.transforms().crop_size[0]
    kwargs = {"image_size": weights.meta["min_size"][0]} if name.startswith("vit_") else {}
    model = torchvision.models.get_model(name, **kwargs)
    cost = count_cost(model, torch.randn(1, 3, crop, crop))
    # torchvision rounds to 3 decimals (shufflenet_v2_x0_5: "0.04" for 0.0405): allow that half unit.
    assert cost.core_flops / 1e9 == pytest.approx(weights.meta["_ops"], rel=0.01, abs=0.0005)


class Seq(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5),
        )  # fmt: skip


@pytest.fixture
def seq_report():
    model = Seq().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    return octswap.report(model, converted, plan, model_name="seq")


def test_rows_add_up(seq_report):
    rep = seq_report
    assert [r.name for r in rep.layers] == ["0", "3", "5"]
    assert sum(r.flops_before for r in rep.stages) == rep.total.flops_before
    assert sum(r.flops_after for r in rep.stages) == rep.total.flops_after
    assert rep.converted == 2 and rep.kept == 1
    # Only the converted convs change; everything else costs the same.
    for row in rep.stages:
        if row.name not in ("3", "5"):
            assert row.flops_after == row.flops_before
    assert rep.layers[1].flops_after < rep.layers[1].flops_before
    assert rep.total.params_after == rep.total.params_before


def test_renderers_agree(seq_report):
    data = json.loads(seq_report.to_json())
    assert data["summary"]["flops_after"] == seq_report.total.flops_after
    rows = list(csv.DictReader(io.StringIO(seq_report.to_csv())))
    assert [r["kind"] for r in rows][-2:] == ["core", "total"]
    assert int(rows[-1]["flops_after"]) == seq_report.total.flops_after
    md = seq_report.to_markdown()
    assert md.count("\n| layer |") == 3 and "multiply-adds" in md


def test_report_layer_row_matches_module_count():
    conv = nn.Conv2d(32, 32, 3, padding=1)
    model = nn.Sequential(conv)
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=(32, 8, 8), policy=octswap.Policy(min_channels=0),
                                      mode="layer")
    rep = octswap.report(model, converted, plan)
    assert rep.layers[0].flops_before == 32 * 32 * 9 * 64
    assert rep.layers[0].flops_after == count_cost(converted[0], torch.randn(1, 32, 8, 8)).flops
