"""In-place residual adds for traced models: ``x + y`` written into ``x`` where nothing can see it.

``torch.fx`` records eager ``out += identity`` as an out-of-place add, so a traced model
would allocate a new full-size tensor per residual add where the eager one does not;
:func:`inplace_adds` puts the in-place add back (see :mod:`octswap.inference`).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from octswap.layers import OctaveBatchNorm2d, OctaveConv2d, OctaveConvBlock

__all__ = ["add_into", "inplace_adds"]


# Modules whose output is a new tensor that nothing else aliases.
_FRESH_OUTPUT: tuple[type[nn.Module], ...] = (nn.Conv2d, OctaveConv2d, OctaveConvBlock, nn.BatchNorm2d,
                                              OctaveBatchNorm2d, nn.Linear)  # fmt: skip
_ADDS = (operator.add, torch.add)


def add_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b``, written into ``a`` when nothing can observe it (no autograd, no broadcast of ``a``).

    Eager PyTorch code such as torchvision's ``out += identity`` adds in place, but
    ``torch.fx`` records ``+=`` as ``+``; a traced model would then allocate a new
    full-size tensor per residual add. :func:`inplace_adds` puts this back.

    Example:
        >>> with torch.no_grad():
        ...     a = torch.ones(2); out = add_into(a, torch.ones(2))
        >>> out is a, a.tolist()
        (True, [2.0, 2.0])
    """
    if not torch.is_grad_enabled() and isinstance(b, torch.Tensor) and a.dtype == b.dtype and _fits_into(a, b):
        return a.add_(b)
    return a + b


def _fits_into(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` broadcasts to ``a``'s shape (so ``a + b`` has ``a``'s shape).

    Plain Python on purpose: ``torch.broadcast_shapes`` costs tens of microseconds per
    call, which adds up to milliseconds per forward pass over a ResNet's residual adds.
    """
    if b.dim() > a.dim():
        return False
    return all(db == 1 or db == da for da, db in zip(a.shape[a.dim() - b.dim() :], b.shape))


def _fresh(node: Any, modules: Mapping[str, nn.Module]) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function" and node.target is operator.getitem:
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return False
    return node.op == "call_module" and isinstance(modules.get(node.target), _FRESH_OUTPUT)


def inplace_adds(gm: fx.GraphModule) -> int:
    """Turn ``x + y`` into :func:`add_into` where ``x`` is a fresh module output read only there.

    Returns:
        How many adds were rewritten.

    Example:
        >>> traced = torch.fx.symbolic_trace(torchvision.models.resnet18().eval())  # doctest: +SKIP
        >>> inplace_adds(traced)                                                     # doctest: +SKIP
        8
    """
    modules = dict(gm.named_modules())
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _ADDS or node.kwargs or len(node.args) != 2:
            continue
        first = node.args[0]
        if _fresh(first, modules) and list(first.users) == [node]:
            node.target = add_into
            changed += 1
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed
