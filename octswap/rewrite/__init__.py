"""Rewriters: apply a :class:`~octswap.plan.Plan` to a model, one mode per module.

Each rewriter takes the (already copied) model and the plan, swaps modules in
place and returns the model. New modes register here, like torchvision's
``register_model``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from octswap.errors import ConversionError
from octswap.plan import Plan

__all__ = ["REWRITERS", "apply_plan", "register_rewriter"]

Rewriter = Callable[[nn.Module, Plan], nn.Module]
REWRITERS: dict[str, Rewriter] = {}


def register_rewriter(mode: str) -> Callable[[Rewriter], Rewriter]:
    """Register a rewrite function under ``mode`` (decorator)."""

    def wrap(fn: Rewriter) -> Rewriter:
        REWRITERS[mode] = fn
        return fn

    return wrap


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Apply ``plan`` to ``model`` in place with the rewriter for ``plan.mode``."""
    try:
        rewriter = REWRITERS[plan.mode]
    except KeyError:
        raise ConversionError(f"unknown conversion mode {plan.mode!r} (known: {', '.join(sorted(REWRITERS))})") from None
    return rewriter(model, plan)


# Imported for their registrations.
from octswap.rewrite import graph, layer  # noqa: E402,F401
