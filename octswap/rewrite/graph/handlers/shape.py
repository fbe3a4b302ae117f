"""Reading a pair's metadata (``x.shape``, ``x.size()``, ``x.dim()``) and broadcasting a
gate to it (``gate.expand_as(x)``) without merging the pair.

Attention gates (timm's ECA and CBAM modules, for one) read ``x.shape`` to reshape their
pooled statistics and expand their gate to the map before multiplying.
Answered from the high branch, these cost nothing; merging the pair for them would
upsample and concatenate the whole map only to read four numbers.
"""

from __future__ import annotations

import builtins
import operator
from typing import Any

from torch import fx

from octswap.layers import take_channels
from octswap.rewrite.graph.handler_registry import register
from octswap.rewrite.graph.passes import GraphPass, Pair, shape_of
from octswap.rewrite.graph.runtime import pair_shape

__all__ = ["dim", "expand_as", "metadata", "size"]

#: Attributes the same on the pair's high branch as on the original tensor.
_SHARED_ATTRIBUTES = ("dtype", "device", "ndim", "is_cuda", "layout", "requires_grad")


@register(functions=(builtins.getattr,))
def metadata(p: GraphPass, node: fx.Node) -> Any:
    x = p.value(node.args[0])
    attribute = node.args[1] if len(node.args) > 1 else None
    if isinstance(x, Pair) and attribute == "shape":
        return p.graph.call_function(pair_shape, (x.high, x.layout.channels))
    if isinstance(x, Pair) and attribute in _SHARED_ATTRIBUTES:
        return p.graph.call_function(builtins.getattr, (x.high, attribute))
    return p.copy_plain(node)


@register(methods=("size",))
def size(p: GraphPass, node: fx.Node) -> Any:
    x = p.value(node.args[0])
    if not isinstance(x, Pair) or len(node.args) > 2 or set(node.kwargs) - {"dim"}:
        return p.copy_plain(node)
    shape = p.graph.call_function(pair_shape, (x.high, x.layout.channels))
    which = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return shape if which is None else p.graph.call_function(operator.getitem, (shape, p.plain(which, node)))


@register(methods=("dim", "ndimension"))
def dim(p: GraphPass, node: fx.Node) -> Any:
    x = p.value(node.args[0])
    if isinstance(x, Pair) and len(node.args) == 1:
        return p.graph.call_method("dim", (x.high,))
    return p.copy_plain(node)


@register(methods=("expand_as",))
def expand_as(p: GraphPass, node: fx.Node) -> Any:
    """A per-channel gate (``N x C x 1 x 1``, or ``N x 1 x 1 x 1``) expanded to a pair
    becomes a pair of gates, each branch's channels expanded to that branch."""
    gate, x = p.value(node.args[0]), p.value(node.args[1]) if len(node.args) > 1 else None
    shape = shape_of(node.args[0])
    if isinstance(gate, Pair) or not isinstance(x, Pair) or shape is None or len(shape) != 4 or shape[2:] != (1, 1):
        return p.copy_plain(node)
    if shape[1] == 1:
        high = low = gate
    elif shape[1] == x.layout.channels:
        high = p.graph.call_function(take_channels, (gate, x.layout.high))
        low = p.graph.call_function(take_channels, (gate, x.layout.low))
    else:
        return p.copy_plain(node)
    return Pair(p.graph.call_method("expand_as", (high, x.high)), p.graph.call_method("expand_as", (low, x.low)),
                x.layout, x.origins)  # fmt: skip
