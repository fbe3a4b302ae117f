"""What a candidate policy costs: per-conv latency measured on this machine, and multiply-adds.

Each octave conv a candidate plan needs is timed side by side with the plain conv it
replaces, on inputs of the shapes the probe saw, both prepared as
:func:`octswap.measure_latency` prepares whole models (BatchNorm folded into a bias,
channels-last, packed weights), with ``torch.utils.benchmark`` in alternating rounds.
Measurements are keyed by geometry and low channel counts (a ResNet's repeated blocks
share them) and cached (:class:`~octswap.tuning.cache.MeasurementCache`). Under ONNX Runtime
(``runtime="onnxruntime"``) both convs are exported and timed in sessions instead
(:mod:`octswap.tuning.onnx_costs`), each with the activation that follows it in the model
(:mod:`octswap.tuning.activations`: ONNX Runtime folds it into a plain conv, not always into
an octave conv's sums; under PyTorch it runs apart in both, see :data:`ELEMENTWISE_SHARE`). A plan's
predicted latency is the original's measured latency plus the sum of its convs' changes;
the tuner checks that prediction against the converted model measured whole.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from octswap.inference import InferenceOptions, optimize_for_inference
from octswap.latency import inference_call, side_by_side, timing_input
from octswap.layers import OctaveConv2d, OctaveConvBlock
from octswap.layers.resample import split_frequencies
from octswap.plan import ConvSite, LayerDecision
from octswap.tuning.activations import Activated, activation_key
from octswap.tuning.cache import MeasurementCache
from octswap.tuning.space import octave_macs

__all__ = ["ELEMENTWISE_SHARE", "IN_LOW_STEPS", "ConvTiming", "LatencyTable", "geometry_key", "original_times", "plan_macs", "timed_in_low"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvTiming:
    """Seconds per forward at the table's batch size: the plain conv and its replacement."""

    plain: float
    octave: float

    @property
    def change(self) -> float:
        return self.octave - self.plain


def geometry_key(site: ConvSite) -> str:
    """What a conv's latency depends on (not its name: repeated blocks share measurements)."""
    size = "x".join(map(str, site.input_size or ()))
    padding = site.padding if isinstance(site.padding, str) else "x".join(map(str, site.padding))
    return (f"{site.in_channels}>{site.out_channels} k{site.kernel_size[0]}x{site.kernel_size[1]} "
            f"s{site.stride[0]}x{site.stride[1]} p{padding} d{site.dilation[0]}x{site.dilation[1]} "
            f"g{site.groups} {site.padding_mode} @{size}")  # fmt: skip


def plan_macs(decisions: Sequence[LayerDecision]) -> tuple[int, int]:
    """Multiply-adds per image of the planned convs: (as plain convs, as planned)."""
    before = after = 0
    for d in decisions:
        plain = d.site.macs
        before += plain
        after += octave_macs(d.site, d.in_low, d.out_low) if d.action == "octave" else plain
    return before, after


#: Part of the elements a pair saves (a quarter of its low channels' worth) that shows as
#: time in the elementwise work after a conv: a pair's ops run as two calls, so less than all.
#: Fitted on this VM (batch 8, 2 threads) against whole-model measurements: resnet18 (tuned
#: fastest) predicted 0.634 / 0.715 / 0.674 with 1 / 0 / 0.5, measured 0.652-0.691 in four
#: runs; resnet50 (tuned to 0.65) 0.638 / 0.657 / 0.647, measured 0.621-0.632.
ELEMENTWISE_SHARE = 0.5

#: A conv's input split is timed at the nearest of this many steps of its channels: where many
#: units feed one conv (DenseNet's concatenations), its input split takes many values, and
#: timing each would multiply the measurements for differences of a few channels.
IN_LOW_STEPS = 16


