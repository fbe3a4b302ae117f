"""Cost report: FLOPs and parameters of an original vs a converted model.

Per converted or kept conv, per top-level stage, the conv+linear subtotal (what
torchvision publishes as GFLOPS) and the total, each absolute and as a change.
Renders to plain data (JSON), Markdown and CSV; the CLI renders rich tables.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from octswap.fidelity import Fidelity
from octswap.flops import CONVENTION, Cost, count_cost
from octswap.memory import ActivationMemory, measure_activations
from octswap.plan import Plan, example_input
from octswap.stages import stage_names
from octswap.tables import csv_text, markdown_table

__all__ = ["Report", "Row", "make_report"]


@dataclass(frozen=True)
class Row:
    """One line of the report: a conv, a stage, or a total."""

    name: str
    kind: str  # "layer", "stage", "core" or "total"
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    note: str = ""

    @property
    def flops_change(self) -> float:
        """Relative FLOP change, e.g. -0.25 for a quarter fewer."""
        return (self.flops_after - self.flops_before) / self.flops_before if self.flops_before else 0.0

    @property
    def params_change(self) -> float:
        return (self.params_after - self.params_before) / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flops_change"] = round(self.flops_change, 6)
        data["params_change"] = round(self.params_change, 6)
        return data


@dataclass(frozen=True)
class Report:
    """Original vs converted cost of one model. Build it with :func:`make_report`."""

    model: str
    mode: str
    input_shape: tuple[int, int, int]
    convention: str
    total: Row
    core: Row
    stages: tuple[Row, ...]
    layers: tuple[Row, ...]
    converted: int
    kept: int
    uncounted: dict[str, int] = field(default_factory=dict)
    #: Activation memory of one forward pass (see :mod:`octswap.memory`), if measured.
    activations_before: ActivationMemory | None = None
    activations_after: ActivationMemory | None = None
    #: Converted vs original on real data (``--data``), if measured.
    fidelity: Fidelity | None = None
    #: Mode ``regions``: the plan's graph-mode regions (:attr:`octswap.plan.Plan.regions`).
    regions: tuple[dict[str, Any], ...] = ()

    def summary(self) -> dict[str, Any]:
        """The headline figures (stored in checkpoints)."""
        return {
            "model": self.model,
            "mode": self.mode,
            "input_shape": list(self.input_shape),
            "convention": self.convention,
            "flops_before": self.total.flops_before,
            "flops_after": self.total.flops_after,
            "flops_change": round(self.total.flops_change, 6),
            "core_flops_before": self.core.flops_before,
            "core_flops_after": self.core.flops_after,
            "params_before": self.total.params_before,
            "params_after": self.total.params_after,
            "convs_converted": self.converted,
            "convs_kept": self.kept,
            **self._memory_fields(),
            **({"fidelity": self.fidelity.to_dict()} if self.fidelity is not None else {}),
        }

    def _memory_fields(self) -> dict[str, int]:
        if self.activations_before is None or self.activations_after is None:
            return {}
        return {
            "peak_activation_bytes_before": self.activations_before.peak,
            "peak_activation_bytes_after": self.activations_after.peak,
            "activation_bytes_written_before": self.activations_before.total,
            "activation_bytes_written_after": self.activations_after.total,
        }

    def memory_line(self) -> str:
        """One sentence on activation memory, or '' when it was not measured."""
        b, a = self.activations_before, self.activations_after
        if b is None or a is None:
            return ""
        return (
            f"Activation memory: peak {b.peak / 2**20:.1f} MiB -> {a.peak / 2**20:.1f} MiB ({a.peak / b.peak:.2f}x); "
            f"written {b.total / 2**20:.1f} MiB -> {a.total / 2**20:.1f} MiB ({a.total / b.total:.2f}x)."
        )

    def regions_line(self) -> str:
        """One sentence naming the graph-mode regions and their octave convs, or '' outside mode ``regions``
        (``octswap plan`` shows why each region's parent did not trace)."""
        if not self.regions:
            return ""
        named = ", ".join(f"{r['path'] or '(whole model)'} ({r['convs']} octave convs)" for r in self.regions)
        return f"Graph-mode regions (pairs flow inside, merged at their outputs): {named}."

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "regions": [dict(r) for r in self.regions],
            "total": self.total.to_dict(),
            "core": self.core.to_dict(),
            "stages": [r.to_dict() for r in self.stages],
            "layers": [r.to_dict() for r in self.layers],
            "uncounted_ops": dict(self.uncounted),
            "fidelity": None if self.fidelity is None else self.fidelity.to_dict(),
        }

    def rows(self, *, layers: bool = True) -> list[Row]:
        """All rows in display order: layers, stages, conv+linear, total."""
        return [*(self.layers if layers else ()), *self.stages, self.core, self.total]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self, *, layers: bool = True) -> str:
        columns = ["kind", "name", "flops_before", "flops_after", "flops_change", "params_before",
                   "params_after", "params_change", "note"]  # fmt: skip
        if self.fidelity is not None:
            columns.append("value")  # fidelity rows: kind "fidelity", name the metric
        rows = [{k: v for k, v in row.to_dict().items() if k in columns} for row in self.rows(layers=layers)]
        if self.fidelity is not None:
            values = _fidelity_values(self.fidelity)
            rows += [{"kind": "fidelity", "name": metric, "value": value} for metric, value in values]
        return csv_text(columns, rows)

    def to_markdown(self, *, layers: bool = True) -> str:
        lines = [
            f"## octswap report: {self.model}",
            "",
            f"{self.converted} convs converted, {self.kept} kept; mode `{self.mode}`; "
            f"input {'x'.join(map(str, self.input_shape))}. {self.convention}.",
            "",
        ]
        headers = ["kind", "name", "FLOPs before", "FLOPs after", "change", "params before", "params after", "note"]
        cells = [
            [row.kind, row.name, human(row.flops_before), human(row.flops_after), percent(row.flops_change),
             human(row.params_before), human(row.params_after), row.note]
            for row in self.rows(layers=layers)
        ]  # fmt: skip
        lines.append(markdown_table(headers, cells, align="llrrrrrl"))
        if self.regions_line():
            lines += ["", self.regions_line()]
        if self.memory_line():
            lines += ["", self.memory_line()]
        if self.uncounted:
            ops = ", ".join(f"`{k}` x{v}" for k, v in sorted(self.uncounted.items()))
            lines += ["", f"Uncounted ops (fvcore convention): {ops}"]
        if self.fidelity is None:
            lines += ["", NOT_MEASURED + "."]
        else:
            lines += ["", f"### Fidelity on {self.fidelity.data or 'the data'}", ""]
            lines.append(markdown_table(["metric", "value"], self.fidelity.rows(), align="lr"))
        return "\n".join(lines) + "\n"


