"""The search: one alpha per unit, trading a saving (seconds or multiply-adds) against a drop.

Each unit offers options (alpha, saving, drop) measured with only that unit converted.
Choosing one option per unit so that the savings reach a target with the least total
drop, or the most saving within a drop budget, is a multiple-choice knapsack problem
(Sinha and Zoltners, 1979); :func:`pareto_front` solves it exactly by dynamic programming
over units, keeping every non-dominated (saving, drop) point, which is also the
trade-off curve. Savings measured one unit at a time add up only approximately (convs
of neighbouring units read each other's splits); the tuner re-predicts the chosen
policy whole and corrects its target (:mod:`octswap.tuning.tuner`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

__all__ = ["Option", "Point", "coordinate_descent", "fewest_drop_reaching", "most_saving_within", "pareto_front"]


@dataclass(frozen=True)
class Option:
    """One alpha for one unit: what it saves (seconds or multiply-adds; negative: costs) and
    what it loses (agreement points, or a proxy), each with only this unit converted."""

    alpha: float
    saving: float
    drop: float = 0.0


# A persistent list of choices: (unit, alpha, rest).
_Chain = Optional[tuple[str, float, "_Chain"]]


@dataclass(frozen=True)
class Point:
    """One policy on the trade-off curve: its total saving and drop, and the alpha per unit."""

    saving: float
    drop: float
    chain: _Chain

    @property
    def assignment(self) -> dict[str, float]:
        out: dict[str, float] = {}
        chain = self.chain
        while chain is not None:
            unit, alpha, chain = chain
            out[unit] = alpha
        return out


def pareto_front(options: Mapping[str, Sequence[Option]], *, resolution: float = 0.0) -> list[Point]:
    """Every policy not beaten on both saving and drop by another, by increasing saving.

    Args:
        options: Per unit, its options (one of them is normally alpha 0: saving 0, drop 0).
        resolution: Savings closer than this count as equal (the point with less drop
            stays): bounds the front's size on big models; 0 keeps it exact.

    Raises:
        ValueError: a unit without options.

    Example:
        >>> front = pareto_front({"a": [Option(0, 0), Option(.5, 2, 1)], "b": [Option(0, 0), Option(.5, 1, 3)]})
        >>> [(p.saving, p.drop) for p in front]
        [(0.0, 0.0), (2.0, 1.0), (3.0, 4.0)]
    """
    front = [Point(0.0, 0.0, None)]
    for unit, choices in options.items():
        if not choices:
            raise ValueError(f"unit {unit} has no options")
        grown = [Point(p.saving + o.saving, p.drop + o.drop, (unit, o.alpha, p.chain)) for p in front for o in choices]
        front = _non_dominated(grown, resolution)
    return front


def _non_dominated(points: list[Point], resolution: float) -> list[Point]:
    points.sort(key=lambda p: (-p.saving, p.drop))
    kept: list[Point] = []
    for p in points:  # by decreasing saving: keep a point only if it drops less than all kept
        if kept and p.drop >= kept[-1].drop:
            continue
        if kept and resolution > 0 and kept[-1].saving - p.saving < resolution:
            kept[-1] = p  # as much saving (within the resolution) for less drop
            continue
        kept.append(p)
    kept.reverse()
    return kept


def fewest_drop_reaching(front: Sequence[Point], saving: float) -> Point | None:
    """The point with the least drop whose saving is at least ``saving`` (None: none reaches it)."""
    reaching = [p for p in front if p.saving >= saving]
    return min(reaching, key=lambda p: (p.drop, -p.saving)) if reaching else None


def most_saving_within(front: Sequence[Point], drop: float) -> Point:
    """The point with the most saving whose drop is at most ``drop`` (the no-change point
    at worst, which drops nothing)."""
    within = [p for p in front if p.drop <= drop]
    return max(within, key=lambda p: (p.saving, -p.drop))


def coordinate_descent(assignment: Mapping[str, float], alphas: Mapping[str, Sequence[float]],
                       cost: Callable[[Mapping[str, float]], float], *, sweeps: int = 3) -> dict[str, float]:  # fmt: skip
    """Lower ``cost`` one unit at a time: each unit takes the alpha that minimises the whole
    cost with the others fixed, in sweeps until nothing changes (or ``sweeps`` are done).
    Sees what the separate options miss: units whose convs read each other's splits."""
    current = dict(assignment)
    best = cost(current)
    for _ in range(sweeps):
        changed = False
        for unit, choices in alphas.items():
            for alpha in choices:
                if alpha == current.get(unit, 0.0):
                    continue
                trial = {**current, unit: alpha}
                value = cost(trial)
                if value < best - 1e-12:
                    best, current, changed = value, trial, True
        if not changed:
            break
    return current