def timed_in_low(site: ConvSite, in_low: int) -> int:
    """The input split a conv is timed at: ``in_low`` rounded to :data:`IN_LOW_STEPS` steps
    (whole groups for grouped convs; never 0 or all channels when ``in_low`` is neither).

    Example:
        >>> site = ConvSite("c", "Conv2d", 512, 128, (1, 1), (1, 1), (0, 0), (1, 1), 1, False, "zeros", (28, 28))
        >>> timed_in_low(site, 129), timed_in_low(site, 0), timed_in_low(site, 3)
        (128, 0, 32)
    """
    if in_low == 0:
        return 0
    group = site.in_channels // site.groups if site.groups > 1 else 1
    step = math.lcm(group, max(1, site.in_channels // IN_LOW_STEPS))
    if step >= site.in_channels:
        return in_low
    rounded = round(in_low / step) * step
    return min(max(rounded, step), site.in_channels - step)


class _One(nn.Module):
    """One conv as a model, so that inference preparation (packing) reaches it."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Any) -> Any:
        return self.conv(x)


def _plain_conv(site: ConvSite) -> nn.Conv2d:
    # Folded BatchNorm leaves a bias on every conv it follows: time convs with one.
    return nn.Conv2d(site.in_channels, site.out_channels, site.kernel_size, stride=site.stride,
                     padding=site.padding, dilation=site.dilation, groups=site.groups, bias=True,
                     padding_mode=site.padding_mode)  # fmt: skip


class LatencyTable:
    """Per-conv latency changes on this machine, measured when first asked for and cached.

    Args:
        cache: Where measurements are kept (and found again on ``--resume``).
        batch: Batch size of the timed inputs.
        threads: Intra-op threads while timing.
        device: ``"cpu"`` or ``"cuda"``.
        options: How convs are prepared (as whole models are by ``octswap bench``).
        rounds: Alternating rounds per measurement (the median is kept).
        min_round_time: Seconds per round.
        progress: Called after each new measurement with the number made so far.

    Example:
        >>> table = LatencyTable(MeasurementCache(None, {}, resume=False), batch=8, threads=2)  # doctest: +SKIP
        >>> table.timing(site, in_low=16, out_low=16, form="pair").change                    # doctest: +SKIP
        -0.0011
    """

    def __init__(self, cache: MeasurementCache, *, batch: int, threads: int, device: str = "cpu",
                 options: InferenceOptions | None = None, rounds: int = 5, min_round_time: float = 0.02,
                 progress: Callable[[int], None] | None = None, runtime: str = "pytorch",
                 activations: Mapping[str, nn.Module] | None = None) -> None:  # fmt: skip
        self.runtime = runtime
        #: The activation after each conv (by name), timed with it (``runtime="onnxruntime"``).
        self.activations = dict(activations or {})
        #: ONNX Runtime: the exporter and timer of convs (:mod:`octswap.tuning.onnx_costs`).
        self.onnx = None
        if runtime == "onnxruntime":
            from octswap.tuning.onnx_costs import OnnxTimer

            self.onnx = OnnxTimer(threads=threads, device=device, rounds=rounds, min_round_time=min_round_time)
        self.cache = cache
        self.batch = batch
        self.threads = threads
        self.device = torch.device(device)
        self.options = options if options is not None else InferenceOptions()
        self.rounds = rounds
        self.min_round_time = min_round_time
        self.progress = progress
        self.measured = 0
        #: Seconds each conv takes inside the original, per forward (:func:`original_times`).
        self.reference: dict[str, float] = {}
        #: Seconds of the original's non-conv work attributed to each conv's output (:meth:`set_reference`).
        self.following: dict[str, float] = {}

    def timing(self, site: ConvSite, *, in_low: int, out_low: int, form: str) -> ConvTiming:
        """The plain conv and its octave replacement (``form`` ``"pair"``: pairs in and out, as
        in graph mode; ``"block"``: split, octave conv, merge), timed side by side."""
        in_low = timed_in_low(site, in_low)
        key = f"latency|{self._geometry(site)}|{in_low}|{out_low}|{form}"
        cached = self.cache.get(key)
        if cached is not None:
            return ConvTiming(*cached)
        timing = self._measure(site, in_low, out_low, form)
        self.cache.put(key, [timing.plain, timing.octave])
        self.measured += 1
        if self.progress is not None:
            self.progress(self.measured)
        return timing

    def change(self, decisions: Sequence[LayerDecision], forms: dict[str, str]) -> float:
        """Seconds per forward that the octave convs of ``decisions`` add (negative: save).

        Each conv's change is its measured ratio (octave / plain, timed side by side) applied
        to its time inside the original (:attr:`reference`, where measured): ratios hold when
        the machine's speed drifts over a long run, absolute times measured minutes apart do not.
        """
        total = 0.0
        for d in decisions:
            if d.action != "octave":
                continue
            timing = self.timing(d.site, in_low=d.in_low, out_low=d.out_low, form=forms[d.name])
            plain = self.reference.get(d.name, timing.plain)
            total += plain * (timing.octave / timing.plain - 1) if timing.plain > 0 else 0.0
            if forms[d.name] == "pair" and d.out_low:
                # What follows the conv up to the next (norms, activations, adds) runs on the
                # pair: its low part has a quarter of the elements (see ELEMENTWISE_SHARE).
                share = ELEMENTWISE_SHARE * 0.75 * d.out_low / d.site.out_channels
                total -= self.following.get(d.name, 0.0) * share
        return total

    def set_reference(self, seconds: float, convs: dict[str, float], sites: Sequence[ConvSite]) -> None:
        """The original's time per forward and its convs' (:func:`original_times`): the time
        outside convs is shared among the convs by the elements of their outputs, as the time
        of what follows each conv (elementwise work scales with elements)."""
        self.reference = dict(convs)
        outside = max(0.0, seconds - sum(convs.values()))
        elements = {s.name: s.out_channels * s.output_size[0] * s.output_size[1] * s.calls
                    for s in sites if s.output_size is not None}  # fmt: skip
        total = sum(elements.values()) or 1
        self.following = {name: outside * count / total for name, count in elements.items()}

    def _geometry(self, site: ConvSite) -> str:
        """:func:`geometry_key`, and the activation timed after the conv where there is one."""
        activation = activation_key(self.activations.get(site.name))
        return f"{geometry_key(site)} +{activation}" if activation else geometry_key(site)

    def _activated(self, site: ConvSite, conv: nn.Module) -> nn.Module:
        activation = self.activations.get(site.name)
        return conv if activation is None else Activated(conv, activation)

    def _measure(self, site: ConvSite, in_low: int, out_low: int, form: str) -> ConvTiming:
        if site.input_size is None:
            return ConvTiming(0.0, 0.0)
        torch.manual_seed(0)
        conv = _plain_conv(site)
        if form == "pair":
            octave: nn.Module = OctaveConv2d.from_conv(conv, in_low=in_low, out_low=out_low)
        else:
            octave = OctaveConvBlock.from_conv(conv, alpha_in=in_low / site.in_channels, alpha_out=out_low / site.out_channels,
                                               in_low=in_low, out_low=out_low)  # fmt: skip
        plain, octave = self._activated(site, conv), self._activated(site, octave)
        if self.onnx is not None:
            return self._measure_onnx(site, in_low, out_low, form, plain, octave)
        models = [optimize_for_inference(_One(m).to(self.device), self.options, inplace=True) for m in (plain, octave)]
        layout = torch.channels_last if self.options.channels_last else torch.contiguous_format
        x = torch.randn(self.batch, site.in_channels, *site.input_size, device=self.device)
        x = x.contiguous(memory_format=layout)
        octave_input: Any = x
        if form == "pair" and in_low > 0:
            high, low = split_frequencies(x, in_low)
            octave_input = (high.contiguous(memory_format=layout), low.contiguous(memory_format=layout))
        timings = side_by_side([inference_call(models[0], x), inference_call(models[1], octave_input)], self.threads,
                               rounds=self.rounds, min_round_time=self.min_round_time)  # fmt: skip
        return ConvTiming(timings[0].median, timings[1].median)



    def _measure_onnx(self, site: ConvSite, in_low: int, out_low: int, form: str, plain: nn.Module,
                      octave: nn.Module) -> ConvTiming:  # fmt: skip
        """:meth:`_measure` under ONNX Runtime: both exported (the plain conv once per geometry)."""
        assert self.onnx is not None and site.input_size is not None
        x = torch.randn(self.batch, site.in_channels, *site.input_size)
        octave_inputs = split_frequencies(x, in_low) if form == "pair" and in_low > 0 else (x,)
        geometry = self._geometry(site)
        plain_s, octave_s = self.onnx.side_by_side([(f"plain|{geometry}", plain, (x,)),
                                                    (f"octave|{geometry}|{in_low}|{out_low}|{form}", octave,
                                                     tuple(octave_inputs))])  # fmt: skip
        return ConvTiming(plain_s, octave_s)

    def plain_seconds(self, site: ConvSite) -> float:
        """Seconds per call of the plain conv alone (ONNX Runtime's stand-in for its time
        inside the original), cached by geometry; 0 for a conv the probe did not reach."""
        if site.input_size is None or self.onnx is None:
            return 0.0
        key = f"plain|{self._geometry(site)}"
        cached = self.cache.get(key)
        if cached is None:
            torch.manual_seed(0)
            x = torch.randn(self.batch, site.in_channels, *site.input_size)
            cached = self.onnx.side_by_side([(key, self._activated(site, _plain_conv(site)), (x,))])[0]
            self.cache.put(key, cached)
            self.measured += 1
            if self.progress is not None:
                self.progress(self.measured)
        return float(cached)


def original_times(model: nn.Module, input_shape: tuple[int, int, int], *, batch: int, threads: int, device: str,
                   options: InferenceOptions, min_time: float = 1.0) -> dict[str, float]:  # fmt: skip
    """Seconds per forward each conv of ``model`` takes inside it (prepared as for timing; a
    conv called several times per forward: the sum), median over forwards run for at least
    ``min_time`` seconds, timed by forward hooks."""
    prepared = optimize_for_inference(copy.deepcopy(model).to(device), options, inplace=True)
    convs = {n: m for n, m in prepared.named_modules() if isinstance(m, nn.Conv2d)}
    started: dict[str, float] = {}
    spent: dict[str, float] = {}
    cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def before(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            sync()
            started[name] = time.perf_counter()

        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            sync()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]

        return hook

    handles = [h for n, m in convs.items() for h in (m.register_forward_pre_hook(before(n)),
                                                      m.register_forward_hook(after(n)))]  # fmt: skip
    layout = torch.channels_last if options.channels_last else torch.contiguous_format
    x = timing_input(batch, input_shape).to(device).contiguous(memory_format=layout)
    samples: dict[str, list[float]] = {n: [] for n in convs}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(2):
                prepared(x)
            begin, forwards = time.perf_counter(), 0
            while forwards < 5 or time.perf_counter() - begin < min_time:
                spent.clear()
                prepared(x)
                forwards += 1
                for name in convs:
                    samples[name].append(spent.get(name, 0.0))
    finally:
        torch.set_num_threads(previous)
        for handle in handles:
            handle.remove()
    return {name: statistics.median(values) for name, values in samples.items()}