#: What reports say when no data was given.
NOT_MEASURED = "Fidelity not measured: pass --data with real samples (random inputs prove nothing for a trained model)"


def _fidelity_values(fidelity: Fidelity) -> list[tuple[str, Any]]:
    """Machine-readable ``(metric, value)`` pairs, stages as ``drift:NAME``."""
    data = fidelity.to_dict()
    pairs = [(k, v) for k, v in data.items() if k not in ("stages", "data")]
    return pairs + [(f"drift:{s['name']}", s["relative_error"]) for s in data["stages"]]


def human(value: float) -> str:
    """``4089184256`` -> ``'4.089G'``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3f}{unit}"
    return str(int(value))


def percent(change: float) -> str:
    return f"{change * 100:+.1f}%"


def make_report(
    original: nn.Module,
    converted: nn.Module,
    plan: Plan,
    *,
    model_name: str = "model",
    original_cost: Cost | None = None,
    memory: bool = True,
) -> Report:
    """Count both models with fvcore at the plan's input shape and compare them.

    Args:
        original: The unconverted model.
        converted: The model :func:`octswap.convert` returned for ``plan``.
        plan: The plan that produced ``converted``.
        model_name: Shown in the report.
        original_cost: Reuse a cost already counted for ``original``.
        memory: Also measure activation memory of both models (one forward pass each).

    Example:
        >>> converted, plan = octswap.convert(model, alpha=0.25)      # doctest: +SKIP
        >>> make_report(model, converted, plan).total.flops_change   # doctest: +SKIP
        -0.238
    """
    inputs = example_input(plan.input_shape)
    if original_cost is None:
        # A graph-mode model is an fx.GraphModule, whose functional ops (residual adds...)
        # sit at the top level; count the original traced the same way so stage rows compare.
        counted = original
        if plan.mode == "graph":
            from octswap.rewrite.graph import trace

            counted = trace(original, probe=(inputs,))
        original_cost = count_cost(counted, inputs)
    before = original_cost
    after = count_cost(converted, inputs)

    def row(name: str, kind: str, note: str = "") -> Row:
        return Row(
            name, kind,
            before.by_module.get(name, 0), after.by_module.get(name, 0),
            before.params_by_module.get(name, 0), after.params_by_module.get(name, 0),
            note,
        )  # fmt: skip

    def decision(d: Any) -> str:
        return f"octave a_in={d.alpha_in:g} a_out={d.alpha_out:g}" if d.action == "octave" else f"kept: {d.reason}"

    layers = tuple(row(d.name, "layer", decision(d)) for d in plan.layers)
    stages = tuple(row(name, "stage") for name in stage_names(original, before.by_module))
    outside = Row("(outside stages)", "stage",
                  before.flops - sum(r.flops_before for r in stages), after.flops - sum(r.flops_after for r in stages),
                  0, 0, "top-level ops: merges, splits, functional adds")  # fmt: skip
    if outside.flops_before or outside.flops_after:
        stages += (outside,)
    total = Row("total", "total", before.flops, after.flops, before.params, after.params)
    core = Row("conv+linear", "core", before.core_flops, after.core_flops, before.params, after.params,
               "as torchvision's published GFLOPS")  # fmt: skip
    uncounted = dict(before.uncounted)
    for op, n in after.uncounted.items():
        uncounted[op] = max(n, uncounted.get(op, 0))
    return Report(
        model=model_name, mode=plan.mode, input_shape=plan.input_shape, convention=CONVENTION,
        total=total, core=core, stages=stages, layers=layers,
        converted=len(plan.octave_layers), kept=len(plan.kept_layers), uncounted=uncounted, regions=plan.regions,
        activations_before=measure_activations(original, inputs) if memory else None,
        activations_after=measure_activations(converted, inputs) if memory else None,
    )  # fmt: skip
