"""The activation that follows each candidate conv in a traced model, and timing with it.

ONNX Runtime folds an activation into the conv it follows (its ``ConvActivationFusion``;
``Clip`` included), so a plain conv followed by ReLU6 costs the conv alone. An octave
conv's outputs are sums (``h2h + upsample(l2h)``, ``l2l + h2l(pool)``); ReLU after a sum
fuses into the conv that takes it, ReLU6 is written as two 1x1 depthwise convs per output
(:mod:`octswap.export.rewrites`, rule ``ClipAsBlockedRelus``) and other activations run as
separate passes. A conv timed alone has none of that: under ONNX Runtime each conv is timed
with the activation that follows it in the model (:class:`Activated`), found here through a
BatchNorm (which export folds into the conv). What counts as one is what the graph pass runs
on each branch of a pair (its elementwise ops), less the no-ops (dropout, identity).

Example:
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6()
    ...     def forward(self, x):
    ...         return self.act(self.bn(self.conv(x)))
    >>> found = following_activations(fx.symbolic_trace(Net()), ["conv"])
    >>> activation_key(found["conv"])
    'ReLU6()'
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from octswap.rewrite.graph.handlers.activation import UNARY_FUNCTIONS, UNARY_METHODS, UNARY_MODULES

__all__ = ["ACTIVATION_MODULES", "Activated", "CalledActivation", "activation_key", "following_activations"]

#: What passes a conv's output on unchanged at inference (looked through, like a BatchNorm):
#: modules, and functions or tensor methods.
_NO_OP_MODULES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout2d, nn.Identity)
_NO_OP_CALLS: tuple[Any, ...] = (F.dropout, "contiguous", "clone")
#: The graph pass's elementwise ops (:mod:`octswap.rewrite.graph.handlers.activation`) less the no-ops.
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = tuple(m for m in UNARY_MODULES if m not in _NO_OP_MODULES)
_FUNCTIONS = tuple(f for f in UNARY_FUNCTIONS if f not in _NO_OP_CALLS)
_METHODS = tuple(m for m in UNARY_METHODS if m not in _NO_OP_CALLS)


class CalledActivation(nn.Module):
    """An activation called as a function or tensor method in the model, with its constant
    arguments (``F.hardtanh(x, 0.0, 6.0)``, ``x.relu()``), as a module to time."""

    def __init__(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.target, self.args, self.kwargs = target, args, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.target, str):
            return getattr(x, self.target)(*self.args, **self.kwargs)
        return self.target(x, *self.args, **self.kwargs)

    @property
    def key(self) -> str:
        name = self.target if isinstance(self.target, str) else self.target.__name__
        return f"{name}({', '.join([*map(repr, self.args), *(f'{k}={v!r}' for k, v in self.kwargs.items())])})"


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _passes_on(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> bool:
    """A BatchNorm over ``source`` (export folds it into the conv), or a no-op."""
    if node.op == "call_function" and node.target is F.batch_norm:
        return bool(node.args) and node.args[0] is source
    if node.op in ("call_function", "call_method"):
        return node.target in _NO_OP_CALLS
    return isinstance(_module(gm, node), (nn.BatchNorm2d, *_NO_OP_MODULES))


def _activation(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """``node`` as an activation module (a copy, not in place), or None."""
    module = _module(gm, node)
    if module is not None:
        # timm's BatchNormAct2d (a BatchNorm) carries its activation as .act
        norm_act = getattr(module, "act", None) if isinstance(module, nn.BatchNorm2d) else None
        found = module if isinstance(module, ACTIVATION_MODULES) else norm_act
        if not isinstance(found, ACTIVATION_MODULES):
            return None
        found = copy.deepcopy(found)
        if hasattr(found, "inplace"):
            found.inplace = False
        return found
    known = _FUNCTIONS if node.op == "call_function" else _METHODS if node.op == "call_method" else ()
    options = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    if node.target not in known or any(isinstance(a, fx.Node) for a in (*node.args[1:], *options.values())):
        return None
    return CalledActivation(node.target, tuple(node.args[1:]), options)


def following_activations(gm: fx.GraphModule, convs: Iterable[str]) -> dict[str, nn.Module]:
    """The activation each of ``convs`` (call_module targets of ``gm``) feeds as its only
    user, through a BatchNorm or no-op modules; convs without one are left out."""
    wanted = set(convs)
    found: dict[str, nn.Module] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        current = node
        while len(current.users) == 1:
            user = next(iter(current.users))
            activation = _activation(gm, user)
            if activation is not None:
                found[str(node.target)] = activation
            elif _passes_on(gm, user, current):
                current = user
                continue
            break
    return found


def activation_key(activation: nn.Module | None) -> str:
    """What a timing with ``activation`` after the conv is keyed by (``""``: none)."""
    if activation is None:
        return ""
    if isinstance(activation, CalledActivation):
        return activation.key
    return f"{type(activation).__name__}({activation.extra_repr()})"


class Activated(nn.Module):
    """A conv (plain, octave pair or block) followed by ``activation`` on each of its outputs.

    Shapes: as ``conv``'s outputs (a tensor, or a ``(high, low)`` pair).
    """

    def __init__(self, conv: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.activation = activation

    def forward(self, x: Any) -> Any:
        out = self.conv(x)
        if isinstance(out, Sequence) and not isinstance(out, torch.Tensor):
            return tuple(self.activation(part) for part in out)
        return self.activation(out)
