"""Profile: where a converted dense model spends its time, op family by op family, against its original.

Each model (as ``bench_dense_latency.py`` builds it: random weights, seeded; its input size) is
converted at --alpha with the default policy (or --policy's rules) in auto mode; both models are
prepared alike (``octswap.inference.optimize_for_inference``: BatchNorm folded, channels-last,
weights packed, as ``measure_latency`` prepares them) and run under ``torch.profiler`` for
--forwards forwards after --warmup, --threads threads, batch --batch. Per forward, by op family
(self CPU time, so nested ops are not counted twice): convolutions (time and calls), octave
resampling (2x2 average pooling, nearest upsampling), and everything else.

Usage:
    .venv/bin/python benchmarks/profile_dense.py [--models tv:deeplabv3_mobilenet_v3_large,...]
        [--alpha 0.5] [--policy configs/depthwise-plain.yaml] [--forwards 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import octswap
from octswap.inference import InferenceOptions, optimize_for_inference
from octswap.latency import timing_input

from bench_dense_latency import build

#: Op family by aten op name (the profiler's key); anything else is "other".
FAMILIES = {
    "mkldnn::_convolution_pointwise": "convolution",  # packed weights (optimize_for_inference's prepack)
    "mkldnn::_convolution_pointwise_": "convolution",  # the same, summing into its output (fused adds)
    "aten::mkldnn_convolution": "convolution",
    "aten::_convolution": "convolution",
    "aten::convolution": "convolution",
    "aten::conv2d": "convolution",
    "aten::thnn_conv2d": "convolution",
    "aten::_slow_conv2d_forward": "convolution",
    "aten::avg_pool2d": "average pooling",
    "aten::upsample_nearest2d": "nearest upsampling",
    "aten::_upsample_nearest_exact2d": "nearest upsampling",
}
#: Ops whose calls are counted for their family (one per conv: the outermost op).
COUNTED = {"aten::conv2d", "mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "aten::avg_pool2d",
           "aten::upsample_nearest2d", "aten::_upsample_nearest_exact2d"}


def profile_model(model: torch.nn.Module, x: torch.Tensor, *, forwards: int, warmup: int) -> dict[str, list[float]]:
    """``{family: [ms per forward, calls per forward]}`` and ``"all"``."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(forwards):
                model(x)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in prof.key_averages():
        family = FAMILIES.get(event.key, "other")
        totals[family][0] += event.self_cpu_time_total / 1e3 / forwards
        totals["all"][0] += event.self_cpu_time_total / 1e3 / forwards
        if event.key in COUNTED:
            totals[family][1] += event.count / forwards
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tv:deeplabv3_mobilenet_v3_large")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--policy", default=None, help="a policy YAML (its alpha replaced by --alpha)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forwards", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, alpha {args.alpha}, "
          f"batch {args.batch}, {args.threads} threads, {args.forwards} forwards after {args.warmup}; ms per "
          f"forward (calls per forward)")  # fmt: skip
    families = ("convolution", "average pooling", "nearest upsampling", "other", "all")
    print("| model | model as | " + " | ".join(families) + " |\n|---|---|" + "---|" * len(families), flush=True)
    policy = octswap.load_policy(args.policy) if args.policy else None
    for spec in args.models.split(","):
        model, shape = build(spec)
        converted, _ = octswap.convert(model, policy, alpha=args.alpha, input_shape=shape)
        x = timing_input(args.batch, shape).contiguous(memory_format=torch.channels_last)
        for label, net in (("original", model), ("converted", converted)):
            prepared = optimize_for_inference(copy.deepcopy(net), InferenceOptions(), inplace=True)
            totals = profile_model(prepared, x, forwards=args.forwards, warmup=args.warmup)
            cells = []
            for family in families:
                ms, calls = totals.get(family, [0.0, 0.0])
                cells.append(f"{ms:.1f}" + (f" ({calls:.0f})" if family not in ("other", "all") else ""))
            print(f"| {spec} | {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
