"""Pooling: per-branch max/average pooling (the low branch kept on ceil(high / 2) at every
size, :mod:`octswap.layers.pooling`) and global average pooling of each branch."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from octswap.layers import pooled_merge
from octswap.layers.pooling import FUNCTION_OPS, MODULE_OPS, pool_low, pool_parameters
from octswap.rewrite.graph.handler_registry import register
from octswap.rewrite.graph.layout import inverse
from octswap.rewrite.graph.passes import GraphPass, Pair, op_name, shape_of

__all__ = ["global_pool", "pool"]


@register(modules=MODULE_OPS, functions=FUNCTION_OPS)
def pool(p: GraphPass, node: fx.Node) -> Any:
    """Max/average pooling: per branch, the low branch through :func:`~octswap.layers.pooling.pool_low`
    so that it stays ``ceil(high/2)`` at every input size (the high branch runs the op as is)."""
    x = p.value(node.args[0])
    out = shape_of(node)
    if not isinstance(x, Pair) or out is None or len(out) != 4:
        return p.copy_plain(node)
    rest = node.args[1:]
    if any(isinstance(a, fx.Node) for a in rest) or any(isinstance(v, fx.Node) for v in node.kwargs.values()):
        return p.copy_plain(node)
    fn = p.modules[node.target] if node.op == "call_module" else node.target
    op, params = pool_parameters(fn, rest, node.kwargs)
    if params.get("return_indices"):
        return p.copy_plain(node)
    # Whether pooling runs per branch is decided at the probe size, as before the low
    # branch learnt to fit (plans and checkpoints stay as they were): per branch where the
    # op itself keeps the low map on ceil(high / 2) there, merged where it does not.
    in_shape = shape_of(node.args[0])
    assert in_shape is not None
    dummy = torch.zeros(1, 1, (in_shape[2] + 1) // 2, (in_shape[3] + 1) // 2)
    try:
        low_out = fn(dummy, *rest, **node.kwargs)
    except RuntimeError:  # e.g. a kernel larger than the low map
        low_out = None
    if low_out is None or tuple(low_out.shape[-2:]) != ((out[2] + 1) // 2, (out[3] + 1) // 2):
        return p.copy_plain(node, f"{op_name(node, p.modules)} would break the half-size low map")
    kwargs = {k: p.plain(v, node) for k, v in node.kwargs.items()}
    high = p.graph.create_node(node.op, node.target, (x.high, *rest), kwargs, name=f"{node.name}_h")
    low = p.graph.call_function(pool_low, (x.low, high, op), params)
    return replace(x, high=high, low=low)


@register(modules=(nn.AdaptiveAvgPool2d,), functions=(F.adaptive_avg_pool2d,), methods=("mean",))
def global_pool(p: GraphPass, node: fx.Node) -> Any:
    """Adaptive average pooling to 1x1 / mean over H, W: pool each branch, concatenate."""
    x = p.value(node.args[0])
    out = shape_of(node)
    global_pool = out is not None and (len(out) == 2 or (len(out) == 4 and out[2:] == (1, 1)))
    if node.op == "call_method":  # x.mean(dims, keepdim)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        global_pool = global_pool and isinstance(dims, (list, tuple)) and sorted(d % 4 for d in dims) == [2, 3]
    if not isinstance(x, Pair) or not global_pool:
        return p.copy_plain(node)
    branches = p.per_branch(node, x, node.args[1:])
    restore = None if x.layout.is_standard else inverse(x.layout.order)
    p.boundaries.append({"kind": "pooled-merge", "after": node.args[0].name, "before": node.name,
                         "reason": "global average pooling of each branch, concatenated"})  # fmt: skip
    return p.graph.call_function(pooled_merge, (branches.high, branches.low, restore))
