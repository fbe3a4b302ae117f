"""Benchmark: ``octswap tune`` with data -- do tuned policies keep more agreement than uniform
alpha at the same measured latency, and does the tuned model heal back?

On real handwritten digits (scikit-learn's ``load_digits``, upscaled to 3x128x128, the
digits' own 30% held-out split as validation):

1. train torchvision's resnet18 (ImageNet layout, 10 classes; AdamW, one-cycle, fixed seed);
2. every uniform alpha of the tuner's grid (.125 ... .75): convert, re-estimate BatchNorm on
   --calibrate-bn training batches, measure agreement with the original on the validation
   split, and time it against the original side by side (``octswap.measure_latency``,
   batch --batch, --threads threads, prepared alike);
3. ``octswap.tune`` with the training images as data at each of --targets (latency ratios),
   the measurements shared through one cache file (the units' drops are measured once);
   each tuned policy then re-measured here exactly as the uniform ones (agreement after
   BatchNorm re-estimation; latency side by side);
4. the tuned model at the middle target healed by distillation without labels
   (``octswap.heal``, --heal-epochs) and its accuracy compared with the original's.

Prints a Markdown table (policy, measured latency ratio, agreement after BatchNorm
re-estimation, and for each tuned policy whether it beats every uniform alpha whose measured
latency is no lower), draws the middle tune's trade-off (--out/tradeoff-digits.png), then
the healing line. Each latency ratio is the median of --repeats measurements of --rounds
interleaved rounds: run it on an otherwise idle machine.

Usage:
    .venv/bin/python benchmarks/bench_tune_data.py [--targets 0.82,0.87,0.92] [--epochs 8]
        [--batch 8] [--threads 2] [--heal-epochs 3] [--out /tmp/octswap-tune-data]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import TensorDataset

from digits import accuracy, digits_split, train

import octswap
from octswap.distillation import HealOptions, heal
from octswap.tuning import tune
from octswap.tuning.plot import write_tradeoff_plot
from octswap.tuning.tuner import DEFAULT_ALPHAS

SHAPE = (3, 128, 128)


def digits_128(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits at 3x128x128 (bilinear from 32x32, grey repeated), ImageNet-normalised."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def scale(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=SHAPE[1:], mode="bilinear", align_corners=False).clamp(0, 1)
        return (x.repeat(1, 3, 1, 1) - mean) / std

    x_train, y_train, x_test, y_test = digits_split(seed)
    return scale(x_train), y_train, scale(x_test), y_test


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def measure(model: torch.nn.Module, converted: torch.nn.Module, calibration: list, val: list, args: Any) -> dict:
    """Agreement on ``val`` after BatchNorm re-estimation on ``calibration``; latency ratio."""
    octswap.recalibrate_batchnorm(converted, calibration, batches=args.calibrate_bn)
    fidelity = octswap.measure_fidelity(model, converted, val, stages=())
    ratios = [octswap.measure_latency(model, converted, SHAPE, batches=(args.batch,), threads=args.threads,
                                      rounds=args.rounds, memory=False)[0].ratio for _ in range(args.repeats)]  # fmt: skip
    return {"agreement": fidelity.agreement, "ratio": statistics.median(ratios), "converted": converted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="0.82,0.87,0.92")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the original")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="latency measurements per policy (the median is kept)")
    parser.add_argument("--calibrate-bn", type=int, default=10)
    parser.add_argument("--eval-batches", type=int, default=4, help="batches of 64 the tuner measures agreement on")
    parser.add_argument("--heal-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/octswap-tune-data"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_val, y_val = digits_128(args.seed)
    calibration, val = batches(x_train, y_train), batches(x_val, y_val)
    weights = args.out / f"resnet18-digits128-seed{args.seed}.pt"
    model = torchvision.models.resnet18(num_classes=10)
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        started = time.perf_counter()
        train(model, x_train, y_train, epochs=args.epochs, seed=args.seed)
        torch.save(model.state_dict(), weights)
        print(f"trained resnet18 in {time.perf_counter() - started:.0f} s", flush=True)
    model.eval()
    original_accuracy = accuracy(model, x_val, y_val)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, batch {args.batch}, "
          f"{args.threads} threads; original resnet18: {original_accuracy * 100:.2f}% on {len(y_val)} held-out "
          "digits", flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    # Kept, beside the trained weights they were measured on (same seed): a rerun reuses them.
    uniform_file = args.out / f"uniform-seed{args.seed}-b{args.batch}-t{args.threads}.json"
    done = json.loads(uniform_file.read_text()) if uniform_file.exists() else {}
    for alpha in DEFAULT_ALPHAS:
        if f"{alpha:g}" not in done:
            converted, _ = octswap.convert(model, octswap.Policy(alpha=alpha), input_shape=SHAPE)
            measured = measure(model, converted, calibration, val, args)
            done[f"{alpha:g}"] = {"agreement": measured["agreement"], "ratio": measured["ratio"]}
            uniform_file.write_text(json.dumps(done, indent=1))
        rows.append({"policy": f"uniform α = {alpha:g}", **done[f"{alpha:g}"]})
        print(f"  uniform {alpha:g}: ratio {rows[-1]['ratio']:.3f}, agreement {rows[-1]['agreement']:.4f}",
              flush=True)  # fmt: skip
    targets = [float(t) for t in args.targets.split(",")]
    cache = args.out / f"tune-b{args.batch}-t{args.threads}.json"
    results = []
    for target in targets:
        started = time.perf_counter()
        try:
            result = tune(model, input_shape=SHAPE, target_latency=target, data=calibration,
                          calibrate_batches=args.calibrate_bn, eval_batches=args.eval_batches, batch=args.batch,
                          threads=args.threads, cache=cache, resume=cache.exists(), model_key="resnet18-digits128",
                          data_key="digits-train")  # fmt: skip
        except octswap.InputError as error:  # a target no policy reaches here
            print(f"  tuned {target:g}: {error}", flush=True)
            continue
        converted, _ = octswap.convert(model, result.policy, input_shape=SHAPE)
        row = {"policy": f"tuned, target {target:g}", "target": target, "tune_seconds": time.perf_counter() - started,
               "predicted": result.predicted_ratio, **measure(model, converted, calibration, val, args)}  # fmt: skip
        rows.append(row)
        results.append(result)
        print(f"  tuned {target:g}: ratio {row['ratio']:.3f}, agreement {row['agreement']:.4f} "
              f"({row['tune_seconds'] / 60:.1f} min)", flush=True)  # fmt: skip
    uniform = [r for r in rows if "target" not in r]
    print("\n| policy | measured latency ratio | agreement after BN re-estimation | beats every uniform α no faster |")
    print("|---|---|---|---|")
    for r in rows:
        verdict = ""
        if "target" in r:
            slower = [u for u in uniform if u["ratio"] >= r["ratio"]]
            verdict = "yes" if all(r["agreement"] > u["agreement"] for u in slower) else "no"
            verdict += f" ({len(slower)} uniform no faster)"
        print(f"| {r['policy']} | {r['ratio']:.3f} | {r['agreement'] * 100:.2f}% | {verdict} |")
    tuned = [r for r in rows if "target" in r]
    if not tuned:
        return
    middle = tuned[len(tuned) // 2]
    plot = args.out / "tradeoff-digits.png"
    write_tradeoff_plot(results[len(tuned) // 2], [plot], force=True,
                        title=f"resnet18 on digits, 3x128x128, batch {args.batch}, {args.threads} threads")
    print(f"\ntrade-off of the tune at target {middle['target']:g}: {plot}")
    options = HealOptions(epochs=args.heal_epochs, batch_size=64, workers=0, calibrate_bn=args.calibrate_bn)
    started = time.perf_counter()
    healed = heal(copy.deepcopy(middle["converted"]), model, TensorDataset(x_train, y_train), options=options)
    healed_accuracy = accuracy(healed.model, x_val, y_val)
    print(f"\nhealed the tuned model at target {middle['target']:g} ({options.epochs} epochs, no labels, "
          f"{time.perf_counter() - started:.0f} s): accuracy {healed_accuracy * 100:.2f}% against the original's "
          f"{original_accuracy * 100:.2f}% ({(healed_accuracy - original_accuracy) * 100:+.2f} points)")
    (args.out / "results.json").write_text(json.dumps(
        {"original_accuracy": original_accuracy, "healed_accuracy": healed_accuracy,
         "rows": [{k: v for k, v in r.items() if k != "converted"} for r in rows]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
