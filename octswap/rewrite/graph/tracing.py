"""Tracing a model with ``torch.fx`` for graph mode, following timm's conventions when timm is loaded.

timm keeps a registry of modules fx must not trace into (leaf modules) and functions it
must record as single calls (autowrapped), for layers whose Python depends on shapes;
its feature extraction traces with them (``timm.layers._fx``). octswap traces the same
way, so timm models that timm itself can trace convert here too -- except that a leaf
module holding convs is traced into when it traces on its own (timm lists whole blocks,
such as NF-Net's ``NormFreeBlock``, whose convs would otherwise be out of reach).

In-place ops are made out-of-place after tracing (:func:`functionalize_inplace`): graph
mode rewrites values into (high, low) pairs, and a mutation of a tensor that later
nodes read would otherwise be applied to a copy and lost.
"""

from __future__ import annotations

import copy
import operator
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from octswap.errors import ConversionError, UntraceableError, one_line
from octswap.eval_mode import eval_mode
from octswap.rewrite.graph.guards import guard_value

__all__ = ["Tracer", "functionalize_inplace", "is_inplace_name", "mutated_by", "trace"]


class Tracer(fx.Tracer):
    """``fx.Tracer`` that also treats ``leaf_types`` and every ``nn.Conv2d`` subclass as
    leaves (not traced into): a conv stays one node whatever its forward does (timm's
    ``Conv2dSame`` pads first, weight-standardized convs rescale their weight). Module
    instances in ``trace_into`` (by ``id``) are traced into although their type is a leaf;
    those in ``opaque`` (by ``id``) are leaves whatever their type (one call each: a
    submodule whose own forward does not trace, see :mod:`octswap.rewrite.regions`). With
    ``probe`` (the root's arguments at the probe), an input check on a traced value becomes a
    guard instead of stopping the trace (:mod:`octswap.rewrite.graph.guards`)."""

    def __init__(self, *, leaf_types: frozenset[type[nn.Module]] = frozenset(),
                 autowrap_functions: tuple[Callable[..., Any], ...] = (),
                 trace_into: frozenset[int] = frozenset(), opaque: frozenset[int] = frozenset(),
                 probe: tuple[Any, ...] | None = None) -> None:  # fmt: skip
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaf_types = leaf_types
        self.trace_into = trace_into
        self.opaque = opaque
        self.probe = probe

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = guard_value(self, obj, self.probe)
        return super().to_bool(obj) if value is None else value

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.opaque:
            return True
        if id(m) in self.trace_into:
            return False
        return (type(m) in self.leaf_types or isinstance(m, nn.Conv2d)
                or super().is_leaf_module(m, module_qualified_name))  # fmt: skip


def _traces_alone(module: nn.Module, leaves: frozenset[type[nn.Module]], functions: tuple[Callable[..., Any], ...]) -> bool:
    try:
        Tracer(leaf_types=leaves, autowrap_functions=functions).trace(copy.copy(module))
    except Exception:  # noqa: BLE001 - any failure: it stays a leaf
        return False
    return True


def _leaves_to_trace_into(root: nn.Module, leaves: frozenset[type[nn.Module]],
                          functions: tuple[Callable[..., Any], ...]) -> frozenset[int]:  # fmt: skip
    """Leaf-typed modules of ``root`` that hold a conv and trace on their own (by ``id``)."""
    found = set()
    for module in root.modules():
        if module is root or type(module) not in leaves or isinstance(module, nn.Conv2d):
            continue
        if any(isinstance(m, nn.Conv2d) for m in module.modules()) and _traces_alone(module, leaves, functions):
            found.add(id(module))
    return frozenset(found)


def _out_of_place_method(name: str) -> str | None:
    """``mul`` for ``mul_``: PyTorch's convention, ``x.f_(...)`` is ``x = x.f(...)``."""
    if not is_inplace_name(name):
        return None
    plain = name[:-1]
    return plain if hasattr(torch.Tensor, name) and callable(getattr(torch.Tensor, plain, None)) else None


def _out_of_place_function(function: Any) -> Any:
    """``torch.clamp`` for ``torch.clamp_`` (also ``torch.nn.functional``'s ``relu_``...), else None."""
    name = getattr(function, "__name__", "")
    if not is_inplace_name(name):
        return None
    for namespace in (torch, torch.nn.functional):
        if getattr(namespace, name, None) is function and callable(getattr(namespace, name[:-1], None)):
            return getattr(namespace, name[:-1])
    return None


def is_inplace_name(name: str) -> bool:
    """PyTorch's naming of in-place ops: ``mul_``, ``clamp_``, not ``__add__``/``_private``."""
    return name.endswith("_") and not name.startswith("_")


#: Ops whose result shares memory with their first argument: an in-place op on their
#: result mutates that argument, which an out-of-place rewrite cannot reproduce.
_VIEW_METHODS = frozenset({"view", "view_as", "narrow", "select", "transpose", "permute", "expand", "expand_as",
                           "unsqueeze", "squeeze", "t", "unflatten", "diagonal", "as_strided", "unfold",
                           "chunk", "split", "unbind", "swapdims", "swapaxes", "movedim", "detach"})  # fmt: skip
_VIEW_FUNCTIONS = frozenset({operator.getitem, torch.narrow, torch.select, torch.transpose, torch.permute,
                             torch.unsqueeze, torch.squeeze, torch.t, torch.chunk, torch.split, torch.unbind,
                             torch.diagonal, torch.movedim, torch.swapdims, torch.detach})  # fmt: skip


def _is_view(node: Any) -> bool:
    if not isinstance(node, fx.Node):
        return False
    return (node.op == "call_method" and node.target in _VIEW_METHODS) or (
        node.op == "call_function" and node.target in _VIEW_FUNCTIONS)  # fmt: skip


