"""Activations and dropout run on each branch; stochastic depth drops both branches together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops.stochastic_depth import stochastic_depth as tv_stochastic_depth

from octswap.layers import stochastic_depth_pair
from octswap.rewrite.graph.handler_registry import register
from octswap.rewrite.graph.passes import GraphPass, Pair

__all__ = ["UNARY_FUNCTIONS", "UNARY_METHODS", "UNARY_MODULES", "stochastic_depth", "unary"]

UNARY_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardtanh, nn.Softplus, nn.Dropout, nn.Dropout2d, nn.Identity,
)  # fmt: skip
UNARY_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.silu, F.hardswish, F.hardsigmoid, torch.sigmoid,
    F.sigmoid, torch.tanh, F.gelu, F.leaky_relu, F.elu, F.hardtanh, F.dropout, F.mish,
)  # fmt: skip
UNARY_METHODS = ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone")


@register(modules=UNARY_MODULES, functions=UNARY_FUNCTIONS, methods=UNARY_METHODS, passthrough=True)
def unary(p: GraphPass, node: fx.Node) -> Any:
    x = p.value(node.args[0]) if node.args else None
    if not isinstance(x, Pair):
        return p.copy_plain(node)
    return p.per_branch(node, x, node.args[1:])


@register(functions=(tv_stochastic_depth,))
def stochastic_depth(p: GraphPass, node: fx.Node) -> Any:
    x = p.value(node.args[0])
    if not isinstance(x, Pair):
        return p.copy_plain(node)
    rest = tuple(p.plain(a, node) for a in node.args[1:])
    kwargs = {k: p.plain(v, node) for k, v in node.kwargs.items() if k != "input"}
    call = p.graph.call_function(stochastic_depth_pair, (x.high, x.low, *rest), kwargs)
    return p.pair_from_tuple(call, x.layout, x.origins)
