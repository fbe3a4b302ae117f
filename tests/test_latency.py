"""Latency measurement: structure and arithmetic only (speed goals live in benchmarks/)."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from octswap.inference import InferenceOptions
from octswap.latency import measure_latency
from tests.nets import TinyResNet


def test_side_by_side_results():
    model = TinyResNet().eval()
    converted, _ = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    results = measure_latency(model, converted, (3, 16, 16), batches=(1, 2), rounds=3, min_round_time=0.01)
    assert [r.batch for r in results] == [1, 2]
    for r in results:
        assert r.original.median > 0 and r.converted.median > 0 and r.original.rounds == 3
        assert r.ratio == r.converted.median / r.original.median
        assert r.to_dict()["ratio"] == round(r.ratio, 4)


def test_models_are_prepared_alike_on_copies():
    model = TinyResNet().eval()
    converted, _ = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    options = InferenceOptions(fold_bn=True, channels_last=True)
    (result,) = measure_latency(model, converted, (3, 16, 16), batches=(1,), options=options, rounds=2,
                                min_round_time=0.01)  # fmt: skip
    assert result.channels_last and result.options == options and result.device == "cpu"
    assert result.original_peak_bytes > 0 and result.converted_peak_bytes > 0
    assert result.memory_ratio == result.converted_peak_bytes / result.original_peak_bytes
    # The caller's models keep their memory format and their BatchNorms.
    assert model.stem.weight.is_contiguous()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


class _Recorder(torch.nn.Module):
    """Records what it is called on (an image model whose work could depend on it, as a detector's).
    The record is kept on the class: measure_latency times deep copies."""

    seen: list[torch.Tensor] = []

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        _Recorder.seen.append(x.detach().clone())
        return self.conv(x)


def test_both_models_and_every_run_see_one_image_like_input(monkeypatch):
    monkeypatch.setattr(_Recorder, "seen", [])
    for _ in range(2):
        measure_latency(_Recorder().eval(), _Recorder().eval(), (3, 8, 8), batches=(2,), rounds=2,
                        min_round_time=0.0, memory=False, options=InferenceOptions(fold_bn=False))  # fmt: skip
    inputs = _Recorder.seen
    assert len(inputs) >= 4 and all(torch.equal(x, inputs[0]) for x in inputs)
    assert inputs[0].shape == (2, 3, 8, 8) and 0 <= float(inputs[0].min()) and float(inputs[0].max()) <= 1
    assert float(inputs[0].std()) > 0.2  # uniform in [0, 1]: std 0.29, not a constant image


def test_bench_command_json():
    result = CliRunner().invoke(app, ["bench", "tests.nets:tiny_resnet", "-s", "16", "-a", "0.5", "--batch", "1",
                                      "--rounds", "2", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert 0 < data["flops_ratio"] < 1
    assert data["latency"][0]["batch"] == 1 and data["latency"][0]["ratio"] > 0
    bad = CliRunner().invoke(app, ["bench", "tests.nets:tiny_resnet", "--batch", "x"])
    assert bad.exit_code == 2 and "--batch" in bad.stderr
