"""The rewriters by mode: how each mode refines a plan and applies it to a model.

New modes register here, like torchvision's ``register_model``. This module imports
only :mod:`octswap.plan`, so rewriters can import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from octswap.errors import ConversionError, InputError
from octswap.plan import Plan

__all__ = ["REWRITERS", "Refine", "Rewriter", "apply_plan", "register_rewriter", "rewriter"]

Apply = Callable[[nn.Module, Plan], nn.Module]
#: ``(model, the policy's plan) -> the mode's plan`` (decisions, boundaries, regions).
Refine = Callable[[nn.Module, Plan], Plan]


@dataclass(frozen=True)
class Rewriter:
    """A conversion mode: ``apply`` swaps modules in place and returns the model;
    ``refine`` (optional) turns the policy's per-conv decisions into the mode's own."""

    mode: str
    apply: Apply
    refine: Refine | None = None


REWRITERS: dict[str, Rewriter] = {}


def register_rewriter(mode: str, *, refine: Refine | None = None) -> Callable[[Apply], Apply]:
    """Register an apply function under ``mode`` (decorator), with its plan refinement."""

    def wrap(fn: Apply) -> Apply:
        REWRITERS[mode] = Rewriter(mode, fn, refine)
        return fn

    return wrap


def rewriter(mode: str) -> Rewriter:
    """The rewriter for ``mode``.

    Raises:
        InputError: no such mode.
    """
    try:
        return REWRITERS[mode]
    except KeyError:
        raise InputError(f"unknown conversion mode {mode!r} (known: {', '.join(sorted(REWRITERS))})") from None


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Apply ``plan`` to ``model`` in place with the rewriter for ``plan.mode``.

    Raises:
        ConversionError: the plan names a mode no rewriter handles.
    """
    if plan.mode not in REWRITERS:
        raise ConversionError(f"unknown conversion mode {plan.mode!r} (known: {', '.join(sorted(REWRITERS))})")
    return REWRITERS[plan.mode].apply(model, plan)
