"""What a candidate policy costs: per-conv latency measured on this machine, and multiply-adds.

Each octave conv a candidate plan needs is timed side by side with the plain conv it
replaces, on inputs of the shapes the probe saw, both prepared as
:func:`octswap.measure_latency` prepares whole models (BatchNorm folded into a bias,
channels-last, packed weights), with ``torch.utils.benchmark`` in alternating rounds.
Measurements are keyed by geometry and low channel counts (a ResNet's repeated blocks
share them) and cached (:class:`~octswap.tuning.cache.MeasurementCache`). A plan's
predicted latency is the original's measured latency plus the sum of its convs' changes;
the tuner checks that prediction against the converted model measured whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from octswap.inference import InferenceOptions, optimize_for_inference
from octswap.latency import side_by_side
from octswap.layers import OctaveConv2d, OctaveConvBlock
from octswap.layers.resample import split_frequencies
from octswap.plan import ConvSite, LayerDecision
from octswap.tuning.cache import MeasurementCache
from octswap.tuning.space import conv_macs, octave_macs

__all__ = ["ConvTiming", "LatencyTable", "geometry_key", "plan_macs"]

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
        plain = conv_macs(d.site)
        before += plain
        after += octave_macs(d.site, d.in_low, d.out_low) if d.action == "octave" else plain
    return before, after


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
                 progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.cache = cache
        self.batch = batch
        self.threads = threads
        self.device = torch.device(device)
        self.options = options if options is not None else InferenceOptions()
        self.rounds = rounds
        self.min_round_time = min_round_time
        self.progress = progress
        self.measured = 0

    def timing(self, site: ConvSite, *, in_low: int, out_low: int, form: str) -> ConvTiming:
        """The plain conv and its octave replacement (``form`` ``"pair"``: pairs in and out, as
        in graph mode; ``"block"``: split, octave conv, merge), timed side by side."""
        key = f"latency|{geometry_key(site)}|{in_low}|{out_low}|{form}"
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
        """Seconds per forward that the octave convs of ``decisions`` add (negative: save)."""
        return sum(self.timing(d.site, in_low=d.in_low, out_low=d.out_low, form=forms[d.name]).change
                   for d in decisions if d.action == "octave")  # fmt: skip

    def _measure(self, site: ConvSite, in_low: int, out_low: int, form: str) -> ConvTiming:
        if site.input_size is None:
            return ConvTiming(0.0, 0.0)
        torch.manual_seed(0)
        plain = _plain_conv(site)
        if form == "pair":
            octave: nn.Module = OctaveConv2d.from_conv(plain, in_low=in_low, out_low=out_low)
        else:
            octave = OctaveConvBlock.from_conv(plain, in_low=in_low, out_low=out_low)
        models = [optimize_for_inference(_One(m).to(self.device), self.options, inplace=True) for m in (plain, octave)]
        layout = torch.channels_last if self.options.channels_last else torch.contiguous_format
        x = torch.randn(self.batch, site.in_channels, *site.input_size, device=self.device)
        x = x.contiguous(memory_format=layout)
        octave_input: Any = x
        if form == "pair" and in_low > 0:
            high, low = split_frequencies(x, in_low)
            octave_input = (high.contiguous(memory_format=layout), low.contiguous(memory_format=layout))
        timings = side_by_side([_forward(models[0], x), _forward(models[1], octave_input)], self.threads,
                               rounds=self.rounds, min_round_time=self.min_round_time)  # fmt: skip
        return ConvTiming(timings[0].median, timings[1].median)


def _forward(model: nn.Module, x: Any) -> Callable[[], None]:
    def forward() -> None:
        with torch.inference_mode():
            model(x)

    return forward
