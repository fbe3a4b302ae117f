"""The activation that follows each candidate conv in a traced model, and timing with it.

ONNX Runtime folds an activation into the conv it follows (its ``ConvActivationFusion``;
``Clip`` included), so a plain conv followed by ReLU6 costs the conv alone. An octave
conv's outputs are sums (``h2h + upsample(l2h)``, ``l2l + h2l(pool)``); ReLU after a sum
fuses into the conv that takes it, ReLU6 is written as two 1x1 depthwise convs per output
(:mod:`octswap.export.rewrites`, rule ``ClipAsBlockedRelus``) and other activations run as
separate passes. A conv timed alone has none of that: under ONNX Runtime each conv is timed
with the activation that follows it in the model (:class:`Activated`), found here through a
BatchNorm (which export folds into the conv).

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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["ACTIVATION_MODULES", "Activated", "activation_key", "following_activations"]

#: Module types that count as the activation after a conv (elementwise, one input).
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.GELU, nn.Mish, nn.ELU,
)  # fmt: skip

#: Functions (and tensor methods, by name) that count as one, as the module they equal;
#: extra constant arguments go to the module (``F.hardtanh(x, 0., 6.)``).
_FUNCTIONS: dict[Any, Callable[..., nn.Module]] = {
    F.relu: nn.ReLU, torch.relu: nn.ReLU, "relu": nn.ReLU, "relu_": nn.ReLU,
    F.relu6: nn.ReLU6, F.hardtanh: nn.Hardtanh, F.leaky_relu: nn.LeakyReLU,
    F.silu: nn.SiLU, F.hardswish: nn.Hardswish, F.hardsigmoid: nn.Hardsigmoid,
    torch.sigmoid: nn.Sigmoid, "sigmoid": nn.Sigmoid, torch.tanh: nn.Tanh, "tanh": nn.Tanh,
    F.gelu: nn.GELU, F.mish: nn.Mish, F.elu: nn.ELU,
}  # fmt: skip


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _is_norm(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> bool:
    """A BatchNorm over ``source`` (export folds it into the conv), or a no-op module."""
    if node.op == "call_function" and node.target is F.batch_norm:
        return bool(node.args) and node.args[0] is source
    return isinstance(_module(gm, node), (nn.BatchNorm2d, nn.Identity, nn.Dropout))


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
    else:
        factory = _FUNCTIONS.get(node.target) if node.op in ("call_function", "call_method") else None
        options = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        if factory is None or any(isinstance(a, fx.Node) for a in (*node.args[1:], *options.values())):
            return None
        try:
            found = factory(*node.args[1:], **options)
        except TypeError:  # arguments the module does not take
            return None
    if hasattr(found, "inplace"):
        found.inplace = False
    return found


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
            elif _is_norm(gm, user, current):
                current = user
                continue
            break
    return found


def activation_key(activation: nn.Module | None) -> str:
    """What a timing with ``activation`` after the conv is keyed by (``""``: none)."""
    if activation is None:
        return ""
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
