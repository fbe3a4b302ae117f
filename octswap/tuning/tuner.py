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
   corrected by the measured error and searched again (at most :data:`CHECKS` times); the
   fastest policy, where it measures slower than the original or than its prediction (by more
   than ``tolerance``), is measured again with fewer units (those that save most on their
   own), and the fastest measured kept.

A unit's "drop" is the agreement it costs on the user's data after BatchNorm
re-estimation (:mod:`octswap.tuning.accuracy`); without data, a proxy for how much of the
model changes (:mod:`octswap.tuning.objectives`). A target is reached with the least drop;
``max_drop`` gives the most saving within a drop.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from octswap.conversion import convert
from octswap.errors import InputError
from octswap.inference import InferenceOptions
from octswap.latency import LatencyResult, measure_latency, measure_onnxruntime_latency
from octswap.plan import Plan, example_input
from octswap.policy import Policy
from octswap.tuning.accuracy import AgreementTable
from octswap.tuning.cache import MeasurementCache, machine
from octswap.tuning.goal import Goal, check_goal, make_goal, runtime_policy
from octswap.tuning.costs import LatencyTable, plan_macs
from octswap.tuning.objectives import Objectives, Progress, TuneInterrupted, original_seconds
from octswap.tuning.search import (Option, Point, coordinate_descent, fewest_drop_reaching, most_saving_within,
                                   pareto_front)
from octswap.tuning.result import TuneResult, UnitChoice
from octswap.tuning.space import SearchSpace

__all__ = ["CHECKS", "DEFAULT_ALPHAS", "Goal", "TuneResult", "UnitChoice", "check_goal", "tune"]

logger = logging.getLogger(__name__)

#: Candidate alphas per unit besides 0 (issue: .125 ... .75).
DEFAULT_ALPHAS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)

#: Sweeps of coordinate descent for the fastest policy (each tries every alpha of every unit
#: with the others fixed; the whole-model check corrects what one sweep leaves).
SWEEPS = 1

#: Whole-model measurements of a latency target (each one may correct the next search).
CHECKS = 3

#: Points of the trade-off curve reported (each predicted whole).
CURVE_POINTS = 24

#: Seconds per round of a whole-model measurement (calibration and checks): rounds of one
#: forward each made a batch-8 resnet50's ratio spread +-0.04 between processes.
CHECK_ROUND_TIME = 1.0

#: Bounds of the calibration factor (:meth:`_Run.calibrate`): outside them the per-conv
#: figures are not trusted to rank anything, and the checks correct what is left.
CALIBRATION_BOUNDS = (0.5, 1.5)

#: Least predicted saving (a share of the original's time) to calibrate against: one whole
#: measurement spreads about +-0.01 of the ratio, so a smaller saving gives a factor off by
#: more than a tenth (mobilenet_v2, batch 8, 2 threads: its units' best alphas predicted to
#: save 0.059, measured 0.045, a factor of 0.75 that moved the fastest policy's prediction
#: from 0.843 to 0.882 where it measured 0.818).
CALIBRATION_MIN_SAVING = 0.1

#: How per-conv costs are measured; a cache from another version is refused, not mixed in
#: (2: ONNX Runtime convs timed without spinning and without their edge reorders; 3: with
#: the activation that follows them).
COSTS_VERSION = 3


def _setting(**values: Any) -> dict[str, Any]:
    """What the measurements depend on: a cache made in another setting is refused."""
    versions = {"torch": torch.__version__}
    if values.get("runtime") == "onnxruntime":
        import onnxruntime  # present: check_goal required it

        versions["onnxruntime"] = onnxruntime.__version__
    return {**values, **versions, "machine": machine(), "costs": COSTS_VERSION}


