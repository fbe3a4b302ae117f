"""Benchmark: segmentation and detection models converted in auto mode -- regions, FLOPs, latency.

For each model (segmentation_models_pytorch architectures with a resnet34 and a
mobilenet_v2 encoder at 256x256; every torchvision segmentation model at 256x256 and every
detection model built with ``min_size=max_size=320``, so the network runs at 320x320 --
SSDs at their own 300 or 320; two-stage detectors with NMS off and every score kept, so both
models run their heads on the same number of proposals and detections, see FIXED_WORKLOAD;
random weights seeded alike in every process),
converted at --alpha (default 0.5) with the default policy (or --policy's rules):

- mode and graph-mode regions (auto: the whole model, else its parts that trace);
- convs converted of all convs;
- FLOPs ratio (fvcore, whole model; ``-`` where fvcore cannot trace the model);
- share of the converted convs' FLOPs inside graph-mode regions with pairs flowing in and out
  (the rest is layer mode: convs outside every region, and heavy convs alone in their graph,
  converted in layer form), FLOPs per conv from fvcore on the original;
- latency ratio converted / original (``octswap.measure_latency``: both prepared alike,
  BatchNorm folded, channels-last, weights packed; --batch 1, --threads 2, median of
  interleaved rounds), and the same for the model converted in layer mode (what auto mode
  fell back to before regions), each the median over --processes fresh processes.

Usage:
    .venv/bin/python benchmarks/bench_dense_latency.py [--models smp:FPN:mobilenet_v2,...]
        [--alpha 0.5] [--policy configs/depthwise-plain.yaml] [--processes 3] [--rounds 7] [--threads 2]
        [--batch 1] [--aa]

``--aa`` times each original against an identical copy instead (A/A): the spread a ratio shows on this
machine when nothing differs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

import torch

import octswap
from octswap.flops import count_cost
from octswap.latency import measure_latency, timing_input
from octswap.rewrite.graph.planning import is_alone
from octswap.rewrite.regions.rewriter import LAYER_MODE

SMP_ARCHS = ("Unet", "FPN", "DeepLabV3Plus", "UnetPlusPlus", "PSPNet", "Linknet")
SMP = [f"smp:{arch}:{encoder}" for arch in SMP_ARCHS for encoder in ("resnet34", "mobilenet_v2")]


# Two-stage detectors run their box (mask, keypoint) heads once per proposal (detection), and how
# many survive NMS depends on the weights: with random weights, a converted model kept 4% fewer
# proposals than its original in one process and far fewer in another, which made the heads' time
# -- most of the whole -- differ for reasons that are not the convs (a 0.47 "latency ratio" for a
# FLOPs ratio of 0.80). With NMS off and every score kept, both models run their heads on the same
# counts: rpn_post_nms_top_n_test (1000) proposals and box_detections_per_img (100) detections.
TWO_STAGE = ("fasterrcnn", "maskrcnn", "keypointrcnn")
FIXED_WORKLOAD = {"rpn_nms_thresh": 1.0, "box_score_thresh": 0.0, "box_nms_thresh": 1.0}


def _torchvision() -> list[str]:
    import torchvision

    names = [*torchvision.models.list_models(module=torchvision.models.segmentation),
             *torchvision.models.list_models(module=torchvision.models.detection)]  # fmt: skip
    return [f"tv:{name}" for name in names]


def build(spec: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """``smp:ARCH:ENCODER`` or ``tv:NAME``: the model (random weights, eval) and its input shape."""
    kind, _, rest = spec.partition(":")
    if kind == "smp":
        import segmentation_models_pytorch as smp

        arch, _, encoder = rest.partition(":")
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None).eval(), (3, 256, 256)
    import torchvision

    builder = torchvision.models.get_model_builder(rest)
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
    torch.manual_seed(0)  # the same random weights in every process
    if rest in torchvision.models.list_models(module=torchvision.models.detection):
        if not rest.startswith("ssd"):  # SSDs resize to their own 300 or 320
            kwargs.update(min_size=320, max_size=320)
        if rest.startswith(TWO_STAGE):
            kwargs.update(FIXED_WORKLOAD)
        return builder(**kwargs).eval(), (3, 320, 320)
    return builder(**kwargs).eval(), (3, 256, 256)


def _flops(model: torch.nn.Module, x: torch.Tensor) -> Any:
    try:
        return count_cost(model, x)
    except Exception:  # noqa: BLE001 - fvcore's jit trace cannot follow every detector
        return None


def measure(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    model, shape = build(spec)
    x = timing_input(1, shape)  # the image the models are timed on: FLOPs of the same work
    policy = octswap.load_policy(args.policy) if args.policy else None
    converted, plan = octswap.convert(model, policy, alpha=args.alpha, input_shape=shape)
    layered, _ = octswap.convert(model, policy, alpha=args.alpha, input_shape=shape, mode="layer")
    base, cost = _flops(model, x), _flops(converted, x)
    octave = plan.octave_layers
    # Pairs flow into and out of these: not the convs outside every region (layer mode) nor those
    # alone in their graph, which are split and merged around (layer form).
    in_graph = [d for d in octave if not d.reason.startswith(LAYER_MODE) and not is_alone(d)]
    share = None
    if base is not None:
        total = sum(base.by_module.get(d.name, 0) for d in octave)
        share = sum(base.by_module.get(d.name, 0) for d in in_graph) / total if total else None
    ratios = {}
    for label, net in (("auto", converted), ("layer", layered)):
        (result,) = measure_latency(model, net, shape, batches=(args.batch,), threads=args.threads,
                                    rounds=args.rounds, memory=False)  # fmt: skip
        ratios[label] = result.ratio
        ratios[f"{label}_ms"] = result.converted.median * 1e3
        ratios["original_ms"] = result.original.median * 1e3
    return {
        "model": spec, "mode": plan.mode, "regions": len(plan.regions) if plan.mode == "regions" else 1,
        "converted": len(octave), "convs": len(plan.layers),
        "flops": cost.flops / base.flops if base is not None and cost is not None else None,
        "share": share, **ratios,
    }  # fmt: skip


def measure_aa(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """A/A: the original timed against an identical copy of itself, as ``measure`` times a pair --
    the spread a latency ratio shows when nothing differs."""
    model, shape = build(spec)
    (result,) = measure_latency(model, copy.deepcopy(model), shape, batches=(args.batch,), threads=args.threads,
                                rounds=args.rounds, memory=False)  # fmt: skip
    return {"model": spec, "aa": result.ratio, "original_ms": result.original.median * 1e3}


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated (default: every smp and torchvision one)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--policy", default=None, help="a policy YAML (its alpha replaced by --alpha)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--aa", action="store_true",
                        help="A/A: time each original against a copy of itself (the ratios' spread with nothing changed)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.models = args.models or ",".join(SMP + _torchvision())
    if args.worker:
        torch.set_num_threads(args.threads)
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps((measure_aa if args.aa else measure)(args.models, args)), flush=True)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, alpha {args.alpha}, "
          f"batch {args.batch}, {args.threads} threads, median of {args.rounds} interleaved rounds, "
          f"median over {args.processes} process(es)")  # fmt: skip
    print("| model | mode | regions | convs converted | FLOPs ratio | share in graph regions | latency ratio | "
          "layer mode latency ratio | original ms |\n|---|---|---|---|---|---|---|---|---|", flush=True)  # fmt: skip
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**30), MALLOC_TRIM_THRESHOLD_=str(2**30))
    for spec in args.models.split(","):
        argv = ["--models", spec, "--alpha", str(args.alpha), "--batch", str(args.batch), "--threads",
                str(args.threads), "--rounds", str(args.rounds), "--worker"]  # fmt: skip
        argv += ["--policy", args.policy] if args.policy else []
        argv += ["--aa"] if args.aa else []
        runs = []
        for _ in range(args.processes):
            done = subprocess.run([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True, env=env)
            if done.returncode == 0:
                runs.append(json.loads(done.stdout.splitlines()[-1]))
        if not runs:
            print(f"| {spec} | failed (exit {done.returncode}) | | | | | | | |", flush=True)
            continue
        if args.aa:
            each = ", ".join(f"{run['aa']:.3f}" for run in runs)
            print(f"| {spec} | A/A: original vs its copy | ratio per process: {each} | median "
                  f"{statistics.median(run['aa'] for run in runs):.3f} | original "
                  f"{statistics.median(x['original_ms'] for x in runs):.1f} ms |", flush=True)  # fmt: skip
            continue
        r = runs[0]
        auto = statistics.median(run["auto"] for run in runs)
        layer = statistics.median(run["layer"] for run in runs)
        print(f"| {spec} | {r['mode']} | {r['regions']} | {r['converted']}/{r['convs']} | {_cell(r['flops'], '.2f')} | "
              f"{_cell(r['share'], '.0%')} | {auto:.2f} ({min(x['auto'] for x in runs):.2f}–"
              f"{max(x['auto'] for x in runs):.2f}) | {layer:.2f} | "
              f"{statistics.median(x['original_ms'] for x in runs):.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
