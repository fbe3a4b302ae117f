"""The graph pass's handler table: which handler rewrites each op, by module type,
function or method name (like fvcore's op-handle table, kept apart from its engine).

The handlers (:mod:`octswap.rewrite.graph.handlers`, one op family per module) register
here with :func:`register` and :func:`register_kind`; the pass
(:mod:`octswap.rewrite.graph.passes`) looks them up with :func:`handler_for`. An op
without a handler takes plain tensors (pairs are merged first): :func:`default`.

Not to be confused with :mod:`octswap.rewrite.registry`, the conversion modes
(``graph``, ``layer``) by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import fx, nn

__all__ = [
    "FUNCTION_HANDLERS", "METHOD_HANDLERS", "MODULE_HANDLERS", "MODULE_KINDS", "Handler", "default", "handler_for",
    "is_passthrough", "register", "register_kind",
]  # fmt: skip

#: ``handler(graph_pass, node) -> value``: the node's value in the rewritten graph (a node,
#: a :class:`~octswap.rewrite.graph.passes.Pair`, or a constant). The pass is typed ``Any``
#: here so that the table does not import the pass that reads it.
Handler = Callable[[Any, fx.Node], Any]
MODULE_HANDLERS: dict[type[nn.Module], Handler] = {}
FUNCTION_HANDLERS: dict[Any, Handler] = {}
METHOD_HANDLERS: dict[str, Handler] = {}
#: Ops that keep a conv's channels as they are (BatchNorm, activations): a grouped conv
#: behind them still needs its producer's split on a group boundary.
_PASSTHROUGH_MODULES: set[type[nn.Module]] = set()
_PASSTHROUGH_FUNCTIONS: set[Any] = set()
_PASSTHROUGH_METHODS: set[str] = set()


def register(
    *,
    modules: Iterable[type[nn.Module]] = (),
    functions: Iterable[Any] = (),
    methods: Iterable[str] = (),
    passthrough: bool = False,
) -> Callable[[Handler], Handler]:
    """Register a handler for module types, functions and method names (decorator).

    ``passthrough``: the ops act channel by channel and keep the channel count.
    """

    def wrap(handler: Handler) -> Handler:
        for cls in modules:
            MODULE_HANDLERS[cls] = handler
            if passthrough:
                _PASSTHROUGH_MODULES.add(cls)
        for fn in functions:
            FUNCTION_HANDLERS[fn] = handler
            if passthrough:
                _PASSTHROUGH_FUNCTIONS.add(fn)
        for name in methods:
            METHOD_HANDLERS[name] = handler
            if passthrough:
                _PASSTHROUGH_METHODS.add(name)
        return handler

    return wrap


#: Handlers for modules recognised by what they do rather than by type (a predicate on
#: the module), tried in order when no type matches: ``(predicate, handler, passthrough)``.
MODULE_KINDS: list[tuple[Callable[[nn.Module], bool], Handler, bool]] = []


def register_kind(predicate: Callable[[nn.Module], bool], *, passthrough: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler for every module ``predicate`` accepts (decorator)."""

    def wrap(handler: Handler) -> Handler:
        MODULE_KINDS.append((predicate, handler, passthrough))
        return handler

    return wrap


def _module_handler(module: nn.Module | None) -> tuple[Handler, bool]:
    """The handler for a module (by type, else by kind) and whether it is a passthrough."""
    if type(module) in MODULE_HANDLERS:
        return MODULE_HANDLERS[type(module)], type(module) in _PASSTHROUGH_MODULES
    for predicate, handler, passthrough in MODULE_KINDS:
        if module is not None and predicate(module):
            return handler, passthrough
    return default, False


def is_passthrough(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s op keeps a conv's channels as they are (registered ``passthrough``)."""
    if node.op == "call_module":
        return _module_handler(modules.get(node.target))[1]
    if node.op == "call_function":
        return node.target in _PASSTHROUGH_FUNCTIONS
    return node.op == "call_method" and node.target in _PASSTHROUGH_METHODS


def default(p: Any, node: fx.Node) -> Any:
    """Anything without a handler takes plain tensors: merge pairs before it."""
    return p.copy_plain(node)


def handler_for(node: fx.Node, modules: dict[str, nn.Module]) -> Handler:
    """The registered handler for ``node`` (module type, function or method name); ``default`` otherwise."""
    if node.op == "call_module":
        return _module_handler(modules[node.target])[0]
    if node.op == "call_function":
        return FUNCTION_HANDLERS.get(node.target, default)
    if node.op == "call_method":
        return METHOD_HANDLERS.get(node.target, default)
    return default