def _tables(model: nn.Module, space: SearchSpace, store: MeasurementCache, *, timed: bool,
            data: Iterable[Any] | None, progress: Progress | None) -> tuple[LatencyTable | None, AgreementTable | None]:
    """The latency table (unless a FLOPs target: nothing timed) and the agreement table (with data)."""
    setting = store.context
    table = None if not timed else LatencyTable(
        store, batch=setting["batch"], threads=setting["threads"], device=setting["device"],
        options=InferenceOptions.from_dict(setting["inference"]), runtime=setting["runtime"],
        activations=space.activations if setting["runtime"] == "onnxruntime" else None,
        progress=(lambda n: progress("timing convs", n, 0)) if progress else None)  # fmt: skip
    agreement = None if data is None else AgreementTable(
        model, space, data=data, cache=store, calibrate_batches=setting["calibrate_batches"],
        eval_batches=setting["eval_batches"])  # fmt: skip
    return table, agreement


def tune(
    model: nn.Module,
    *,
    policy: Policy | None = None,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    mode: str = "auto",
    target_latency: float | None = None,
    target_flops: float | None = None,
    max_drop: float | None = None,
    data: Iterable[Any] | None = None,
    calibrate_batches: int = 10,
    eval_batches: int | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    batch: int = 8,
    threads: int | None = None,
    device: str = "cpu",
    runtime: str = "pytorch",
    options: InferenceOptions | None = None,
    rounds: int = 5,
    round_time: float = CHECK_ROUND_TIME,
    tolerance: float = 0.02,
    cache: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    model_key: str = "",
    data_key: str = "",
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
) -> TuneResult:
    """Choose an alpha per unit of ``model``'s convs by what it measures on this machine.

    Args:
        model: The model to tune (trained, with data; not modified).
        policy: Which convs may convert (guards, skips, ``channel_multiple``); ``Policy()`` by default.
        input_shape, mode: As for :func:`octswap.convert`.
        target_latency: Latency ratio (converted / original, in (0, 1)) to reach with the least
            drop. No target nor ``max_drop``: the fastest policy, never slower than the original.
        target_flops: FLOPs ratio to reach instead; nothing is timed.
        max_drop: With ``data``: the fastest policy losing at most this many points of agreement.
        data: ``(inputs, labels)`` batches of a classifier's inputs: each unit's drop is measured
            on them (agreement after BatchNorm re-estimation on ``calibrate_batches`` batches,
            over ``eval_batches``). Without data the drop is a proxy.
        alphas: Candidate alphas per unit besides 0.
        batch, threads, device, options: What to time with (as ``octswap bench``).
        runtime: ``"pytorch"``, or ``"onnxruntime"``: exported convs and models timed in
            ONNX Runtime sessions (``octswap[export]``; ``options`` unused).
        rounds, round_time, tolerance: Rounds per whole-model measurement, seconds each (at
            least), and how far from ``target_latency`` the measured ratio may land.
        cache: JSON file the measurements go to as they are made (None: memory only);
            ``resume`` reuses what it holds (same setting), ``force`` starts it over.
        model_key, data_key: What the measurements are of (recorded in ``cache``).
        progress, stop: ``progress(stage, done, total)``; ``stop()`` polled between
            measurements (true: save and raise :class:`TuneInterrupted`).

    Returns:
        The policy (:func:`octswap.convert` takes it unchanged), its plan and figures.

    Raises:
        InputError: bad targets, alphas or device; no conv converts; a target no policy reaches
            (the message gives the closest); ``cache`` from another setting; not a classifier.
        OutputExistsError: ``cache`` exists without ``resume`` or ``force``.
        MissingExtraError: ``runtime="onnxruntime"`` without ``octswap[export]``.
        TuneInterrupted: ``stop`` asked to stop.

    Example:
        >>> result = tune(torchvision.models.resnet50(), target_latency=0.65, batch=8, threads=2)  # doctest: +SKIP
    """
    check_goal(target_latency, target_flops, max_drop, alphas, data, device, runtime)
    threads, options = threads or torch.get_num_threads(), options if options is not None else InferenceOptions()
    policy, notes = runtime_policy(policy if policy is not None else Policy(), runtime, device)
    space = SearchSpace(model, policy=policy, input_shape=input_shape, mode=mode)
    if not space.units:
        raise InputError("no conv of this model converts under the policy: nothing to tune")
    store = MeasurementCache(cache, _setting(model=model_key, input_shape=list(input_shape), batch=batch, threads=threads,
        device=device, runtime=runtime, inference=options.to_dict(), data=data_key, calibrate_batches=calibrate_batches,
        eval_batches=eval_batches), resume=resume, force=force)  # fmt: skip
    table, agreement = _tables(model, space, store, timed=target_flops is None, data=data, progress=progress)
    run = _Run(model, space, Objectives(space, table, agreement, stop), store, progress=progress, rounds=rounds,
               round_time=round_time, notes=notes)  # fmt: skip
    return _tune_and_save(run, make_goal(target_latency, target_flops, max_drop, tolerance), alphas)


