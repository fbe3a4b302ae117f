"""CPU latency of an original and a converted model, measured side by side.

Both models run in the same process on the same input, in eval mode under
``torch.inference_mode``, with ``torch.utils.benchmark.Timer`` (which sets the
thread count and synchronises). Rounds alternate between the two models so that a
drift of the machine hits both alike; each figure is the median over rounds, with
the interquartile range as its spread.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from octswap.eval_mode import eval_mode

__all__ = ["LatencyResult", "Timing", "measure_latency"]


@dataclass(frozen=True)
class Timing:
    """Seconds per forward pass: median over rounds and interquartile range."""

    median: float
    iqr: float
    rounds: int


@dataclass(frozen=True)
class LatencyResult:
    batch: int
    threads: int
    channels_last: bool
    original: Timing
    converted: Timing

    @property
    def ratio(self) -> float:
        """Converted time / original time (below 1: the converted model is faster)."""
        return self.converted.median / self.original.median

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "batch": self.batch, "threads": self.threads, "channels_last": self.channels_last,
            "original_ms": round(self.original.median * 1e3, 3), "original_iqr_ms": round(self.original.iqr * 1e3, 3),
            "converted_ms": round(self.converted.median * 1e3, 3),
            "converted_iqr_ms": round(self.converted.iqr * 1e3, 3),
            "ratio": round(self.ratio, 4), "rounds": self.original.rounds,
        }  # fmt: skip


def _timing(samples: Sequence[float]) -> Timing:
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = max(samples) - min(samples)
    return Timing(statistics.median(samples), iqr, len(samples))


def measure_latency(
    original: nn.Module,
    converted: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    batches: Sequence[int] = (1, 8),
    threads: int | None = None,
    channels_last: bool = False,
    rounds: int = 7,
    min_round_time: float = 0.2,
) -> list[LatencyResult]:
    """Time ``original`` and ``converted`` side by side at each batch size.

    Args:
        original: The unconverted model.
        converted: The converted model.
        input_shape: ``(C, H, W)`` of one sample.
        batches: Batch sizes to measure.
        threads: Intra-op threads (default: torch's current setting).
        channels_last: Run both models and inputs in channels-last memory format
            (on copies; the models passed in keep their format).
        rounds: Alternating rounds per model; the median is reported.
        min_round_time: Seconds each round runs at least (its forward count is calibrated once).

    Example:
        >>> results = measure_latency(model, converted, (3, 224, 224), batches=(1,))  # doctest: +SKIP
        >>> results[0].ratio                                                          # doctest: +SKIP
        0.83
    """
    import copy

    # torch.utils.benchmark imports cpp_extension, which warns about a missing CUDA
    # runtime on CPU machines; keep that out of our output (for this import only).
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        cpp_logger.setLevel(level)

    threads = threads or torch.get_num_threads()
    models = [original, converted]
    if channels_last:
        models = [copy.deepcopy(m).to(memory_format=torch.channels_last) for m in models]
    results = []
    with eval_mode(models[0]), eval_mode(models[1]):
        for batch in batches:
            x = torch.randn(batch, *input_shape)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            timers = []
            for model in models:

                def forward(m: nn.Module = model) -> None:
                    with torch.inference_mode():
                        m(x)

                timers.append(benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads))
            # Calibrate how many forwards make one round, on the slower of the two.
            number = max(1, max(round(min_round_time / t.timeit(1).median) for t in timers))
            samples: list[list[float]] = [[], []]
            for _ in range(rounds):
                for index, timer in enumerate(timers):
                    samples[index].append(timer.timeit(number).median)
            results.append(LatencyResult(batch, threads, channels_last, _timing(samples[0]), _timing(samples[1])))
    return results
