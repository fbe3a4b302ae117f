"""``octswap.tune``: the alpha per unit that is fastest on this machine, or that reaches a
latency or FLOPs target with the least change, measured rather than guessed.

How (NetAdapt-style: costs measured on the target device, Yang et al., 2018):

1. Units: the convs that must share a split (:mod:`octswap.tuning.space`).
2. Costs: for each unit and candidate alpha, with only that unit converted, the change in
   latency predicted from per-conv measurements on this machine
   (:mod:`octswap.tuning.costs`), or the multiply-adds saved (``target_flops``: no timing).
3. Search: the exact multiple-choice knapsack over units (:mod:`octswap.tuning.search`);
   the chosen policy is then predicted whole (neighbouring units read each other's
   splits), and the target corrected until the whole prediction meets it.
4. Check: the chosen policy is converted and timed whole, side by side with the original
   (:func:`octswap.measure_latency`); a latency target missed by more than ``tolerance`` is
   corrected by the measured error and searched again (at most :data:`CHECKS` times).

Without data, a unit's "drop" is a proxy for how much of the model changes: alpha times
the unit's share of the convs' multiply-adds; the least-changing policy that reaches a
target wins.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from octswap.conversion import convert
from octswap.errors import InputError, OctswapError
from octswap.inference import InferenceOptions, optimize_for_inference
from octswap.latency import measure_latency, side_by_side
from octswap.plan import LayerDecision, Plan, example_input
from octswap.policy import Policy
from octswap.tuning.cache import MeasurementCache
from octswap.tuning.costs import LatencyTable, plan_macs
from octswap.tuning.search import Option, Point, coordinate_descent, fewest_drop_reaching, pareto_front
from octswap.tuning.space import SearchSpace, Unit

__all__ = ["CHECKS", "DEFAULT_ALPHAS", "TuneInterrupted", "TuneResult", "UnitChoice", "tune"]

logger = logging.getLogger(__name__)

#: Candidate alphas per unit besides 0 (issue: .125 ... .75).
DEFAULT_ALPHAS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)

#: Whole-model measurements of a latency target (each one may correct the next search).
CHECKS = 3

#: Progress callback: (stage, done, total); total 0 when unknown.
Progress = Callable[[str, int, int], None]


class TuneInterrupted(OctswapError):
    """Stopped on request (Ctrl-C); what was measured is in the measurements file."""

    exit_code = 130


@dataclass(frozen=True)
class UnitChoice:
    """What the tuner chose for one unit, with the figures it chose by."""

    unit: Unit
    alpha: float
    #: Seconds per forward saved with only this unit converted (predicted), or multiply-adds
    #: per image for a FLOPs target.
    saving: float
    drop: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.unit.to_dict(), "alpha": self.alpha, "saving": self.saving, "drop": self.drop}


@dataclass(frozen=True)
class TuneResult:
    """A tuned policy and how it measured.

    Ratios are converted / original; latencies in seconds per forward at ``batch``.
    ``measured_ratio`` is None for a FLOPs target (nothing is timed).
    """

    policy: Policy
    plan: Plan
    objective: str
    target: float | None
    units: tuple[UnitChoice, ...]
    predicted_ratio: float
    measured_ratio: float | None
    flops_ratio: float
    original_seconds: float | None
    converted_seconds: float | None
    batch: int
    threads: int
    device: str
    measurements: int
    reused: int
    #: The trade-off curve the search chose from: (saving ratio, drop) per point.
    curve: tuple[tuple[float, float], ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective, "target": self.target, "mode": self.plan.mode,
            "predicted_ratio": self.predicted_ratio, "measured_ratio": self.measured_ratio,
            "flops_ratio": self.flops_ratio, "original_seconds": self.original_seconds,
            "converted_seconds": self.converted_seconds, "batch": self.batch, "threads": self.threads,
            "device": self.device, "measurements": self.measurements, "reused": self.reused,
            "converted_convs": len(self.plan.octave_layers), "convs": len(self.plan.layers),
            "units": [u.to_dict() for u in self.units], "notes": list(self.notes),
            "policy": self.policy.to_dict(),
        }  # fmt: skip


def _check_targets(target_latency: float | None, target_flops: float | None, alphas: Sequence[float]) -> None:
    if target_latency is not None and target_flops is not None:
        raise InputError("give one target: --target-latency or --target-flops, not both")
    for flag, value in (("--target-latency", target_latency), ("--target-flops", target_flops)):
        if value is not None and not (isinstance(value, (int, float)) and 0 < value < 1):
            raise InputError(f"{flag} must be a ratio of the original in (0, 1), got {value}")
    if not alphas or any(not 0 < a < 1 for a in alphas):
        raise InputError(f"candidate alphas must be in (0, 1), got {list(alphas)}")


def _context(model_key: str, input_shape: tuple[int, int, int], *, batch: int, threads: int, device: str,
             options: InferenceOptions) -> dict[str, Any]:  # fmt: skip
    import platform

    return {"model": model_key, "input_shape": list(input_shape), "batch": batch, "threads": threads,
            "device": device, "torch": torch.__version__, "machine": _machine(), "python": platform.python_version(),
            "inference": options.to_dict()}  # fmt: skip


def _machine() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _original_seconds(model: nn.Module, input_shape: tuple[int, int, int], cache: MeasurementCache, *, batch: int,
                      threads: int, device: str, options: InferenceOptions, rounds: int) -> float:  # fmt: skip
    cached = cache.get("original")
    if cached is not None:
        return float(cached)
    prepared = optimize_for_inference(copy.deepcopy(model).to(device), options, inplace=True)
    layout = torch.channels_last if options.channels_last else torch.contiguous_format
    x = torch.randn(batch, *input_shape, device=device).contiguous(memory_format=layout)

    def forward() -> None:
        with torch.inference_mode():
            prepared(x)

    seconds = side_by_side([forward], threads, rounds=rounds, min_round_time=0.2)[0].median
    cache.put("original", seconds)
    return seconds


class _Costs:
    """Saving of an assignment: seconds (latency table) or multiply-adds, and the drop proxy."""

    def __init__(self, space: SearchSpace, table: LatencyTable | None, stop: Callable[[], bool] | None) -> None:
        self.space = space
        self.table = table
        self.stop = stop
        self.total_macs = max(1, sum(u.macs for u in space.units))

    def saving(self, assignment: Mapping[str, float]) -> float:
        if self.stop is not None and self.stop():
            raise TuneInterrupted("stopped on request")
        decisions = self.space.decisions_for(assignment)
        return self.saving_of(decisions)

    def saving_of(self, decisions: Sequence[LayerDecision]) -> float:
        if self.table is None:
            before, after = plan_macs(decisions)
            return float(before - after)
        return -self.table.change(decisions, self.space.forms(decisions))

    def drop(self, unit: Unit, alpha: float) -> float:
        return alpha * unit.macs / self.total_macs

    def options(self, alphas: Sequence[float], progress: Progress | None) -> dict[str, list[Option]]:
        out: dict[str, list[Option]] = {}
        total = len(self.space.units) * len(alphas)
        for index, unit in enumerate(self.space.units):
            out[unit.name] = [Option(0.0, 0.0, 0.0)]
            for j, alpha in enumerate(alphas):
                out[unit.name].append(Option(alpha, self.saving({unit.name: alpha}), self.drop(unit, alpha)))
                if progress is not None:
                    progress("measuring units", index * len(alphas) + j + 1, total)
        return out


def tune(
    model: nn.Module,
    *,
    policy: Policy | None = None,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    mode: str = "auto",
    target_latency: float | None = None,
    target_flops: float | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    batch: int = 8,
    threads: int | None = None,
    device: str = "cpu",
    options: InferenceOptions | None = None,
    rounds: int = 5,
    tolerance: float = 0.02,
    cache: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    model_key: str = "",
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
) -> TuneResult:
    """Choose an alpha per unit of ``model``'s convs by what it measures on this machine.

    Args:
        model: The model to tune (not modified).
        policy: Which convs may convert (its guards, skips, ``channel_multiple``); the tuner
            sets their alphas. ``Policy()`` by default.
        input_shape: ``(C, H, W)`` of one sample.
        mode: As for :func:`octswap.convert`.
        target_latency: Latency ratio to reach (converted / original, in (0, 1)), with the
            least change; None (and no ``target_flops``): the fastest policy, never slower
            than the original.
        target_flops: FLOPs ratio to reach instead; nothing is timed.
        alphas: Candidate alphas per unit besides 0.
        batch, threads, device, options: What to time with (as ``octswap bench``).
        rounds: Alternating rounds per measurement.
        tolerance: How far the measured latency ratio may sit from ``target_latency``.
        cache: JSON file the measurements go to as they are made (None: memory only).
        resume: Reuse the measurements ``cache`` holds (made in the same setting).
        force: Start ``cache`` over if it exists.
        model_key: What the measurements are of (recorded in ``cache``; a model name).
        progress: Called as ``progress(stage, done, total)``.
        stop: Polled between measurements; when true the tuner saves and raises
            :class:`TuneInterrupted`.

    Returns:
        The policy (which :func:`octswap.convert` takes unchanged), its plan and figures.

    Raises:
        InputError: bad targets or alphas; no conv converts; a target no policy reaches
            (the message gives the closest); ``cache`` from another setting.
        OutputExistsError: ``cache`` exists without ``resume`` or ``force``.
        TuneInterrupted: ``stop`` asked to stop.

    Example:
        >>> result = tune(torchvision.models.resnet50(), target_latency=0.65, batch=8, threads=2)  # doctest: +SKIP
        >>> converted, plan = octswap.convert(model, result.policy)                               # doctest: +SKIP
    """
    _check_targets(target_latency, target_flops, alphas)
    threads = threads or torch.get_num_threads()
    options = options if options is not None else InferenceOptions()
    policy = policy if policy is not None else Policy()
    space = SearchSpace(model, policy=policy, input_shape=input_shape, mode=mode)
    if not space.units:
        raise InputError("no conv of this model converts under the policy: nothing to tune")
    context = _context(model_key, input_shape, batch=batch, threads=threads, device=device, options=options)
    store = MeasurementCache(cache, context, resume=resume, force=force)
    tick: Callable[[int], None] | None = None
    if progress is not None:
        def tick(done: int) -> None:
            progress("timing convs", done, 0)
    table = LatencyTable(store, batch=batch, threads=threads, device=device, options=options, rounds=rounds,
                         progress=tick) if target_flops is None else None  # fmt: skip
    run = _Run(model, space, table, store, stop=stop, progress=progress, rounds=rounds)
    try:
        return run.tune(target_latency=target_latency, target_flops=target_flops, alphas=alphas, tolerance=tolerance)
    except KeyboardInterrupt:
        raise TuneInterrupted("interrupted") from None
    finally:
        store.save()


class _Run:
    """One tuning run: costs, search, whole-model checks."""

    def __init__(self, model: nn.Module, space: SearchSpace, table: LatencyTable | None, store: MeasurementCache, *,
                 stop: Callable[[], bool] | None, progress: Progress | None, rounds: int) -> None:  # fmt: skip
        self.model, self.space, self.table, self.store = model, space, table, store
        self.costs = _Costs(space, table, stop)
        self.progress = progress
        self.rounds = rounds
        self.notes: list[str] = []

    def tune(self, *, target_latency: float | None, target_flops: float | None, alphas: Sequence[float],
             tolerance: float) -> TuneResult:  # fmt: skip
        from octswap.flops import count_cost

        space, table = self.space, self.table
        x = example_input(space.input_shape)
        flops_before = count_cost(self.model, x).flops
        seconds = None
        if table is not None:
            seconds = _original_seconds(self.model, space.input_shape, self.store, batch=table.batch,
                                        threads=table.threads, device=str(table.device), options=table.options,
                                        rounds=self.rounds)  # fmt: skip
        scale = seconds if seconds is not None else float(flops_before)
        self.alphas = tuple(alphas)
        options = self.costs.options(alphas, self.progress)
        target = target_latency if target_latency is not None else target_flops
        front = pareto_front(options, resolution=scale * 1e-4)
        if target is None:
            assignment = self._fastest(options, alphas)
        else:
            assignment = self._reach(front, (1 - target) * scale, scale, target, "latency" if table else "FLOPs")
        checked = self._check(assignment, options, target_latency, tolerance, front, scale)
        assignment, measured, converted, plan = checked
        predicted = 1 - self.costs.saving(assignment) / scale
        flops_ratio = count_cost(converted, x).flops / flops_before
        choices = tuple(
            UnitChoice(u, assignment.get(u.name, 0.0), *_option(options[u.name], assignment.get(u.name, 0.0)))
            for u in space.units
        )
        objective = "fastest" if target is None else "latency" if target_latency is not None else "flops"
        original_s = measured.original.median if measured is not None else None
        converted_s = measured.converted.median if measured is not None else None
        return TuneResult(
            policy=space.policy_for(assignment), plan=plan, objective=objective, target=target, units=choices,
            predicted_ratio=predicted, measured_ratio=measured.ratio if measured is not None else None,
            flops_ratio=flops_ratio, original_seconds=original_s, converted_seconds=converted_s,
            batch=table.batch if table else 0, threads=table.threads if table else 0,
            device=str(table.device) if table else "", measurements=table.measured if table else 0,
            reused=self.store.reused, curve=tuple((1 - p.saving / scale, p.drop) for p in front), notes=tuple(self.notes),
        )  # fmt: skip

    def _fastest(self, options: Mapping[str, Sequence[Option]], alphas: Sequence[float]) -> dict[str, float]:
        """Each unit's best alpha alone, then coordinate descent on the whole prediction."""
        start = {}
        for unit, choices in options.items():
            best = max(choices, key=lambda o: o.saving)
            start[unit] = best.alpha if best.saving > 0 else 0.0
        grid = {unit: (0.0, *alphas) for unit in options}
        return coordinate_descent(start, grid, lambda a: -self.costs.saving(a))

    def _reach(self, front: Sequence[Point], required: float, scale: float, target: float, what: str) -> dict[str, float]:
        """The least-drop point whose whole prediction reaches ``required`` saving."""
        need = required
        best = front[-1]
        for _ in range(6):
            point = fewest_drop_reaching(front, need)
            if point is None:
                if self.costs.saving(best.assignment) >= required:
                    return best.assignment
                most = max(self.costs.saving(best.assignment), self.costs.saving(self._everything()))
                raise InputError(f"no policy reaches a {what} ratio of {target} here; the closest is "
                                 f"{1 - most / scale:.3f} (every unit at alpha {max(self.alphas)})")  # fmt: skip
            whole = self.costs.saving(point.assignment)
            if whole >= required:
                return point.assignment
            need += required - whole  # neighbours interact: ask the separate figures for more
        return point.assignment

    def _everything(self) -> dict[str, float]:
        return {u.name: max(self.alphas) for u in self.space.units}

    def _check(self, assignment: dict[str, float], options: Mapping[str, Sequence[Option]], target: float | None,
               tolerance: float, front: Sequence[Point], scale: float) -> tuple[dict[str, float], Any, nn.Module, Plan]:
        """Convert and (with a latency table) time the policy whole; correct it where it misses."""
        if self.table is None:
            converted, plan = convert(self.model, self.space.policy_for(assignment), input_shape=self.space.input_shape,
                                      mode=self.space.mode)  # fmt: skip
            return assignment, None, converted, plan
        tried: list[tuple[float, dict[str, float], Any, nn.Module, Plan]] = []
        need = (1 - target) * scale if target is not None else 0.0
        for attempt in range(CHECKS):
            converted, plan = convert(self.model, self.space.policy_for(assignment), input_shape=self.space.input_shape,
                                      mode=self.space.mode)  # fmt: skip
            if self.progress is not None:
                self.progress("timing the tuned model", attempt + 1, CHECKS)
            measured = measure_latency(self.model, converted, self.space.input_shape, batches=(self.table.batch,),
                                       threads=self.table.threads, options=self.table.options,
                                       device=str(self.table.device), rounds=self.rounds, memory=False)[0]  # fmt: skip
            tried.append((measured.ratio, assignment, measured, converted, plan))
            if target is None:
                if measured.ratio < 1 or not any(assignment.values()):
                    break
                assignment = self._smaller(assignment, options, scale, attempt)
                continue
            error = measured.ratio - target
            if abs(error) <= tolerance:
                break
            need += error * scale
            point = fewest_drop_reaching(front, need) or front[-1]
            if point.assignment == assignment:
                break
            assignment = point.assignment
        if target is None:
            ratio, assignment, measured, converted, plan = min(tried, key=lambda t: t[0])
            if ratio >= 1:
                self.notes.append(f"no policy tried ran faster than the original (best {ratio:.3f}): nothing converted")
                return self._plain(options)
            return assignment, measured, converted, plan
        ratio, assignment, measured, converted, plan = min(tried, key=lambda t: abs(t[0] - target))
        if abs(ratio - target) > tolerance:
            self.notes.append(f"measured {ratio:.3f} against a target of {target} after {len(tried)} checks")
        return assignment, measured, converted, plan

    def _smaller(self, assignment: dict[str, float], options: Mapping[str, Sequence[Option]], scale: float,
                 attempt: int) -> dict[str, float]:  # fmt: skip
        """Fewer units: only those saving at least 1%, 2%... of the original's time on their own."""
        floor = (attempt + 1) * 0.01 * scale
        return {u: a for u, a in assignment.items() if _option(options[u], a)[0] >= floor}

    def _plain(self, options: Mapping[str, Sequence[Option]]) -> tuple[dict[str, float], Any, nn.Module, Plan]:
        assignment = {u: 0.0 for u in options}
        converted, plan = convert(self.model, self.space.policy_for(assignment), input_shape=self.space.input_shape,
                                  mode=self.space.mode)  # fmt: skip
        return assignment, None, converted, plan


def _option(choices: Sequence[Option], alpha: float) -> tuple[float, float]:
    for o in choices:
        if math.isclose(o.alpha, alpha):
            return o.saving, o.drop
    return 0.0, 0.0
