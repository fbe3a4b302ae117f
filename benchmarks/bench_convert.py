"""Benchmark: `octswap convert resnet50 --alpha 0.25` end to end, and what the result costs.

Goal (issue 2): the command finishes in under 15 s on the 2-core development machine.

Measures, each as the median of several runs:
  1. wall time of the whole CLI command in a fresh process (imports included);
  2. the library steps in one process (load, convert incl. probe + check, report, save);
  3. CPU latency of the original vs the converted model in graph mode (the default) and
     in layer mode, interleaved side by side in one process (eval mode, inference_mode,
     NCHW, batch 1 and 8).

Usage:
    .venv/bin/python benchmarks/bench_convert.py [--runs 5] [--model resnet50] [--alpha 0.25]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import octswap
from timing import interleaved_medians


def cli_runs(model: str, alpha: float, runs: int) -> list[float]:
    exe = Path(sys.executable).with_name("octswap")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(
                [str(exe), "convert", model, "--alpha", str(alpha), "--no-layers", "-o", f"{tmp}/m.pt", "--force"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            times.append(time.perf_counter() - start)
    return times


def library_steps(model_name: str, alpha: float, runs: int) -> dict[str, list[float]]:
    steps: dict[str, list[float]] = {"load": [], "convert": [], "report": [], "save": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            t0 = time.perf_counter()
            model, source = octswap.load_model(model_name)
            t1 = time.perf_counter()
            converted, plan = octswap.convert(model, alpha=alpha)
            t2 = time.perf_counter()
            report = octswap.report(model, converted, plan, model_name=model_name)
            t3 = time.perf_counter()
            octswap.save(f"{tmp}/m.pt", converted, plan, source=source, report=report.summary(), force=True)
            t4 = time.perf_counter()
            for key, value in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                steps[key].append(value)
    return steps


def latency(model_name: str, alpha: float, batch: int, runs: int) -> list[float]:
    """Median seconds per forward of (original, graph mode, layer mode), measured round-robin."""
    model, _ = octswap.load_model(model_name)
    nets = [model] + [octswap.convert(model, alpha=alpha, mode=mode)[0] for mode in ("graph", "layer")]
    return interleaved_medians(nets, torch.randn(batch, 3, 224, 224), runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads; median of {args.runs} runs")  # fmt: skip
    cmd = f"octswap convert {args.model} --alpha {args.alpha}"
    if shutil.which("octswap") or Path(sys.executable).with_name("octswap").exists():
        cli = cli_runs(args.model, args.alpha, args.runs)
        print(f"`{cmd}` wall time: median {statistics.median(cli):.2f} s "
              f"(min {min(cli):.2f}, max {max(cli):.2f}); goal < 15 s")  # fmt: skip
    steps = library_steps(args.model, args.alpha, args.runs)
    print("library steps (median s): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in steps.items()))

    model, _ = octswap.load_model(args.model)
    converted, plan = octswap.convert(model, alpha=args.alpha)
    report = octswap.report(model, converted, plan, model_name=args.model)
    s = report.summary()
    print(f"FLOPs {s['flops_before'] / 1e9:.3f} G -> {s['flops_after'] / 1e9:.3f} G "
          f"({s['flops_after'] / s['flops_before']:.3f}x); conv+linear {s['core_flops_before'] / 1e9:.3f} G -> "
          f"{s['core_flops_after'] / 1e9:.3f} G; params {s['params_before']} -> {s['params_after']}")  # fmt: skip
    for batch in (1, 8):
        before, graph, layer = latency(args.model, args.alpha, batch, max(args.runs, 5))
        print(f"latency batch {batch} (NCHW): original {before * 1e3:.1f} ms, graph mode {graph * 1e3:.1f} ms "
              f"({graph / before:.2f}x), layer mode {layer * 1e3:.1f} ms ({layer / before:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
