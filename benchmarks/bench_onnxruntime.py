"""Benchmark: latency ratio of converted vs original models under ONNX Runtime, side by side.

Models resnet50 and resnet18 (configs/resnet.yaml) and mobilenet_v2
(configs/mobilenet_v2.yaml), at alpha 0.125 / 0.25 / 0.5 (the policy's alpha replaced),
graph mode, random weights, 224x224, with each split as the policy gives it (channel
multiple 1: floor(alpha * c)) and rounded to multiples of 16 channels (channel multiple 16,
`--channel-multiple 16`; measured only where that changes the plan). Each pair comes from
`octswap.latency.measure_onnxruntime_latency`: both models exported alike by
`octswap.export.export_model` (BatchNorm folded, dynamic batch, height and width fixed
at 224x224 unless --dynamic, each file validated against PyTorch), run by ONNX Runtime
sessions with the same options (all graph optimizations, sequential, --threads intra-op
threads), in alternating rounds, median over rounds. Each model runs in --processes fresh
processes (default 3); the table shows the median ratio over processes and their range.

--forms compares, for one model and alpha, the export forms of the converted model with
each other and with the original, all in one process and in interleaved rounds (sessions
as above, or with --plain-sessions as a user who just opens the file gets them): "plain"
is what `torch.onnx.export(..., dynamo=True)` of the converted model gives without
octswap's export (exact-size nearest resizes, no rewrites; height and width fixed),
"default" is `octswap export` (height and width fixed at the input size, dynamic batch)
and "dynamic" is `octswap export --dynamic`.

--sessions times the default files of the original and the converted model (one model and
alpha) in plain sessions (`onnxruntime.InferenceSession(path)`, --threads intra-op threads)
and in plain sessions that also fix the batch (`add_free_dimension_override_by_name("batch",
N)`), all four in one process and in interleaved rounds: what a dynamic batch costs each model.

--profile runs ONNX Runtime's profiler on both files of the first model, alpha, channel
multiple and batch given, and prints the kernel time per operator type (median of 5 runs
after a warm-up), and the conv MACs per second.

Usage:
    .venv/bin/python benchmarks/bench_onnxruntime.py [--threads 2] [--batches 1,8]
        [--rounds 7] [--processes 3] [--dynamic] [--models resnet50,mobilenet_v2]
        [--alphas 0.125,0.25,0.5] [--channel-multiples 1,16]
    .venv/bin/python benchmarks/bench_onnxruntime.py --forms [--models resnet50 --alphas 0.5] [--plain-sessions]
    .venv/bin/python benchmarks/bench_onnxruntime.py --sessions [--models resnet50 --alphas 0.5 --batches 8]
    .venv/bin/python benchmarks/bench_onnxruntime.py --profile --models resnet50 --alphas 0.5 --batches 8
        [--plain-sessions]
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
from octswap.latency import measure_onnxruntime_latency
from octswap.plan import example_input

MODELS = {
    "resnet50": "configs/resnet.yaml",
    "resnet18": "configs/resnet.yaml",
    "mobilenet_v2": "configs/mobilenet_v2.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per model (median ratio)")
    parser.add_argument("--dynamic", action="store_true", help="export with dynamic height and width")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--alphas", default="0.125,0.25,0.5")
    parser.add_argument("--channel-multiples", default="1,16", help="policy channel_multiple values to compare")
    parser.add_argument("--min-round-time", type=float, default=0.5, help="seconds per round and model")
    parser.add_argument("--forms", action="store_true", help="compare the export forms (see above)")
    parser.add_argument("--sessions", action="store_true", help="plain sessions with and without the batch fixed")
    parser.add_argument("--profile", action="store_true", help="time per operator type (see above)")
    parser.add_argument("--plain-sessions", action="store_true",
                        help="with --forms or --profile: open each file as a user would, onnxruntime.InferenceSession(path) with "
                        "--threads intra-op threads and nothing else (no dimensions fixed in the session)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.forms:
        compare_forms(args)
        return
    if args.sessions:
        compare_sessions(args)
        return
    if args.profile:
        profile(args)
        return
    if args.processes < 1 or args.rounds < 1:
        parser.error("--processes and --rounds must be at least 1")
    if args.worker:
        run_model(args)
        return
    import onnxruntime

    shapes = "dynamic height and width" if args.dynamic else "224x224 fixed"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider), {args.threads} threads, exported with "
          f"BatchNorm folded, dynamic batch, {shapes}; median of {args.rounds} interleaved rounds of "
          f">= {args.min_round_time} s, {args.processes} process(es) per model")  # fmt: skip
    print("| model | alpha | channel multiple | batch | FLOPs ratio | ORT latency ratio (median) | "
          "range over processes | original ms | converted ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.models.split(","):
        if name not in MODELS:
            sys.exit(f"bench_onnxruntime: unknown model {name!r} (known: {', '.join(MODELS)})")
        argv = ["--threads", str(args.threads), "--batches", args.batches, "--rounds", str(args.rounds),
                "--min-round-time", str(args.min_round_time), "--models", name, "--alphas", args.alphas,
                "--channel-multiples", args.channel_multiples, "--worker"] + ["--dynamic"] * args.dynamic  # fmt: skip
        rows: dict[tuple[float, str, int], list[dict]] = {}
        for _ in range(args.processes):
            done = subprocess.run([sys.executable, __file__, *argv], check=True, stdout=subprocess.PIPE, text=True)
            for line in done.stdout.splitlines():
                row = json.loads(line)
                rows.setdefault((row["alpha"], row["multiple"], row["batch"]), []).append(row)
        for (alpha, multiple, batch), runs in sorted(rows.items()):
            ratios = [r["ratio"] for r in runs]
            print(f"| {name} | {alpha} | {multiple} | {batch} | {runs[0]['flops']:.2f} | {statistics.median(ratios):.2f} | "
                  f"{min(ratios):.2f}–{max(ratios):.2f} | {statistics.median(r['original_ms'] for r in runs):.1f} | "
                  f"{statistics.median(r['converted_ms'] for r in runs):.1f} |", flush=True)  # fmt: skip


def run_model(args: argparse.Namespace) -> None:
    shape = (3, 224, 224)
    x = example_input(shape)
    batches = tuple(int(b) for b in args.batches.split(","))
    (name,) = args.models.split(",")
    model, _ = octswap.load_model(name)
    base = count_cost(model, x).flops
    policy = octswap.load_policy(MODELS[name])
    multiples = [int(m) for m in args.channel_multiples.split(",")]
    for alpha in (float(a) for a in args.alphas.split(",")):
        splits: dict[tuple[tuple[int, int], ...], list[int]] = {}
        for multiple in multiples:
            plan = octswap.make_plan(model, policy.with_alpha(alpha).with_channel_multiple(multiple), input_shape=shape)
            splits.setdefault(tuple((d.in_low, d.out_low) for d in plan.octave_layers), []).append(multiple)
        for same in splits.values():  # one measurement per distinct set of splits
            policy_m = policy.with_alpha(alpha).with_channel_multiple(same[0])
            converted, _ = octswap.convert(model, policy_m, input_shape=shape)
            flops = count_cost(converted, x).flops / base
            results = measure_onnxruntime_latency(model, converted, shape, batches=batches, threads=args.threads,
                                                  dynamic=args.dynamic, rounds=args.rounds,
                                                  min_round_time=args.min_round_time)  # fmt: skip
            for result in results:
                print(json.dumps({"alpha": alpha, "multiple": " = ".join(map(str, same)), "batch": result.batch,
                                  "flops": flops, "ratio": result.ratio, "original_ms": result.original.median * 1e3,
                                  "converted_ms": result.converted.median * 1e3}), flush=True)  # fmt: skip


def _first_pair(args: argparse.Namespace) -> tuple[str, float, tuple[int, int, int], torch.nn.Module,
                                                    torch.nn.Module]:
    """The first --models model and the last --alphas alpha: name, alpha, input shape, original, converted."""
    shape = (3, 224, 224)
    name, alpha = args.models.split(",")[0], float(args.alphas.split(",")[-1])
    model, _ = octswap.load_model(name)
    converted, _ = octswap.convert(model, octswap.load_policy(MODELS[name]), alpha=alpha, input_shape=shape)
    return name, alpha, shape, model, converted


def compare_forms(args: argparse.Namespace) -> None:
    import tempfile
    from pathlib import Path

    import onnxruntime
    import torch.nn.functional as F

    import octswap.layers.conv
    import octswap.layers.fused
    import octswap.layers.resample
    from octswap.export import export_model, reference_model
    from octswap.export.onnx_file import onnxruntime_session
    from octswap.latency import session_forward, side_by_side

    name, alpha, shape, model, converted = _first_pair(args)
    with tempfile.TemporaryDirectory() as folder:
        paths = {"original": Path(folder) / "original.onnx"}
        export_model(model, paths["original"], input_shape=shape, dynamic=False)
        # "plain": the exporter on the reference model, resizes to exact sizes as before octswap's export form.
        exact = octswap.layers.resample.upsample
        callers = (octswap.layers.conv, octswap.layers.fused, octswap.layers.resample)  # modules calling upsample

        def exact_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return F.interpolate(x, size=size, mode="nearest")

        for module in callers:
            module.upsample = exact_size  # type: ignore[attr-defined]
        try:
            paths["plain"] = Path(folder) / "plain.onnx"
            torch.onnx.export(reference_model(converted), (torch.randn(2, *shape),), str(paths["plain"]), dynamo=True,
                              dynamic_shapes=({0: "batch"},))  # fmt: skip
        finally:
            for module in callers:
                module.upsample = exact  # type: ignore[attr-defined]
        paths["default"] = Path(folder) / "default.onnx"
        export_model(converted, paths["default"], input_shape=shape)
        paths["dynamic"] = Path(folder) / "dynamic.onnx"
        export_model(converted, paths["dynamic"], input_shape=shape, dynamic=True)
        sessions_kind = "plain sessions" if args.plain_sessions else "sessions with batch, height and width fixed"
        print(f"{name} alpha {alpha}: latency / original under ONNX Runtime {onnxruntime.__version__}, "
              f"{args.threads} threads, {sessions_kind}, median of {args.rounds} interleaved rounds")  # fmt: skip
        print("| batch | " + " | ".join(paths) + " |\n|---|" + "---|" * len(paths))
        for batch in (int(b) for b in args.batches.split(",")):
            fixed = {"batch": batch, "height": shape[1], "width": shape[2]}
            if args.plain_sessions:
                sessions = [plain_session(p, args.threads) for p in paths.values()]
            else:
                sessions = [onnxruntime_session(p, threads=args.threads, fixed_dims=fixed) for p in paths.values()]
            x = torch.randn(batch, *shape).numpy()
            timings = side_by_side([session_forward(s, x) for s in sessions], args.threads, rounds=args.rounds,
                                    min_round_time=args.min_round_time)  # fmt: skip
            base = timings[0].median
            print(f"| {batch} | " + " | ".join(f"{t.median * 1e3:.1f} ms ({t.median / base:.2f})" for t in timings)
                  + " |", flush=True)  # fmt: skip


def plain_session(path: object, threads: int, *, fixed: dict[str, int] | None = None,
                  profile: str | None = None) -> object:
    """A session as a user opens the file: only the intra-op threads set (and what is asked here)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    for name, value in (fixed or {}).items():
        options.add_free_dimension_override_by_name(name, value)
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_sessions(args: argparse.Namespace) -> None:
    import tempfile
    from pathlib import Path

    from octswap.export import export_model
    from octswap.latency import session_forward, side_by_side

    name, alpha, shape, model, converted = _first_pair(args)
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / "original.onnx", Path(folder) / "converted.onnx"]
        for net, path in zip((model, converted), paths):
            export_model(net, path, input_shape=shape)  # the default file: dynamic batch, 224x224
        print(f"{name} alpha {alpha}, default export: latency under ONNX Runtime, {args.threads} threads, "
              f"median of {args.rounds} interleaved rounds")
        print("| batch | session | original | converted | ratio |\n|---|---|---|---|---|")
        for batch in (int(b) for b in args.batches.split(",")):
            kinds = {"plain": None, "plain, batch fixed": {"batch": batch}}
            sessions = [plain_session(p, args.threads, fixed=fixed) for fixed in kinds.values() for p in paths]
            x = torch.randn(batch, *shape).numpy()
            timings = side_by_side([session_forward(s, x) for s in sessions], args.threads, rounds=args.rounds,
                                    min_round_time=args.min_round_time)
            for index, kind in enumerate(kinds):
                original, ours = (t.median for t in timings[2 * index:2 * index + 2])
                print(f"| {batch} | {kind} | {original * 1e3:.1f} ms | {ours * 1e3:.1f} ms | {ours / original:.2f} |",
                      flush=True)


