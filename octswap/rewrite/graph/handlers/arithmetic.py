"""Binary arithmetic (residual add, gates, scales) branch by branch."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from octswap.layers import split_ordered, take_channels
from octswap.rewrite.graph.handler_registry import register
from octswap.rewrite.graph.passes import GraphPass, Pair, shape_of

__all__ = ["BINARY_FUNCTIONS", "BINARY_METHODS", "binary"]

BINARY_FUNCTIONS = (operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul,
                    operator.sub, torch.sub, operator.truediv, torch.div)  # fmt: skip
BINARY_METHODS = ("add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_")


@register(functions=BINARY_FUNCTIONS, methods=BINARY_METHODS)
def binary(p: GraphPass, node: fx.Node) -> Any:
    if node.op == "call_method":
        a_node, b_node = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    else:
        a_node = node.args[0] if node.args else node.kwargs.get("input")
        b_node = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    a, b = p.value(a_node), p.value(b_node)
    if not isinstance(a, Pair) and not isinstance(b, Pair):
        return p.copy_plain(node)
    extra_kwargs = {k: v for k, v in node.kwargs.items() if k not in ("input", "other")}
    if len(node.args) > 2 or any(isinstance(v, fx.Node) for v in extra_kwargs.values()):
        return p.copy_plain(node)
    if isinstance(a, Pair) and isinstance(b, Pair):
        p.joins.append(a.origins | b.origins)
        if a.layout != b.layout:
            # Different splits (a policy giving the two sides different alphas, or
            # Inception-ResNet's concatenated branches): the second operand is merged and
            # split again the way the first is, recorded as a boundary.
            why = (f"operands have different channel splits: {len(a.layout.low)} low of {a.layout.channels} from "
                   f"{', '.join(sorted(a.origins))} vs {len(b.layout.low)} low of {b.layout.channels} from "
                   f"{', '.join(sorted(b.origins))}; give these convs the same alpha to keep both")  # fmt: skip
            b = p.as_layout(b_node, node, a.layout, why)
        pair, other_high, other_low = a, b.high, b.low
        origins = a.origins | b.origins
    else:
        pair = a if isinstance(a, Pair) else b
        other_node = b_node if isinstance(a, Pair) else a_node
        other_high, other_low, origins = None, None, pair.origins
        shape = shape_of(other_node)
        full = shape_of(node)
        if not isinstance(other_node, fx.Node):  # a Python number
            other_high = other_low = other_node
        elif shape is None or full is None:
            pass
        elif len(shape) <= 1 or (len(shape) == 4 and shape[1] == 1 and shape[2:] == (1, 1)):
            other_high = other_low = p.plain(other_node, node)  # broadcasts to both branches
        elif len(shape) == 4 and shape[1] in (1, pair.layout.channels):
            # One channel broadcasts to both branches; otherwise each branch takes its own.
            high_index, low_index = ((0,), (0,)) if shape[1] == 1 else (pair.layout.high, pair.layout.low)
            if shape[2:] == (1, 1):  # per-channel scale (SE gate): slice channels per branch
                plain = p.plain(other_node, node)
                other_high = p.graph.call_function(take_channels, (plain, high_index))
                other_low = p.graph.call_function(take_channels, (plain, low_index))
            elif shape[2:] == full[2:]:
                # A full-size plain tensor (a residual, a spatial attention map) meets a
                # pair: split it, its low part pooled to the low branch's size.
                plain = p.plain(other_node, node)
                split = p.graph.call_function(split_ordered, (plain, high_index, low_index))
                other_high = p.graph.call_function(operator.getitem, (split, 0))
                other_low = p.graph.call_function(operator.getitem, (split, 1))
                p.boundaries.append({"kind": "split", "after": other_node.name, "before": node.name,
                                     "reason": "a plain tensor meets an octave branch"})  # fmt: skip
        if other_high is None:
            return p.copy_plain(node)
    swap = not isinstance(a, Pair)

    def call(x: Any, y: Any, suffix: str) -> fx.Node:
        first, second = (y, x) if swap else (x, y)
        return p.graph.create_node(node.op, node.target, (first, second), extra_kwargs, name=f"{node.name}_{suffix}")

    return Pair(call(pair.high, other_high, "h"), call(pair.low, other_low, "l"), pair.layout, origins)
