"""CPU latency of an original and a converted model, measured side by side.

Both models are prepared alike for inference (:mod:`octswap.inference`: BatchNorm
folded, channels-last by default) and run in the same process on the same input,
in eval mode under ``torch.inference_mode``, with ``torch.utils.benchmark.Timer`` (which sets the
thread count and synchronises). Rounds alternate between the two models so that a
drift of the machine hits both alike; each figure is the median over rounds, with
the interquartile range as its spread.

Under ONNX Runtime (:func:`measure_onnxruntime_latency`) both models are exported
alike (:mod:`octswap.export`) and run by sessions with the same options, timed the
same way.
"""

from __future__ import annotations

import copy
import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from octswap.errors import InputError
from octswap.inference import InferenceOptions

__all__ = ["RUNTIMES", "LatencyResult", "Timing", "measure_latency", "measure_onnxruntime_latency", "session_forward",
           "session_run", "timing_input", "side_by_side", "check_device", "inference_call"]

#: Runtimes ``octswap bench --runtime`` times models in.
RUNTIMES = ("pytorch", "onnxruntime")


@dataclass(frozen=True)
class Timing:
    """Seconds per forward pass: median over rounds and interquartile range."""

    median: float
    iqr: float
    rounds: int


@dataclass(frozen=True)
class LatencyResult:
    """Original vs converted timing at one batch size, with how both were prepared."""

    batch: int
    threads: int
    device: str
    options: InferenceOptions
    original: Timing
    converted: Timing
    original_peak_bytes: int | None = None
    converted_peak_bytes: int | None = None
    #: ``"pytorch"``, or ``"onnxruntime"`` (both models exported alike, ``options`` says how).
    runtime: str = "pytorch"
    #: How both models were exported for the runtime (empty for PyTorch).
    export: str = ""

    @property
    def channels_last(self) -> bool:
        return self.options.channels_last

    @property
    def ratio(self) -> float:
        """Converted time / original time (below 1: the converted model is faster)."""
        return self.converted.median / self.original.median

    @property
    def memory_ratio(self) -> float | None:
        """Converted / original peak activation memory, when measured."""
        if not self.original_peak_bytes or self.converted_peak_bytes is None:
            return None
        return self.converted_peak_bytes / self.original_peak_bytes

    def to_dict(self) -> dict[str, Any]:
        memory = self.memory_ratio
        return {
            "batch": self.batch, "threads": self.threads, "device": self.device, "runtime": self.runtime,
            **({"export": self.export} if self.export else {}), **self.options.to_dict(),
            "original_ms": round(self.original.median * 1e3, 3), "original_iqr_ms": round(self.original.iqr * 1e3, 3),
            "converted_ms": round(self.converted.median * 1e3, 3),
            "converted_iqr_ms": round(self.converted.iqr * 1e3, 3),
            "ratio": round(self.ratio, 4), "rounds": self.original.rounds,
            "original_peak_mib": None if self.original_peak_bytes is None else round(self.original_peak_bytes / 2**20, 2),
            "converted_peak_mib": None if self.converted_peak_bytes is None else round(self.converted_peak_bytes / 2**20, 2),
            "memory_ratio": None if memory is None else round(memory, 4),
        }  # fmt: skip