def functionalize_inplace(gm: fx.GraphModule) -> fx.GraphModule:
    """Make in-place ops out-of-place and point later readers of the mutated tensor at the result.

    ``y = x.mul_(g)`` becomes ``y = x.mul(g)``, ``torch.clamp_(x, 0)`` becomes
    ``torch.clamp(x, 0)``, ``F.relu(x, inplace=True)`` becomes ``F.relu(x)``, and every
    node after it that read ``x`` reads ``y`` -- what eager execution computes. Modules
    with ``inplace=True`` (``nn.ReLU(inplace=True)``) keep running in place, but later
    readers of their input read their output too. In-place ops without an out-of-place
    form (``zero_``, ``fill_``, ``x[i] = v``) stay; the graph pass refuses them where they
    would mutate a pair (see :func:`mutated_by`).

    Raises:
        ConversionError: an in-place op mutates a view (``x[:, :8].mul_(2)``), whose
            effect on the viewed tensor an out-of-place rewrite would lose.
    """
    graph = gm.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    modules = dict(gm.named_modules())
    for node in list(graph.nodes):
        mutates = False
        if node.op == "call_method" and isinstance(node.target, str) and is_inplace_name(node.target):
            plain = _out_of_place_method(node.target)
            if plain is not None:
                _refuse_view(node)
                node.target, mutates = plain, True
        elif node.op == "call_function" and (function := _out_of_place_function(node.target)) is not None:
            _refuse_view(node)
            node.target, mutates = function, True
        elif node.op == "call_function" and node.kwargs.get("inplace") is True:
            _refuse_view(node)
            node.kwargs = {**node.kwargs, "inplace": False}
            mutates = True
        elif node.op == "call_module" and getattr(modules.get(str(node.target)), "inplace", False) is True:
            mutates = True
        if not mutates or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        mutated, position = node.args[0], order[node]
        mutated.replace_all_uses_with(node, delete_user_cb=lambda user, at=position: order[user] > at)
    graph.lint()
    gm.recompile()
    return gm


def _refuse_view(node: fx.Node) -> None:
    receiver = node.args[0] if node.args else None
    if _is_view(receiver):
        assert isinstance(receiver, fx.Node)
        raise ConversionError(
            f"graph mode cannot keep the effect of in-place {_op(node)} on a view ({receiver.name}) of another "
            "tensor: it would mutate a copy"
        )


def _op(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))


def mutated_by(node: fx.Node) -> Any:
    """The tensor an in-place op left in the graph mutates (``x`` of ``x.zero_()`` or
    ``x[i] = v``), else None."""
    if node.op == "call_method" and isinstance(node.target, str) and is_inplace_name(node.target):
        return node.args[0]
    if node.op == "call_function" and (node.target is operator.setitem
                                       or is_inplace_name(getattr(node.target, "__name__", ""))):  # fmt: skip
        return node.args[0] if node.args else None
    return None


def first_sentence(text: str) -> str:
    """fx's messages go on to explain fx (``Proxy object cannot be iterated. This can be
    attempted when...``): their first sentence says what stopped the trace."""
    head, sep, _ = text.partition(". ")
    return head if sep else text


def _timm_conventions() -> tuple[frozenset[type[nn.Module]], tuple[Callable[..., Any], ...]]:
    """timm's leaf modules and autowrapped functions, if timm has been imported (else none)."""
    registry = sys.modules.get("timm.layers._fx")
    if registry is None:
        return frozenset(), ()
    leaves = frozenset(m for m in registry.get_notrace_modules() if isinstance(m, type))
    functions = tuple(f for f in registry.get_notrace_functions() if callable(f))
    return leaves, functions


def trace(
    model: nn.Module, *, concrete_args: dict[str, Any] | None = None, opaque: tuple[str, ...] = (),
    probe: tuple[Any, ...] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` in eval mode (timm's leaf modules and autowrapped functions included).

    Traces a shallow copy: fx stores tensor constants (``_tensor_constant0``...) on the
    root it traces, and they must be numbered the same on every trace (checkpoint replay).
    The graph comes back with its in-place ops made out-of-place (:func:`functionalize_inplace`).

    ``concrete_args`` is ``fx.Tracer.trace``'s: an argument's structure with ``fx.PH`` for
    each tensor (``{"x": [fx.PH, fx.PH]}`` for a list of two maps) traces a forward that
    takes lists or dicts; the graph module then takes the same structure. ``opaque`` names
    submodules (dotted, relative to ``model``) called as one node, not traced into. ``probe``:
    ``model``'s arguments at the probe (as ``fx.Interpreter`` takes them), so that its input checks
    trace as guards (:mod:`octswap.rewrite.graph.guards`).

    Raises:
        UntraceableError: the model does not trace, with fx's first line.
        ConversionError: an in-place op mutates a view (see :func:`functionalize_inplace`).
    """
    leaves, functions = _timm_conventions()
    try:
        with eval_mode(model):
            root = copy.copy(model)  # inside eval_mode: the copy's own `training` flag is False
            into = _leaves_to_trace_into(root, leaves, functions) if leaves else frozenset()
            hidden = frozenset(id(root.get_submodule(name)) for name in opaque)
            tracer = Tracer(leaf_types=leaves, autowrap_functions=functions, trace_into=into, opaque=hidden,
                            probe=probe)
            graph = tracer.trace(root, concrete_args=concrete_args)
    except Exception as err:  # noqa: BLE001 - fx raises many kinds for untraceable code
        raise UntraceableError(f"{type(err).__name__}: {first_sentence(one_line(err))}") from err
    return functionalize_inplace(fx.GraphModule(tracer.root, graph, type(model).__name__))
