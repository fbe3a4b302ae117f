"""Shared timing helper for the benchmark scripts (run as scripts, so this folder is on sys.path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch


def interleaved_medians(models: Sequence[torch.nn.Module], x: torch.Tensor, runs: int, warmup: int = 2) -> list[float]:
    """Median seconds per forward of each model, timed round-robin in one process so that
    drifts of the machine hit every model alike (eval mode, inference_mode)."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            model.eval()
            for _ in range(warmup):
                model(x)
        for _ in range(runs):
            for index, model in enumerate(models):
                start = time.perf_counter()
                model(x)
                times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
