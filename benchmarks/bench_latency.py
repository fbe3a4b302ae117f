"""Benchmark: FLOPs ratio and CPU latency ratio of converted vs original models, side by side.

Models resnet18, resnet50, resnext50_32x4d (configs/resnet.yaml), mobilenet_v2
(configs/mobilenet_v2.yaml; its own alpha is replaced by the sweep's) and densenet121
(default policy), at alpha 0.125 / 0.25 / 0.5, graph mode. Latency comes from
`octswap.latency.measure_latency`: both models in one process, rounds alternating,
median over rounds.

Usage:
    .venv/bin/python benchmarks/bench_latency.py [--batch 8] [--threads 2] [--rounds 5] [--nchw]
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

import octswap
from octswap.flops import count_cost
from octswap.latency import measure_latency
from octswap.plan import example_input

MODELS = {
    "resnet18": "configs/resnet.yaml",
    "resnet50": "configs/resnet.yaml",
    "resnext50_32x4d": "configs/resnet.yaml",
    "mobilenet_v2": "configs/mobilenet_v2.yaml",
    "densenet121": None,
}
ALPHAS = (0.125, 0.25, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nchw", action="store_true", help="NCHW instead of channels-last")
    args = parser.parse_args()
    layout = "NCHW" if args.nchw else "channels-last"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, {layout}, median of {args.rounds} interleaved rounds")  # fmt: skip
    print("| model | alpha | FLOPs ratio | latency ratio | original ms | converted ms |")
    print("|---|---|---|---|---|---|")
    shape = (3, 224, 224)
    x = example_input(shape)
    for name, policy_path in MODELS.items():
        model, _ = octswap.load_model(name)
        base = count_cost(model, x).flops
        policy = octswap.load_policy(policy_path) if policy_path else octswap.Policy()
        for alpha in ALPHAS:
            converted, _ = octswap.convert(model, policy, alpha=alpha, input_shape=shape)
            flops = count_cost(converted, x).flops / base
            (result,) = measure_latency(model, converted, shape, batches=(args.batch,), threads=args.threads,
                                        channels_last=not args.nchw, rounds=args.rounds)  # fmt: skip
            print(f"| {name} | {alpha} | {flops:.2f} | {result.ratio:.2f} | {result.original.median * 1e3:.1f} | "
                  f"{result.converted.median * 1e3:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
