"""Benchmark: ``octswap tune`` on this machine -- how long it takes, and how its policies measure.

For each model spec (a torchvision classifier name at 224x224, or a dense spec of
``bench_dense_latency.py``: ``smp:FPN:mobilenet_v2``, ``tv:fasterrcnn_mobilenet_v3_large_fpn``),
optionally with a latency target (``resnet50=0.65``):

1. tune it in a fresh process (``octswap.tune``, latency objective, --batch, --threads; the
   measurements are cached under --cache-dir, so a rerun re-measures nothing: the tune
   time printed is that of the run that measured);
2. in each of --processes fresh processes, convert it with the tuned policy and with the
   default policy at --uniform-alpha (0.25: the default), and time both against the original
   side by side (``octswap.measure_latency``: prepared alike, BatchNorm folded,
   channels-last, packed weights; --rounds interleaved rounds of at least --round-time seconds;
   with ``--runtime onnxruntime`` the tune times ONNX Runtime sessions and the checks
   ``octswap.latency.measure_onnxruntime_latency``);
3. print one Markdown row: tune minutes, units, convs converted, FLOPs ratio, predicted and
   measured latency ratio (median over processes, range), the uniform default's ratio.

Usage:
    .venv/bin/python benchmarks/bench_tune.py [--models densenet121,mobilenet_v2,resnet50=0.65]
        [--batch 8] [--threads 2] [--processes 3] [--rounds 7] [--round-time 1] [--cache-dir /tmp/octswap-tune]
        [--runtime pytorch|onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_MODELS = "densenet121,mobilenet_v2,resnet50=0.65"


def build(spec: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    if spec.startswith(("smp:", "tv:")):
        from bench_dense_latency import build as build_dense

        return build_dense(spec)
    import torchvision

    return torchvision.models.get_model(spec, weights=None).eval(), (3, 224, 224)


def _paths(args: argparse.Namespace, spec: str) -> tuple[Path, Path]:
    stem = spec.replace(":", "-").replace("=", "-") + f"-b{args.batch}-t{args.threads}"
    stem += "-ort" if args.runtime == "onnxruntime" else ""
    folder = Path(args.cache_dir)
    return folder / f"{stem}.yaml", folder / f"{stem}.json"


def tune_worker(spec: str, target: float | None, args: argparse.Namespace) -> dict[str, Any]:
    import octswap
    from octswap.tuning import tune
    from octswap.tuning.policy_file import policy_yaml

    model, shape = build(spec)
    policy_file, cache = _paths(args, f"{spec}={target}" if target else spec)
    policy_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = tune(model, input_shape=shape, target_latency=target, batch=args.batch, threads=args.threads,
                  runtime=args.runtime, rounds=5, cache=cache, resume=True, model_key=spec)  # fmt: skip
    seconds = time.perf_counter() - start
    policy_file.write_text(policy_yaml(result, model=spec), encoding="utf-8")
    octswap.load_policy(policy_file)
    return {"seconds": seconds, "measurements": result.measurements, "reused": result.reused,
            "units": len(result.units), "tuned_units": sum(c.alpha > 0 for c in result.units),
            "converted": len(result.plan.octave_layers), "convs": len(result.plan.layers),
            "predicted": result.predicted_ratio, "measured_in_tune": result.measured_ratio,
            "flops": result.flops_ratio, "policy": str(policy_file), "notes": list(result.notes)}  # fmt: skip


def check_worker(spec: str, policy_file: str, args: argparse.Namespace) -> dict[str, Any]:
    import octswap

    model, shape = build(spec)
    out = {}
    uniform = octswap.Policy(alpha=args.uniform_alpha)
    for label, policy in (("tuned", octswap.load_policy(policy_file)), ("uniform", uniform)):
        converted, _ = octswap.convert(model, policy, input_shape=shape)
        if args.runtime == "onnxruntime":
            from octswap.latency import measure_onnxruntime_latency

            result = measure_onnxruntime_latency(model, converted, shape, batches=(args.batch,), threads=args.threads,
                                                 rounds=args.rounds, min_round_time=args.round_time)[0]  # fmt: skip
        else:
            result = octswap.measure_latency(model, converted, shape, batches=(args.batch,), threads=args.threads,
                                             rounds=args.rounds, min_round_time=args.round_time, memory=False)[0]  # fmt: skip
        out[label] = result.ratio
        out[f"{label}_original_ms"] = result.original.median * 1e3
    return out


def _run(argv: list[str]) -> dict[str, Any] | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**30), MALLOC_TRIM_THRESHOLD_=str(2**30))
    done = subprocess.run([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated specs, each optionally =TARGET")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-time", type=float, default=1.0, help="seconds per round of each check (at least)")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--cache-dir", default="/tmp/octswap-tune")
    parser.add_argument("--runtime", choices=("pytorch", "onnxruntime"), default="pytorch",
                        help="what to tune and time in (onnxruntime: exported files in ONNX Runtime sessions)")
    parser.add_argument("--uniform-alpha", type=float, default=0.25, help="the default policy's alpha to compare with")
    parser.add_argument("--worker", choices=("tune", "check"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--target", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        import logging

        logging.disable(logging.WARNING)
        if args.worker == "tune":
            print(json.dumps(tune_worker(args.spec, args.target, args)), flush=True)
        else:
            print(json.dumps(check_worker(args.spec, args.policy, args)), flush=True)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, batch {args.batch}, "
          f"{args.threads} threads, runtime {args.runtime}; latency ratios: median over {args.processes} processes (range), "
          f"{args.rounds} interleaved rounds each")  # fmt: skip
    print("| model | target | tune min | units tuned | convs converted | FLOPs ratio | predicted | measured | "
          f"uniform α={args.uniform_alpha:g} |\n|---|---|---|---|---|---|---|---|---|", flush=True)  # fmt: skip
    common = ["--batch", str(args.batch), "--threads", str(args.threads), "--rounds", str(args.rounds),
              "--round-time", str(args.round_time),
              "--cache-dir", args.cache_dir, "--uniform-alpha", str(args.uniform_alpha), "--runtime", args.runtime]  # fmt: skip
    for item in args.models.split(","):
        spec, _, target = item.partition("=")
        tuned = _run(["--worker", "tune", "--spec", spec, *(["--target", target] if target else []), *common])
        if tuned is None:
            print(f"| {spec} | {target or 'fastest'} | failed | | | | | | |", flush=True)
            continue
        checks = [c for c in (_run(["--worker", "check", "--spec", spec, "--policy", tuned["policy"], *common])
                              for _ in range(args.processes)) if c is not None]  # fmt: skip
        if not checks:
            print(f"| {spec} | {target or 'fastest'} | check failed | | | | | | |", flush=True)
            continue
        ratios = [c["tuned"] for c in checks]
        uniform = statistics.median(c["uniform"] for c in checks)
        print(f"| {spec} | {target or 'fastest'} | {tuned['seconds'] / 60:.1f} | {tuned['tuned_units']}/{tuned['units']} | "
              f"{tuned['converted']}/{tuned['convs']} | {tuned['flops']:.2f} | {tuned['predicted']:.3f} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) | {uniform:.2f} |", flush=True)
        for note in tuned["notes"]:
            print(f"  {spec}: {note}", flush=True)


if __name__ == "__main__":
    main()
