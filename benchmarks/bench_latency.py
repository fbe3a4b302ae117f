"""Benchmark: FLOPs ratio and CPU latency ratio of converted vs original models, side by side.

Models resnet18, resnet50, resnext50_32x4d (configs/resnet.yaml), mobilenet_v2
(configs/mobilenet_v2.yaml; its own alpha is replaced by the sweep's, and its own
alpha 0.375 is added) and densenet121 (default policy), at alpha 0.125 / 0.25 / 0.5,
graph mode. Latency comes from `octswap.latency.measure_latency`: both models in one
process, prepared alike (BatchNorm folded, channels-last, conv weights packed for oneDNN,
unless --no-fold / --nchw / --no-prepack),
rounds alternating, median over rounds. Each model runs in fresh processes, --processes
of them (default 3): a process's allocator and memory layout shift its timings by several
percent, so the table shows the median ratio over processes and their range.

glibc's allocator returns big freed blocks to the system (maps above 32 MiB, and the top of
the heap when trimmed), so a model whose activations are that big pays page faults and
zeroing on every forward, and which model pays depends on sizes and heap layout more than on
the model. Workers therefore run with MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set
high (what a long-running inference server gets from jemalloc or tcmalloc, as PyTorch's CPU
tuning guide recommends); --malloc default measures glibc as it comes.

Usage:
    .venv/bin/python benchmarks/bench_latency.py [--batch 8] [--threads 2] [--rounds 7]
        [--processes 3] [--malloc tuned|default] [--nchw] [--no-fold] [--no-prepack]
        [--reference-kernels] [--models resnet50,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

import torch

import octswap
from octswap.flops import count_cost
from octswap.inference import InferenceOptions
from octswap.latency import measure_latency
from octswap.layers import fused_kernels
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
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per model (median ratio)")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="glibc malloc thresholds of the worker processes (see above)")  # fmt: skip
    parser.add_argument("--nchw", action="store_true", help="NCHW instead of channels-last")
    parser.add_argument("--no-fold", action="store_true", help="keep BatchNorm (both models)")
    parser.add_argument("--no-prepack", action="store_true", help="plain conv weights, reordered per call (both models)")
    parser.add_argument("--reference-kernels", action="store_true", help="octave path sums without fused kernels")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--min-round-time", type=float, default=0.5, help="seconds per round and model")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes < 1 or args.rounds < 1:
        parser.error("--processes and --rounds must be at least 1")
    if args.worker:
        run_models(args)
        return
    layout = "NCHW" if args.nchw else "channels-last"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, {layout}, BatchNorm {'kept' if args.no_fold else 'folded'}, "
          f"weights {'plain' if args.no_prepack else 'packed'} (both models), "
          f"{'reference' if args.reference_kernels else 'fused'} octave kernels, "
          f"median of {args.rounds} interleaved rounds of >= {args.min_round_time} s, "
          f"{args.processes} process(es) per model, {args.malloc} malloc")  # fmt: skip
    print("| model | alpha | FLOPs ratio | latency ratio (median) | range over processes | original ms | "
          "converted ms | peak memory ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|", flush=True)
    env = dict(os.environ)
    if args.malloc == "tuned":
        env.update(MALLOC_MMAP_THRESHOLD_=str(2**30), MALLOC_TRIM_THRESHOLD_=str(2**30))
    for name in args.models.split(","):
        if name not in MODELS:
            sys.exit(f"bench_latency: unknown model {name!r} (known: {', '.join(MODELS)})")
        argv = ["--batch", str(args.batch), "--threads", str(args.threads), "--rounds", str(args.rounds),
                "--min-round-time", str(args.min_round_time), "--models", name, "--worker"]  # fmt: skip
        argv += [flag for flag, on in (("--nchw", args.nchw), ("--no-fold", args.no_fold),
                                       ("--no-prepack", args.no_prepack),
                                       ("--reference-kernels", args.reference_kernels)) if on]  # fmt: skip
        rows: dict[float, list[dict]] = {}
        for _ in range(args.processes):
            done = subprocess.run([sys.executable, __file__, *argv], check=True, stdout=subprocess.PIPE, text=True,
                                  env=env)  # fmt: skip
            for line in done.stdout.splitlines():
                row = json.loads(line)
                rows.setdefault(row["alpha"], []).append(row)
        for alpha, runs in rows.items():
            ratios = [r["ratio"] for r in runs]
            print(f"| {name} | {alpha} | {runs[0]['flops']:.2f} | {statistics.median(ratios):.2f} | "
                  f"{min(ratios):.2f}–{max(ratios):.2f} | {statistics.median(r['original_ms'] for r in runs):.1f} | "
                  f"{statistics.median(r['converted_ms'] for r in runs):.1f} | {runs[0]['memory_ratio']:.2f} |",
                  flush=True)  # fmt: skip


def run_models(args: argparse.Namespace) -> None:
    options = InferenceOptions(fold_bn=not args.no_fold, channels_last=not args.nchw, prepack=not args.no_prepack)
    shape = (3, 224, 224)
    x = example_input(shape)
    for name in args.models.split(","):
        policy_path = MODELS[name]
        model, _ = octswap.load_model(name)
        base = count_cost(model, x).flops
        policy = octswap.load_policy(policy_path) if policy_path else octswap.Policy()
        alphas = ALPHAS + ((policy.alpha,) if policy.alpha not in ALPHAS else ())
        # The first seconds of a process time slower (thread pools, allocator, caches):
        # one discarded measurement, so the first alpha is not penalised.
        measure_latency(model, model, shape, batches=(args.batch,), threads=args.threads, options=options,
                        rounds=1, min_round_time=args.min_round_time, memory=False)  # fmt: skip
        for alpha in alphas:
            converted, _ = octswap.convert(model, policy, alpha=alpha, input_shape=shape)
            flops = count_cost(converted, x).flops / base
            with fused_kernels(not args.reference_kernels):
                (result,) = measure_latency(model, converted, shape, batches=(args.batch,), threads=args.threads,
                                            options=options, rounds=args.rounds,
                                            min_round_time=args.min_round_time)  # fmt: skip
            print(json.dumps({"alpha": alpha, "flops": flops, "ratio": result.ratio,
                              "original_ms": result.original.median * 1e3,
                              "converted_ms": result.converted.median * 1e3,
                              "memory_ratio": result.memory_ratio}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
