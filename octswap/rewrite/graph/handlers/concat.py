"""Channel concatenation (DenseNet, Inception): highs with highs, lows with lows."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from octswap.rewrite.graph.handler_registry import register
from octswap.rewrite.graph.layout import Layout
from octswap.rewrite.graph.passes import GraphPass, Pair, shape_of

__all__ = ["cat"]


@register(functions=(torch.cat, torch.concat))
def cat(p: GraphPass, node: fx.Node) -> Any:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    values = [p.value(t) for t in tensors] if isinstance(tensors, (list, tuple)) else []
    shapes = [shape_of(t) for t in tensors] if values else []
    if not any(isinstance(v, Pair) for v in values) or not all(s is not None and len(s) == 4 for s in shapes):
        return p.copy_plain(node)
    if dim not in (1, -3):
        return p.copy_plain(node)
    parts: list[Layout | int] = []
    highs, lows = [], []
    origins: frozenset[str] = frozenset()
    for tensor, value, shape in zip(tensors, values, shapes):
        if isinstance(value, Pair):
            parts.append(value.layout)
            highs.append(value.high)
            lows.append(value.low)
            origins |= value.origins
        else:
            parts.append(shape[1])  # type: ignore[index]
            highs.append(p.plain(tensor, node))
    high = p.graph.call_function(torch.cat, (highs,), {"dim": 1}) if len(highs) > 1 else highs[0]
    low = p.graph.call_function(torch.cat, (lows,), {"dim": 1}) if len(lows) > 1 else lows[0]
    return Pair(high, low, Layout.concat(parts), origins)