def profile(args: argparse.Namespace) -> None:
    import tempfile
    from collections import defaultdict
    from pathlib import Path

    from octswap.export import export_model
    from octswap.export.onnx_file import onnxruntime_session

    shape = (3, 224, 224)
    name, alpha = args.models.split(",")[0], float(args.alphas.split(",")[0])
    multiple, batch = int(args.channel_multiples.split(",")[0]), int(args.batches.split(",")[0])
    model, _ = octswap.load_model(name)
    policy = octswap.load_policy(MODELS[name]).with_alpha(alpha).with_channel_multiple(multiple)
    converted, _ = octswap.convert(model, policy, input_shape=shape)
    x = torch.randn(batch, *shape).numpy()
    print(f"{name} alpha {alpha} channel multiple {multiple} batch {batch}, {args.threads} threads: ONNX Runtime "
          "profiler, kernel time per run (median of 5)")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        for label, net in (("original", model), ("converted", converted)):
            path = Path(folder) / f"{label}.onnx"
            export_model(net, path, input_shape=shape, dynamic=False)
            if args.plain_sessions:  # the batch stays dynamic, as a user who just opens the file gets it
                session = plain_session(path, args.threads, profile=str(Path(folder) / label))
            else:
                session = onnxruntime_session(path, threads=args.threads, fixed_dims={"batch": batch},
                                              profile=Path(folder) / label)  # fmt: skip
            feed = {session.get_inputs()[0].name: x}
            for _ in range(6):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
            per_run: dict[str, list[float]] = defaultdict(lambda: [0.0] * 6)
            counts: dict[str, int] = defaultdict(int)
            macs = [0.0] * 6
            seen: dict[str, int] = defaultdict(int)
            for event in events:
                if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                    continue
                run = seen[event["name"]]
                seen[event["name"]] += 1
                op = event["args"]["op_name"]
                per_run[op][run] += event["dur"] / 1e3
                counts[op] += run == 0
                if op == "Conv":  # weights x output positions (groups folded into the weight shape)
                    out = event["args"]["output_type_shape"][0]["float"]
                    macs[run] += int(event["args"]["parameter_size"]) / 4 * out[0] * out[2] * out[3]
            runs = range(1, 6)  # run 0 is the warm-up
            total = statistics.median(sum(t[r] for t in per_run.values()) for r in runs)
            print(f"{label}: {total:.1f} ms of kernel time; convs at "
                  f"{statistics.median(macs[r] / per_run['Conv'][r] / 1e6 for r in runs):.0f} GMAC/s")  # fmt: skip
            for op, times in sorted(per_run.items(), key=lambda kv: -statistics.median(kv[1][r] for r in runs)):
                print(f"  {op:16s} {statistics.median(times[r] for r in runs):8.2f} ms  x{counts[op]}")


if __name__ == "__main__":
    main()
