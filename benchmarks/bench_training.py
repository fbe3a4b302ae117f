"""Benchmark: training speed of healing. One optimizer step (forward + backward + AdamW) of the
converted model against a fine-tuning step of the original, and the whole heal step (teacher
forward without gradients + student step + distillation loss), side by side in one process.

Models: torchvision's ResNet-50 and Oct-ResNet-50 (``configs/resnet.yaml``, graph mode),
random weights (speed does not depend on them), train mode, batch 32 at 224x224, 2 threads.
Each round times one step of each model in turn (interleaved, so drifts of the machine hit
all alike); medians over the rounds after warm-up.

glibc's malloc gives big freed blocks back to the system and then pays page faults on every
step (see bench_latency.py); the script re-runs itself with the thresholds fixed, as a
long-running trainer with jemalloc/tcmalloc would run (``--malloc default`` to measure glibc
as it comes).

Usage:
    .venv/bin/python benchmarks/bench_training.py [--alpha 0.5] [--batch 32] [--rounds 5]
        [--threads 2] [--model resnet50] [--channels-last] [--malloc default]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import octswap
from octswap.distillation import distillation_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, teacher: torch.nn.Module | None) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        if teacher is not None:
            with torch.no_grad():
                target = teacher(x)
            loss = distillation_loss(model(x), target, 4.0)
        else:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--policy", default=os.path.join(ROOT, "configs", "resnet.yaml"))
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--malloc", choices=["fixed", "default"], default="fixed")
    args = parser.parse_args()
    if args.malloc == "fixed" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        fixed = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **fixed})
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, {'channels-last' if args.channels_last else 'NCHW'}, malloc {args.malloc}", flush=True)  # fmt: skip
    original, _ = octswap.load_model(args.model)
    converted, _ = octswap.convert(original, octswap.load_policy(args.policy), alpha=args.alpha)
    teacher = original.eval()
    fine_tuned = octswap.load_model(args.model)[0].train()
    converted.train()
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, 1000, (args.batch,))
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        for model in (fine_tuned, converted, teacher):
            model.to(memory_format=torch.channels_last)
    steps = {
        "fine-tune original": step_fn(fine_tuned, x, y, None),
        "train converted": step_fn(converted, x, y, None),
        "heal step (teacher + converted)": step_fn(converted, x, y, teacher),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.warmup + args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items() if t), flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["fine-tune original"]
    print(f"\n{args.model}, alpha {args.alpha:g}, {args.policy}: median of {args.rounds} rounds")
    print("| step | median s | ratio vs fine-tuning the original |")
    print("|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} | {value / base:.2f} |")


if __name__ == "__main__":
    main()
