"""Benchmark: graph-mode Oct-ResNet-50 against the paper's published figures.

`octswap convert resnet50 --alpha A --policy configs/resnet.yaml` for A in
{0.125, 0.25, 0.5, 0.75}: parameters, conv+linear GMACs (the convention of the
paper and of the public PyTorch port) and all counted GMACs, next to the paper's
Table 2 (3.6 / 3.1 / 2.4 / 1.9 G; the port reports 2.367 G at 0.5); activation
memory (peak alive, total written) vs the original; and CPU latency of the original
vs the graph-mode model, interleaved in one process, median of runs, NCHW and
channels-last, batch 1 and 8 (speed is issue 5's subject; shown for context).

Usage:
    .venv/bin/python benchmarks/bench_octresnet.py [--runs 7] [--threads 2] [--no-latency]
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

import octswap
from octswap.flops import count_cost
from octswap.memory import measure_activations
from timing import interleaved_medians

PAPER = {0.125: 3.6, 0.25: 3.1, 0.5: 2.4, 0.75: 1.9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads")

    model, _ = octswap.load_model("resnet50")
    policy = octswap.load_policy("configs/resnet.yaml")
    x = torch.randn(1, 3, 224, 224)
    base = count_cost(model, x)
    base_mem = measure_activations(model, x)
    print(f"resnet50: {base.params:,} params, conv+linear {base.core_flops / 1e9:.3f} G, all {base.flops / 1e9:.3f} G, "
          f"peak activations {base_mem.peak / 2**20:.1f} MiB, written {base_mem.total / 2**20:.1f} MiB")  # fmt: skip
    print("| alpha | params | conv+linear GMACs | all counted GMACs | paper G | vs paper: conv+linear, all "
          "| peak act. | act. written |")
    print("|---|---|---|---|---|---|---|---|")
    converted = {}
    for alpha, paper in PAPER.items():
        oct_model, plan = octswap.convert(model, policy, alpha=alpha)
        converted[alpha] = oct_model
        cost = count_cost(oct_model, x)
        mem = measure_activations(oct_model, x)
        print(f"| {alpha} | {cost.params:,} | {cost.core_flops / 1e9:.3f} | {cost.flops / 1e9:.3f} | {paper} | "
              f"{(cost.core_flops / 1e9 - paper) / paper:+.1%}, {(cost.flops / 1e9 - paper) / paper:+.1%} | "
              f"{mem.peak / base_mem.peak:.2f}x | "
              f"{mem.total / base_mem.total:.2f}x |")  # fmt: skip
    if args.no_latency:
        return
    for channels_last in (False, True):
        for batch in (1, 8):
            xb = torch.randn(batch, 3, 224, 224)
            nets = [model, converted[0.25], converted[0.5]]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
                nets = [n.to(memory_format=torch.channels_last) for n in nets]
            base_t, t25, t50 = interleaved_medians(nets, xb, args.runs)
            layout = "channels-last" if channels_last else "NCHW"
            print(f"latency {layout} batch {batch}: original {base_t * 1e3:.1f} ms; "
                  f"graph a=0.25 {t25 * 1e3:.1f} ms ({t25 / base_t:.2f}x); a=0.5 {t50 * 1e3:.1f} ms ({t50 / base_t:.2f}x)")
    for net in (model, *converted.values()):
        net.to(memory_format=torch.contiguous_format)


if __name__ == "__main__":
    main()
