"""Benchmark: accuracy of converted models on real data, and what BatchNorm re-estimation and
healing (distillation from the original, no labels) give back.

For each seed: split scikit-learn's digits (30% held out, 32x32), train a ResNet-18 (3x3
stem, no max-pool, 1 channel) and a 5-conv VGG-style CNN with that seed, convert each at
every alpha (graph mode, default policy), and measure top-1 accuracy on the held-out
digits: original / converted / after BatchNorm re-estimation on the training images /
after each epoch of ``octswap.heal`` (the defaults of ``octswap heal --no-labels``),
plus the top-1 agreement with the original after the last epoch. Medians over seeds.

Usage:
    .venv/bin/python benchmarks/bench_fidelity.py [--seeds 0,1,2] [--alphas 0.25,0.5]
        [--models resnet18,vgg] [--train-epochs 8] [--heal-epochs 3] [--threads 2]
        [--transfer resampled|sliced] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch

import octswap
from digits import FACTORIES, accuracy, digits_split, train
from octswap.data import Data, make_loader
from octswap.layers.transfer import TRANSFERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--alphas", default="0.25,0.5")
    parser.add_argument("--models", default="resnet18,vgg")
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--heal-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--transfer", choices=TRANSFERS, default=TRANSFERS[0],
                        help="how the trained kernels fill the octave paths (octswap.convert's transfer)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
          flush=True)  # fmt: skip
    seeds = [int(s) for s in args.seeds.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]
    rows = []
    for seed in seeds:
        x_train, y_train, x_test, y_test = digits_split(seed)
        train_data = Data.from_tensors(x_train, y_train, name="digits-train")
        test_data = Data.from_tensors(x_test, y_test, name="digits-test")
        for name in args.models.split(","):
            start = time.perf_counter()
            torch.manual_seed(seed)
            original = train(FACTORIES[name](), x_train, y_train, epochs=args.train_epochs, seed=seed)
            base = accuracy(original, x_test, y_test)
            print(f"{name} seed {seed}: trained in {time.perf_counter() - start:.0f} s, {base * 100:.2f}%", flush=True)
            for alpha in alphas:
                converted, plan = octswap.convert(original, alpha=alpha, input_shape=(1, 32, 32),
                                                 transfer=args.transfer)
                row = {"model": name, "seed": seed, "alpha": alpha, "original": base,
                       "converted": accuracy(converted, x_test, y_test),
                       "convs_converted": len(plan.octave_layers)}  # fmt: skip
                calibrated = copy.deepcopy(converted)
                octswap.recalibrate_batchnorm(calibrated, make_loader(train_data, batch_size=64), batches=None)
                row["bn_reestimated"] = accuracy(calibrated, x_test, y_test)
                start = time.perf_counter()
                options = octswap.HealOptions(epochs=args.heal_epochs, labels=False, seed=seed)
                result = octswap.heal(converted, original, train_data, options=options, val=test_data)
                row["heal_seconds"] = round(time.perf_counter() - start, 1)
                for epoch in result.history:
                    row[f"heal_{epoch.epoch}"] = epoch.fidelity.accuracy_converted
                row["agreement"] = result.history[-1].fidelity.agreement
                rows.append(row)
                print(json.dumps(row), flush=True)
    heal_keys = [f"heal_{e}" for e in range(1, args.heal_epochs + 1)]
    columns = ["original", "converted", "bn_reestimated", *heal_keys, "agreement"]
    print(f"\nmedian over seeds {args.seeds} (top-1 accuracy on the held-out digits, %):\n")
    print("| model | alpha | " + " | ".join(columns) + " | original - healed |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    for name in args.models.split(","):
        for alpha in alphas:
            group = [r for r in rows if r["model"] == name and r["alpha"] == alpha]
            med = {c: statistics.median(r[c] for r in group) * 100 for c in columns}
            gap = statistics.median((r["original"] - r[heal_keys[-1]]) * 100 for r in group)
            cells = " | ".join(f"{med[c]:.2f}" for c in columns)
            print(f"| {name} | {alpha:g} | {cells} | {gap:+.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
