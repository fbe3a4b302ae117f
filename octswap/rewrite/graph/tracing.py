"""Tracing a model with ``torch.fx`` for graph mode, following timm's conventions when timm is loaded.

timm keeps a registry of modules fx must not trace into (leaf modules) and functions it
must record as single calls (autowrapped), for layers whose Python depends on shapes;
its feature extraction traces with them (``timm.layers._fx``). octswap traces the same
way, so timm models that timm itself can trace convert here too.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

from torch import fx, nn

from octswap.errors import ConversionError, one_line
from octswap.eval_mode import eval_mode

__all__ = ["Tracer", "trace"]


class Tracer(fx.Tracer):
    """``fx.Tracer`` that also treats ``leaf_types`` as leaves (not traced into)."""

    def __init__(self, *, leaf_types: frozenset[type[nn.Module]] = frozenset(),
                 autowrap_functions: tuple[Callable[..., Any], ...] = ()) -> None:  # fmt: skip
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in self.leaf_types or super().is_leaf_module(m, module_qualified_name)


def _timm_conventions() -> tuple[frozenset[type[nn.Module]], tuple[Callable[..., Any], ...]]:
    """timm's leaf modules and autowrapped functions, if timm has been imported (else none)."""
    registry = sys.modules.get("timm.layers._fx")
    if registry is None:
        return frozenset(), ()
    leaves = frozenset(m for m in registry.get_notrace_modules() if isinstance(m, type))
    functions = tuple(f for f in registry.get_notrace_functions() if callable(f))
    return leaves, functions


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` in eval mode (timm's leaf modules and autowrapped functions included).

    Traces a shallow copy: fx stores tensor constants (``_tensor_constant0``...) on the
    root it traces, and they must be numbered the same on every trace (checkpoint replay).

    Raises:
        ConversionError: the model does not trace, with fx's first line.
    """
    leaves, functions = _timm_conventions()
    tracer = Tracer(leaf_types=leaves, autowrap_functions=functions)
    try:
        with eval_mode(model):
            root = copy.copy(model)  # inside eval_mode: the copy's own `training` flag is False
            graph = tracer.trace(root)
    except Exception as err:  # noqa: BLE001 - fx raises many kinds for untraceable code
        raise ConversionError(
            f"the model does not trace with torch.fx ({type(err).__name__}: {one_line(err)}); use --mode layer"
        ) from err
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