def _tune_and_save(run: _Run, goal: Goal, alphas: Sequence[float]) -> TuneResult:
    """The run; whatever ends it, the measurements are saved and exported files removed."""
    try:
        return run.tune(goal, alphas)
    except KeyboardInterrupt:
        raise TuneInterrupted("interrupted") from None
    finally:
        run.store.save()
        if run.table is not None and run.table.onnx is not None:
            run.table.onnx.close()


@dataclass
class _Tried:
    assignment: dict[str, float]
    converted: nn.Module
    plan: Plan
    latency: LatencyResult | None = None
    agreement: float | None = None

    @property
    def ratio(self) -> float:
        return self.latency.ratio if self.latency is not None else math.nan


class _Run:
    """One tuning run: costs, search, whole-model checks."""

    def __init__(self, model: nn.Module, space: SearchSpace, objectives: Objectives, store: MeasurementCache, *,
                 progress: Progress | None, rounds: int, round_time: float = CHECK_ROUND_TIME,
                 notes: Sequence[str] = ()) -> None:  # fmt: skip
        self.model, self.space, self.objectives, self.store = model, space, objectives, store
        self.table = objectives.table
        self.progress = progress
        self.rounds = rounds
        self.round_time = round_time
        self.calibrations = 0
        self.notes: list[str] = list(notes)

    def tune(self, goal: Goal, alphas: Sequence[float]) -> TuneResult:
        space, table = self.space, self.table
        flops_before = _flops(self.model, space.input_shape)
        self.whole_flops = flops_before is not None
        if flops_before is None:
            flops_before = plan_macs(space.decisions_for({}))[0]
            self.notes.append("FLOPs are the convs' multiply-adds: fvcore cannot trace this model whole")
        scale = float(flops_before)
        if table is not None:
            scale = original_seconds(self.model, space, self.store, table, rounds=self.rounds)
        self.alphas, self.scale = tuple(alphas), scale
        options = self.objectives.options(alphas, self.progress)
        if table is not None:
            options = self.calibrate(options)
        front = pareto_front(options, resolution=scale * 1e-4)
        if goal.objective == "fastest":
            assignment = self._fastest(options)
        elif goal.objective == "max-drop":
            assignment = most_saving_within(front, goal.target).assignment
        else:
            assignment = self._reach(front, (1 - goal.target) * scale, goal, options)
        tried = self._check(assignment, options, goal, front)
        choices = tuple(UnitChoice(u, tried.assignment.get(u.name, 0.0), *_option(options[u.name], tried.assignment.get(u.name, 0.0)))
                        for u in space.units)  # fmt: skip
        latency = tried.latency
        curve, uniform = self._curve(front), self._uniform(options)  # may time forms not timed yet: count them
        return TuneResult(
            policy=space.policy_for(tried.assignment), plan=tried.plan, objective=goal.objective, target=goal.target,
            units=choices, predicted_ratio=1 - self.objectives.saving(tried.assignment) / scale,
            measured_ratio=latency.ratio if latency else None,
            flops_ratio=self._flops_ratio(tried, flops_before),
            original_seconds=latency.original.median if latency else None,
            converted_seconds=latency.converted.median if latency else None,
            batch=table.batch if table else 0, threads=table.threads if table else 0,
            device=str(table.device) if table else "",
            measurements=(table.measured if table else 0) + self.calibrations
            + (self.objectives.agreement.measured if self.objectives.agreement else 0),
            reused=self.store.reused, agreement=tried.agreement,
            drop_kind="agreement points" if self.objectives.agreement else "proxy",
            curve=curve, uniform=uniform, notes=tuple(self.notes),
            runtime=table.runtime if table else "pytorch",
        )  # fmt: skip

    def calibrate(self, options: dict[str, list[Option]]) -> dict[str, list[Option]]:
        """Scale the per-conv predictions by one whole-model measurement.

        The policy measured is each unit at the alpha that saves most on its own (the start
        of the fastest search): the largest predicted saving, so the ratio of measured to
        predicted saving is well conditioned. Every saving is then multiplied by it (bounded
        by :data:`CALIBRATION_BOUNDS`): what the per-conv figures miss (the elementwise work
        between convs, a runtime's fusions and layout changes) scales, to first order, with
        the convs' change. The measurement is cached like the others.
        """
        reference = _best_alone(options)
        predicted = self.objectives.saving(reference) if reference else 0.0
        if predicted < CALIBRATION_MIN_SAVING * self.scale:
            return options  # too little predicted saving to calibrate against
        key = "calibration|" + json.dumps(sorted(reference.items()))
        measured = self.store.get(key)
        if measured is None:
            measured = self._measure(reference, 0, stage="calibrating on the whole model", agreement=False).ratio
            self.store.put(key, measured)
            self.calibrations += 1
        low, high = CALIBRATION_BOUNDS
        factor = min(max((1 - float(measured)) * self.scale / predicted, low), high)
        self.objectives.factor = factor
        self.notes.append(f"per-conv predictions scaled by {factor:.2f}: the units' best alphas were predicted at "
                          f"{1 - predicted / self.scale:.3f} and measured whole at {measured:.3f}")  # fmt: skip
        return {u: [replace(o, saving=o.saving * factor) for o in choices] for u, choices in options.items()}

    def _whole_ratio(self, assignment: Mapping[str, float]) -> float:
        return 1 - self.objectives.saving(assignment) / self.scale

    def _curve(self, front: Sequence[Point]) -> tuple[tuple[float, float], ...]:
        """Up to :data:`CURVE_POINTS` points of the search's trade-off curve, spread along it (ends
        kept), each predicted whole like the chosen policy; the drop is the units' drops added."""
        step = max(1, math.ceil(len(front) / CURVE_POINTS))
        picked = [*front[::step][: CURVE_POINTS - 1], *front[-1:]] if front else []
        rows = sorted({(self._whole_ratio(p.assignment), p.drop) for p in picked})
        # Predicted whole, a point can lose to a neighbour (units interact) or repeat one: keep
        # only rows that lose less than every faster row, one per printed value.
        kept: list[tuple[float, float]] = []
        for ratio, drop in rows:
            if all(drop < d and f"{ratio:.3f}" != f"{r:.3f}" for r, d in kept):
                kept.append((ratio, drop))
        return tuple(kept)

    def _uniform(self, options: Mapping[str, Sequence[Option]]) -> tuple[tuple[float, float, float], ...]:
        """Every unit at each candidate alpha, predicted whole; the drop is the units' drops added."""
        points = []
        for alpha in self.alphas:
            drop = sum(_option(choices, alpha)[1] for choices in options.values())
            points.append((alpha, self._whole_ratio({unit: alpha for unit in options}), drop))
        return tuple(points)

    def _flops_ratio(self, tried: _Tried, flops_before: int) -> float:
        """Whole-model FLOPs ratio (fvcore), or the convs' where fvcore cannot count the model."""
        after = _flops(tried.converted, self.space.input_shape) if self.whole_flops else None
        if after is None:
            before, after = plan_macs(tried.plan.layers)
            return after / before
        return after / flops_before

    def _fastest(self, options: Mapping[str, Sequence[Option]]) -> dict[str, float]:
        """Each unit's best alpha alone, then coordinate descent on the whole prediction."""
        start = {unit: 0.0 for unit in options} | _best_alone(options)
        grid = {unit: (0.0, *self.alphas) for unit in options}
        return coordinate_descent(start, grid, lambda a: -self.objectives.saving(a), sweeps=SWEEPS)

    def _reach(self, front: Sequence[Point], required: float, goal: Goal,
               options: Mapping[str, Sequence[Option]]) -> dict[str, float]:  # fmt: skip
        """The least-drop point whose whole prediction reaches ``required`` saving."""
        need = required
        for _ in range(6):
            point = fewest_drop_reaching(front, need)
            if point is None:
                break
            whole = self.objectives.saving(point.assignment)
            if whole >= required:
                return point.assignment
            need += required - whole  # neighbours interact: ask the separate figures for more
        # The separate figures overshot or undershot: every point of the curve predicted whole.
        reaching = [p for p in front if self.objectives.saving(p.assignment) >= required]
        if reaching:
            return min(reaching, key=lambda p: p.drop).assignment
        closest = max((front[-1].assignment, self._everything(), self._fastest(options)),
                      key=self.objectives.saving)  # fmt: skip
        ratio = self._whole_ratio(closest)
        if ratio <= goal.target + goal.tolerance:  # near enough: the check decides
            self.notes.append(f"no policy is predicted to reach {goal.target}; the closest ({ratio:.3f}) was checked")
            return closest
        what = "latency" if self.table is not None else "FLOPs"
        raise InputError(f"no policy reaches a {what} ratio of {goal.target} here; the closest found is predicted at "
                         f"{ratio:.3f}")  # fmt: skip

    def _everything(self) -> dict[str, float]:
        return {u.name: max(self.alphas) for u in self.space.units}

    def _convert(self, assignment: dict[str, float]) -> _Tried:
        converted, plan = convert(self.model, self.space.policy_for(assignment), input_shape=self.space.input_shape,
                                  mode=self.space.mode)  # fmt: skip
        return _Tried(assignment, converted, plan)

    def _unchanged(self, best: _Tried | None) -> _Tried:
        """Nothing converted: the original, not timed again (its ratio is 1 by definition; a
        measurement would report noise around it: the original's timing in ``best`` stands for
        both, where there is one), its agreement with itself 1."""
        tried = self._convert({u.name: 0.0 for u in self.space.units})
        if best is not None and best.latency is not None:
            tried.latency = replace(best.latency, converted=best.latency.original)
        tried.agreement = 1.0 if self.objectives.agreement is not None else None
        return tried

    def _measure(self, assignment: dict[str, float], attempt: int, *, stage: str = "checking the tuned model whole",
                 agreement: bool = True) -> _Tried:  # fmt: skip
        """Convert with ``assignment``; time it whole against the original (with a latency
        table) and measure its agreement after BatchNorm re-estimation (with data)."""
        tried = self._convert(assignment)
        if self.progress is not None:
            self.progress(stage, attempt + 1, CHECKS if agreement else 1)
        table, shape = self.table, self.space.input_shape
        if table is not None and table.onnx is not None:
            tried.latency = measure_onnxruntime_latency(self.model, tried.converted, shape, batches=(table.batch,),
                                                        threads=table.threads, device=str(table.device),
                                                        rounds=self.rounds, min_round_time=self.round_time)[0]  # fmt: skip
        elif table is not None:
            tried.latency = measure_latency(self.model, tried.converted, shape, batches=(table.batch,), threads=table.threads,
                                            options=table.options, device=str(table.device), rounds=self.rounds,
                                            min_round_time=self.round_time, memory=False)[0]  # fmt: skip
        if agreement and self.objectives.agreement is not None:
            tried.agreement = self.objectives.agreement.fidelity(assignment, tried.converted).agreement
        return tried

    def _check(self, assignment: dict[str, float], options: Mapping[str, Sequence[Option]], goal: Goal,
               front: Sequence[Point]) -> _Tried:  # fmt: skip
        """Measure the policy whole; correct it where it misses its goal (at most :data:`CHECKS` times)."""
        if goal.objective == "fastest" and not any(assignment.values()):
            self.notes.append("no unit is predicted to run faster converted: nothing converted")
            return self._unchanged(None)
        tried: list[_Tried] = []
        need = (1 - goal.target) * self.scale if goal.objective == "latency" else 0.0
        budget = goal.target if goal.objective == "max-drop" else 0.0
        for attempt in range(CHECKS):
            t = self._measure(assignment, attempt)
            tried.append(t)
            if goal.objective == "flops" or self.table is None and goal.objective != "max-drop":
                break
            if goal.objective == "fastest":
                # Faster than the original and as fast as predicted (or no unit left): done.
                # Else the units' figures missed what they do together: try fewer units.
                smaller = self._smaller(assignment, options, attempt)
                if t.ratio < min(1.0, self._whole_ratio(assignment) + goal.tolerance) or not any(smaller.values()):
                    break  # (an unconverted model is not timed: its ratio would be noise around 1)
                assignment = smaller
            elif goal.objective == "max-drop":
                lost = 100 * (1 - (t.agreement or 0.0))
                if lost <= goal.target:
                    break
                budget -= lost - goal.target  # units' drops add up to less than the whole's: ask for less
                assignment = most_saving_within(front, max(budget, 0.0)).assignment
            else:
                error = t.ratio - goal.target
                if abs(error) <= goal.tolerance:
                    break
                need += error * self.scale
                assignment = (fewest_drop_reaching(front, need) or front[-1]).assignment
            if any(assignment == t.assignment for t in tried):
                break
        return self._best(tried, goal, options)

    def _best(self, tried: list[_Tried], goal: Goal, options: Mapping[str, Sequence[Option]]) -> _Tried:
        if goal.objective == "flops":
            return tried[-1]
        if goal.objective == "fastest":
            best = min(tried, key=lambda t: t.ratio)
            if len(tried) > 1 and best.ratio < 1:
                self.notes.append(f"the fastest prediction ({self._whole_ratio(tried[0].assignment):.3f}) measured "
                                  f"{tried[0].ratio:.3f}; of {len(tried)} policies checked, the fastest measured "
                                  f"{best.ratio:.3f}")  # fmt: skip
            if best.ratio >= 1:
                self.notes.append(f"no policy tried ran faster than the original (best {best.ratio:.3f}): nothing converted")
                return self._unchanged(best)
            return best
        if goal.objective == "max-drop":
            within = [t for t in tried if 100 * (1 - (t.agreement or 0.0)) <= goal.target]
            if not within:
                self.notes.append(f"no policy tried lost at most {goal.target} points of agreement: nothing converted")
                return self._unchanged(tried[0])
            return min(within, key=lambda t: t.ratio if self.table is not None else 0.0)
        best = min(tried, key=lambda t: abs(t.ratio - goal.target))
        if abs(best.ratio - goal.target) > goal.tolerance:
            self.notes.append(f"measured {best.ratio:.3f} against a target of {goal.target} after {len(tried)} checks")
        return best

    def _smaller(self, assignment: dict[str, float], options: Mapping[str, Sequence[Option]], attempt: int) -> dict[str, float]:
        """Fewer units: only those saving at least 1%, 2%... of the original's time on their own."""
        floor = (attempt + 1) * 0.01 * self.scale
        return {u: a for u, a in assignment.items() if _option(options[u], a)[0] >= floor}


def _flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int | None:
    from octswap.flops import count_cost

    try:
        return count_cost(model, example_input(input_shape)).flops
    except Exception:  # noqa: BLE001 - fvcore's jit trace cannot follow every detector
        logger.info("fvcore cannot count this model's FLOPs whole; using its convs' multiply-adds")
        return None


def _best_alone(options: Mapping[str, Sequence[Option]]) -> dict[str, float]:
    """Each unit that saves on its own, at the alpha that saves most."""
    best = {unit: max(choices, key=lambda o: o.saving) for unit, choices in options.items()}
    return {unit: o.alpha for unit, o in best.items() if o.saving > 0}


def _option(choices: Sequence[Option], alpha: float) -> tuple[float, float]:
    for o in choices:
        if math.isclose(o.alpha, alpha):
            return o.saving, o.drop
    return 0.0, 0.0
