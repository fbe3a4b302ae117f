"""Rewriters: apply a :class:`~octswap.plan.Plan` to a model, one mode per module.

Each rewriter takes the (already copied) model and the plan, swaps modules in place
and returns the model; the registry is :mod:`octswap.rewrite.registry`.
"""

from __future__ import annotations

# Imported for their registrations.
from octswap.rewrite import graph, layer, regions  # noqa: F401
from octswap.rewrite.registry import REWRITERS, Rewriter, apply_plan, register_rewriter, rewriter

__all__ = ["REWRITERS", "Rewriter", "apply_plan", "register_rewriter", "rewriter"]
