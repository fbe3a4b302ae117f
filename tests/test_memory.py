"""Activation memory: hand-computed peak and total for tiny nets."""

from __future__ import annotations

import torch
from torch import nn

import octswap
from octswap.memory import measure_activations

F32 = 4


def test_chain_peak_is_the_largest_neighbouring_pair():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 1), nn.Conv2d(8, 2, 1))
    mem = measure_activations(net, torch.randn(1, 3, 10, 10))
    sizes = [c * 100 * F32 for c in (4, 8, 2)]
    assert mem.total == sum(sizes)
    # Sequential drops each input once the next output exists: two maps alive at most.
    assert mem.peak == max(sizes[0] + sizes[1], sizes[1] + sizes[2])


def test_inplace_and_views_count_once():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True), nn.Flatten())
    mem = measure_activations(net, torch.randn(2, 3, 5, 5))
    assert mem.total == mem.peak == 2 * 4 * 25 * F32


def test_report_carries_memory_and_octave_lowers_the_peak():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 8, 3, padding=1),
    ).eval()  # fmt: skip
    policy = octswap.Policy(alpha=0.75, rules=(octswap.Rule(name="7", alpha=0.0),))
    converted, plan = octswap.convert(model, policy, input_shape=(3, 32, 32))
    report = octswap.report(model, converted, plan)
    summary = report.summary()
    assert summary["peak_activation_bytes_before"] == measure_activations(model, torch.randn(1, 3, 32, 32)).peak
    assert summary["peak_activation_bytes_after"] < summary["peak_activation_bytes_before"]
    assert "Activation memory: peak" in report.to_markdown()
