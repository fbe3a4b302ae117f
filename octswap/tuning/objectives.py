"""What an assignment (alpha per unit) saves and what it loses, as the search sees it.

Saving: seconds per forward at the tuning batch (the latency table, predicted from
per-conv measurements), or multiply-adds per image (a FLOPs target). Drop: points of
agreement lost on the user's data (:class:`~octswap.tuning.accuracy.AgreementTable`), or
without data a proxy for how much of the model changes: alpha times the unit's share of
the candidate convs' multiply-adds. With data the proxy, scaled by :data:`TIE_BREAK`, is added
to the measured drop: many units measure the same drop (0 where a few hundred samples show no
difference), and without it the search cannot tell converting them from leaving them, so every
latency target would get the same fastest zero-drop policy rather than the least change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from octswap.errors import OctswapError
from octswap.inference import InferenceOptions, optimize_for_inference
from octswap.latency import inference_call, side_by_side, timing_input
from octswap.plan import LayerDecision
from octswap.tuning.accuracy import AgreementTable
from octswap.tuning.cache import MeasurementCache
from octswap.tuning.costs import LatencyTable, original_times, plan_macs
from octswap.tuning.search import Option
from octswap.tuning.space import SearchSpace, Unit

__all__ = ["Objectives", "Progress", "TuneInterrupted", "original_seconds"]

#: Points of agreement per unit of the change proxy, added to measured drops: far below what an
#: agreement measurement resolves (1/256 of the samples is 0.39 points), so it only breaks ties.
TIE_BREAK = 1e-3

#: Progress callback: (stage, done, total); total 0 when unknown.
Progress = Callable[[str, int, int], None]


class TuneInterrupted(OctswapError):
    """Stopped on request (Ctrl-C); what was measured is in the measurements file."""

    exit_code = 130


def original_seconds(model: nn.Module, space: SearchSpace, cache: MeasurementCache, table: LatencyTable, *,
                     rounds: int) -> float:  # fmt: skip
    """Seconds per forward of the original at the table's batch, prepared as ``octswap bench``
    prepares it, and (into ``table.reference``) each conv's time inside it; both cached."""
    input_shape = space.input_shape
    cached = cache.get("original")
    if not isinstance(cached, dict) and table.onnx is not None:
        # ONNX Runtime: the whole model exported; each conv's time is the plain conv's alone.
        cached = {"seconds": table.onnx.whole(model, input_shape, table.batch),
                  "convs": {s.name: table.plain_seconds(s) * s.calls for s in space.sites}}
        cache.put("original", cached)
    if not isinstance(cached, dict):
        batch, threads, device, options = table.batch, table.threads, str(table.device), table.options
        cached = {"seconds": _whole(model, input_shape, batch=batch, threads=threads, device=device, options=options,
                                    rounds=rounds),
                  "convs": original_times(model, input_shape, batch=batch, threads=threads, device=device,
                                          options=options)}  # fmt: skip
        cache.put("original", cached)
    table.set_reference(float(cached["seconds"]), cached["convs"], space.sites)
    return float(cached["seconds"])


def _whole(model: nn.Module, input_shape: tuple[int, int, int], *, batch: int, threads: int, device: str,
           options: InferenceOptions, rounds: int) -> float:  # fmt: skip
    prepared = optimize_for_inference(copy.deepcopy(model).to(device), options, inplace=True)
    layout = torch.channels_last if options.channels_last else torch.contiguous_format
    x = timing_input(batch, input_shape).to(device).contiguous(memory_format=layout)
    return side_by_side([inference_call(prepared, x)], threads, rounds=rounds, min_round_time=0.2)[0].median


class Objectives:
    """Saving and drop of assignments (see the module docstring)."""

    def __init__(self, space: SearchSpace, table: LatencyTable | None, agreement: AgreementTable | None,
                 stop: Callable[[], bool] | None) -> None:  # fmt: skip
        self.space = space
        self.table = table
        self.agreement = agreement
        self.stop = stop
        self.total_macs = max(1, sum(u.macs for u in space.units))
        #: Measured whole-model saving per predicted second (``_Run.calibrate``); 1 until calibrated.
        self.factor = 1.0

    def saving(self, assignment: Mapping[str, float]) -> float:
        """Seconds (or multiply-adds) the whole assignment saves, predicted.

        Raises:
            TuneInterrupted: ``stop`` says so.
        """
        if self.stop is not None and self.stop():
            raise TuneInterrupted("stopped on request")
        return self.saving_of(self.space.decisions_for(assignment))

    def saving_of(self, decisions: Sequence[LayerDecision]) -> float:
        if self.table is None:
            before, after = plan_macs(decisions)
            return float(before - after)
        return -self.table.change(decisions, self.space.forms(decisions)) * self.factor

    def drop(self, unit: Unit, alpha: float) -> float:
        if self.agreement is not None:
            if self.stop is not None and self.stop():
                raise TuneInterrupted("stopped on request")
            return self.agreement.drop(unit.name, alpha) + TIE_BREAK * self.proxy(unit, alpha)
        return self.proxy(unit, alpha)

    def proxy(self, unit: Unit, alpha: float) -> float:
        """How much of the model converting ``unit`` at ``alpha`` changes: alpha x its MAC share."""
        return alpha * unit.macs / self.total_macs

    def options(self, alphas: Sequence[float], progress: Progress | None) -> dict[str, list[Option]]:
        """Each unit's options, measured with only that unit converted."""
        out: dict[str, list[Option]] = {}
        total = len(self.space.units) * len(alphas)
        for index, unit in enumerate(self.space.units):
            out[unit.name] = [Option(0.0, 0.0, 0.0)]
            for j, alpha in enumerate(alphas):
                out[unit.name].append(Option(alpha, self.saving({unit.name: alpha}), self.drop(unit, alpha)))
                if progress is not None:
                    progress("measuring units", index * len(alphas) + j + 1, total)
        return out
