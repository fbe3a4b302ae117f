"""What a tuning run chose, and how it measured: :class:`TuneResult`, one :class:`UnitChoice` per unit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from octswap.plan import Plan
from octswap.policy import Policy
from octswap.tuning.space import Unit

__all__ = ["TuneResult", "UnitChoice"]


@dataclass(frozen=True)
class UnitChoice:
    """What the tuner chose for one unit, with the figures it chose by."""

    unit: Unit
    alpha: float
    #: Seconds per forward saved with only this unit converted (predicted), or multiply-adds
    #: per image for a FLOPs target.
    saving: float
    #: Points of agreement lost with only this unit converted (with data), else the proxy.
    drop: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.unit.to_dict(), "alpha": self.alpha, "saving": self.saving, "drop": self.drop}


@dataclass(frozen=True)
class TuneResult:
    """A tuned policy and how it measured.

    Ratios are converted / original; latencies in seconds per forward at ``batch``.
    ``measured_ratio`` is None for a FLOPs target (nothing is timed); ``agreement`` (top-1
    agreement with the original after BatchNorm re-estimation, whole policy) only with data.
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
    agreement: float | None = None
    #: What ``drop`` means: ``"agreement points"`` (with data) or ``"proxy"``.
    drop_kind: str = "proxy"
    #: The trade-off curve the search chose from, up to :data:`CURVE_POINTS` points along it:
    #: (ratio predicted whole, drop) per point.
    curve: tuple[tuple[float, float], ...] = ()
    #: Every unit at one alpha, as the search sees it: (alpha, predicted ratio, drop) per candidate.
    uniform: tuple[tuple[float, float, float], ...] = ()
    #: What latency was measured in: ``"pytorch"`` or ``"onnxruntime"``.
    runtime: str = "pytorch"
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> list[str]:
        """What was measured, a line each (``octswap tune`` prints them; the policy file has
        them as comments)."""
        if self.measured_ratio is not None:
            runtime = "ONNX Runtime" if self.runtime == "onnxruntime" else f"torch {torch.__version__}"
            threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
            lines = [f"latency ratio {self.measured_ratio:.3f} measured (predicted {self.predicted_ratio:.3f}), batch "
                     f"{self.batch}, {threads}, {self.device}, {runtime}; FLOPs ratio "
                     f"{self.flops_ratio:.3f}"]  # fmt: skip
        elif self.objective != "flops" and self.batch:  # a latency objective that converted nothing
            lines = ["latency ratio 1 (nothing converted: the original, not timed against itself); FLOPs ratio "
                     f"{self.flops_ratio:.3f}"]  # fmt: skip
        else:
            lines = [f"FLOPs ratio {self.flops_ratio:.3f} (predicted {self.predicted_ratio:.3f}); nothing timed"]
        if self.agreement is not None:
            lines.append(f"agreement with the original {self.agreement:.2%} after BatchNorm re-estimation (whole policy)")
        return lines + [f"note: {n}" for n in self.notes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective, "target": self.target, "mode": self.plan.mode,
            "predicted_ratio": self.predicted_ratio, "measured_ratio": self.measured_ratio,
            "flops_ratio": self.flops_ratio, "agreement": self.agreement, "drop_kind": self.drop_kind,
            "original_seconds": self.original_seconds, "converted_seconds": self.converted_seconds,
            "batch": self.batch, "threads": self.threads, "device": self.device, "runtime": self.runtime,
            "measurements": self.measurements, "reused": self.reused,
            "converted_convs": len(self.plan.octave_layers), "convs": len(self.plan.layers),
            "units": [u.to_dict() for u in self.units], "notes": list(self.notes),
            "curve": [list(p) for p in self.curve],
            "uniform": [{"alpha": a, "predicted_ratio": r, "drop": d} for a, r, d in self.uniform],
            "policy": self.policy.to_dict(),
        }  # fmt: skip