def _timing(samples: Sequence[float]) -> Timing:
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = max(samples) - min(samples)
    return Timing(statistics.median(samples), iqr, len(samples))


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, if this machine can time on it.

    Raises:
        InputError: an unknown device, or CUDA without a usable GPU.
    """
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but this machine has no usable CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported for timing (use cpu or cuda)")
    return dev


def timing_input(batch: int, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """What models are timed on: uniform in [0, 1] as images are, the same in every run (seed 0).

    Convs take the same time on any values, but a detector's heads do not: how many proposals
    and detections survive depends on its input, and torchvision's detectors expect images in
    [0, 1] (they normalise inside). Seeded, both models and every process see one input."""
    return torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0))


def measure_latency(
    original: nn.Module,
    converted: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    batches: Sequence[int] = (1, 8),
    threads: int | None = None,
    options: InferenceOptions | None = None,
    device: str = "cpu",
    rounds: int = 7,
    min_round_time: float = 0.2,
    memory: bool = True,
) -> list[LatencyResult]:
    """Time ``original`` and ``converted`` side by side at each batch size.

    Both models are prepared alike with :func:`octswap.inference.optimize_for_inference`
    (on copies; the models passed in are not changed), so the comparison is fair.

    Args:
        original: The unconverted model.
        converted: The converted model.
        input_shape: ``(C, H, W)`` of one sample.
        batches: Batch sizes to measure.
        threads: Intra-op threads (default: torch's current setting).
        options: How both models are prepared (default: BatchNorm folded,
            channels-last, not compiled). Inputs are channels-last when the weights are.
        device: ``"cpu"`` or ``"cuda"`` (``torch.utils.benchmark`` synchronises CUDA).
        rounds: Alternating rounds per model; the median is reported.
        min_round_time: Seconds each round runs at least (its forward count is calibrated once).
        memory: Also measure each model's peak activation memory at each batch size.

    Raises:
        InputError: a device this machine does not have.

    Example:
        >>> results = measure_latency(model, converted, (3, 224, 224), batches=(1,))  # doctest: +SKIP
        >>> results[0].ratio                                                          # doctest: +SKIP
        0.83
    """
    from octswap.inference import optimize_for_inference
    from octswap.memory import measure_activations

    dev = check_device(device)
    options = options if options is not None else InferenceOptions()
    threads = threads or torch.get_num_threads()
    models = [optimize_for_inference(copy.deepcopy(m).to(dev), options, inplace=True) for m in (original, converted)]
    layout = torch.channels_last if options.channels_last else torch.contiguous_format
    results = []
    for batch in batches:
        x = timing_input(batch, input_shape).to(dev).contiguous(memory_format=layout)
        peaks: list[int | None] = [None, None]
        if memory and not options.compile:
            peaks = [measure_activations(m, x).peak for m in models]
        timings = side_by_side([inference_call(m, x) for m in models], threads, rounds=rounds,
                                min_round_time=min_round_time)  # fmt: skip
        results.append(LatencyResult(batch, threads, str(dev), options, timings[0], timings[1], peaks[0], peaks[1]))
    return results


def inference_call(model: nn.Module, x: Any) -> Callable[[], None]:
    """``model(x)`` under ``torch.inference_mode``, as a callable to time."""

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    return forward


def side_by_side(forwards: Sequence[Callable[[], None]], threads: int, *, rounds: int,
                  min_round_time: float) -> list[Timing]:  # fmt: skip
    """Time each forward in alternating rounds (``torch.utils.benchmark.Timer``)."""
    # torch.utils.benchmark imports cpp_extension, which warns about a missing CUDA
    # runtime on CPU machines; keep that out of our output (for this import only).
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        cpp_logger.setLevel(level)

    timers = [benchmark.Timer(stmt="forward()", globals={"forward": f}, num_threads=threads) for f in forwards]
    # Warm up (and compile, with options.compile) before calibrating: the first
    # forwards pay for oneDNN primitive creation and for the allocator settling
    # (glibc raises its mmap threshold only after large blocks are freed), so run
    # each model for a few rounds' worth of time first.
    for timer in timers:
        spent, calls = 0.0, 0
        while calls < 3 or spent < 2 * min_round_time:
            spent += timer.timeit(1).median
            calls += 1
    # Calibrate how many forwards make one round, on the slower of the two.
    number = max(1, max(round(min_round_time / t.timeit(1).median) for t in timers))
    samples: list[list[float]] = [[] for _ in timers]
    for _ in range(rounds):
        for index, timer in enumerate(timers):
            samples[index].append(timer.timeit(number).median)
    return [_timing(s) for s in samples]


def measure_onnxruntime_latency(
    original: nn.Module,
    converted: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    batches: Sequence[int] = (1, 8),
    threads: int | None = None,
    device: str = "cpu",
    dynamic: bool = False,
    rounds: int = 7,
    min_round_time: float = 0.2,
) -> list[LatencyResult]:
    """Time ``original`` and ``converted`` side by side in ONNX Runtime.

    Both are exported alike (:func:`octswap.export.export_model`: BatchNorm folded,
    dynamic batch, height and width fixed at ``input_shape`` unless ``dynamic``, each
    file validated) into a temporary folder and run by sessions with the same options
    (:func:`octswap.export.onnx_file.onnxruntime_session`, with the batch size and, for
    dynamic exports, height and width fixed in each session as a server running one shape
    would), in alternating rounds as :func:`measure_latency` does.

    Raises:
        MissingExtraError: onnx, onnxscript or onnxruntime is missing (``octswap[export]``).
        InputError: a device this machine (or ONNX Runtime build) does not have.

    Example:
        >>> results = measure_onnxruntime_latency(model, converted, (3, 224, 224))  # doctest: +SKIP
    """
    import tempfile

    from octswap.export import export_model
    from octswap.export.onnx_file import onnxruntime_session, require_onnx

    require_onnx()
    dev = check_device(device)
    if dev.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise InputError("--device cuda needs an ONNX Runtime build with the CUDA provider (onnxruntime-gpu)")
    threads = threads or torch.get_num_threads()
    shape = "dynamic HxW" if dynamic else "x".join(map(str, input_shape[1:])) + " fixed"
    results = []
    with tempfile.TemporaryDirectory(prefix="octswap-bench-") as folder:
        paths = []
        for name, model in (("original", original), ("converted", converted)):
            paths.append(Path(folder) / f"{name}.onnx")
            export_model(model, paths[-1], input_shape=input_shape, dynamic=dynamic)
        for batch in batches:
            # One session per file and batch size, the shape fixed in it (the files keep it dynamic).
            fixed = {"batch": batch, "height": input_shape[1], "width": input_shape[2]}
            sessions = [onnxruntime_session(p, threads=threads, device=str(dev), fixed_dims=fixed) for p in paths]
            x = timing_input(batch, input_shape).numpy()
            forwards = [session_forward(session, x) for session in sessions]
            timings = side_by_side(forwards, threads, rounds=rounds, min_round_time=min_round_time)
            results.append(LatencyResult(batch, threads, str(dev), InferenceOptions(True, False, False, False),
                                         timings[0], timings[1], runtime="onnxruntime", export=shape))  # fmt: skip
    return results


def session_forward(session: Any, x: Any) -> Callable[[], None]:
    """One run of an ONNX Runtime session on ``x``, its only input (:func:`session_run`)."""
    return session_run(session, {session.get_inputs()[0].name: x})


def session_run(session: Any, feed: dict[str, Any]) -> Callable[[], None]:
    """One run of an ONNX Runtime session on ``feed`` (input name -> array), for timing."""

    def forward() -> None:
        session.run(None, feed)

    return forward
