"""Resizing a pair (``F.interpolate``, ``nn.Upsample``): the top-down paths of FPNs and
U-Net decoders, which upsample a deeper map to a shallower one's size and add or
concatenate it with a lateral map.

The high branch is resized as the original map was (same size or scale, same mode);
the low branch is resized to ``ceil(size / 2)`` of the high branch's result, where every
pair keeps its low branch (:mod:`octswap.layers.pooling`), so odd sizes line up too.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from octswap.rewrite.graph.handler_registry import register
from octswap.rewrite.graph.passes import GraphPass, Pair
from octswap.rewrite.graph.runtime import low_size

__all__ = ["interpolate"]

#: ``F.interpolate``'s parameters after the input, in order.
_PARAMETERS = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")


def _options(p: GraphPass, node: fx.Node) -> dict[str, Any]:
    """The resize's options by name (from the call, or from the ``nn.Upsample`` module)."""
    if node.op == "call_module":
        module = p.modules[node.target]
        names = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")
        return {name: getattr(module, name) for name in names}
    options = dict(zip(_PARAMETERS, node.args[1:]))
    options.update({k: v for k, v in node.kwargs.items() if k != "input"})
    return options


@register(functions=(F.interpolate,), modules=(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d))
def interpolate(p: GraphPass, node: fx.Node) -> Any:
    x = p.value(node.args[0] if node.args else node.kwargs.get("input"))
    options = _options(p, node)
    if not isinstance(x, Pair):
        return p.copy_plain(node)
    high_options = {k: p.plain(v, node) for k, v in options.items()}
    if node.op == "call_module":
        high = p.graph.call_module(node.target, (x.high,))
    else:
        high = p.graph.call_function(F.interpolate, (x.high,), high_options)
    low_options = {k: high_options[k] for k in ("mode", "align_corners", "antialias") if k in high_options}
    size = p.graph.call_function(low_size, (high,))
    low = p.graph.call_function(F.interpolate, (x.low,), {"size": size, **low_options})
    return Pair(high, low, x.layout, x.origins)
