"""The graph-mode pass: one forward walk over the traced graph, building the rewritten one.

Every node of the traced original is handled by a *handler* looked up by module type,
function or method name (like fvcore's op-handle table). The handlers, one op family
per module, live in :mod:`octswap.rewrite.graph.handlers` and register in the handler
table, :mod:`octswap.rewrite.graph.handler_registry`; an op without a handler takes plain
tensors (pairs are merged first).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Any

from torch import fx, nn

from octswap.errors import ConversionError
from octswap.layers import is_convertible_conv, merge_ordered, split_ordered
from octswap.rewrite.graph.handler_registry import handler_for, is_passthrough
from octswap.rewrite.graph.layout import Layout, inverse
from octswap.rewrite.graph.tracing import mutated_by
from octswap.rewrite.layer import replace_module

__all__ = ["ORIGIN", "GraphPass", "Outcome", "Pair", "Target", "describe", "op_name", "shape_of"]

#: ``node.meta`` key of the rewritten graph: which node of the traced original a node
#: carries, as ``(original node name, role, restore)`` tuples; role ``plain``, ``high``
#: or ``low``; ``restore`` (high only) reorders a merged pair to the original channels.
#: Fidelity measurements use it to compare stage outputs (:mod:`octswap.fidelity`).
ORIGIN = "octswap_origin"


# ------------------------------------------------------------------ values
@dataclass(frozen=True)
class Pair:
    """A two-frequency value in the new graph."""

    high: fx.Node
    low: fx.Node
    layout: Layout
    origins: frozenset[str]  # the convs whose octave outputs flow into it


@dataclass(frozen=True)
class Target:
    """What the plan wants from one conv."""

    out_low: int
    accepts_pair: bool
    reason: str


@dataclass
class Outcome:
    in_low: int = 0
    out_low: int = 0
    reason: str = ""
    in_order: tuple[int, ...] | None = None
    in_layout: Layout | None = None  # the pair it takes (a shared conv's later calls take the same)


def shape_of(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class GraphPass:
    """One forward pass over the traced graph, building the rewritten graph."""

    def __init__(self, gm: fx.GraphModule, targets: dict[str, Target], *, root: nn.Module | None,
                 inconsistent: dict[str, str] | None = None) -> None:  # fmt: skip
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.targets = targets
        self.root = root  # where octave modules go; None while planning
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.merged: dict[int, fx.Node] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.boundaries: list[dict[str, str]] = []
        self.useful: set[str] = set()
        #: Sets of convs whose octave outputs meet (two pairs added or multiplied, the inputs of
        #: one shared conv): one split for all of them keeps the pairs flowing (the tuner's units).
        self.joins: list[frozenset[str]] = []
        #: Shared convs: the convs whose outputs reached their first call.
        self.first_origins: dict[str, frozenset[str]] = {}
        #: Shared convs whose calls get differently split inputs, with why (kept plain when planning).
        self.inconsistent: dict[str, str] = dict(inconsistent or {})
        #: Shared norm modules: the layout their first call got (None: plain), which later calls take.
        self.first_layouts: dict[str, Layout | None] = {}
        calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        self.shared = {name: n for name, n in calls.items() if n > 1}  # module -> calls per forward
        # Modules whose parameters the forward also reads directly (F.conv2d(x, self.t.weight)).
        self.read_directly = {
            node.target.rpartition(".")[0]: node.name
            for node in gm.graph.nodes
            if node.op == "get_attr" and node.target.rpartition(".")[2] in ("weight", "bias")
        }
        self.granularity = group_granularity(gm, self.modules)

    # -- helpers used by the handlers
    def value(self, arg: Any) -> Any:
        return fx.node.map_arg(arg, lambda n: self.env[n]) if isinstance(arg, fx.Node) else arg

    def plain(self, arg: Any, consumer: fx.Node, why: str = "") -> Any:
        """The plain version of an argument (nested args too), merging pairs."""

        def one(node: fx.Node) -> fx.Node:
            value = self.env[node]
            if not isinstance(value, Pair):
                return value
            key = id(value)
            if key not in self.merged:
                restore = None if value.layout.is_standard else inverse(value.layout.order)
                self.merged[key] = self.graph.call_function(merge_ordered, (value.high, value.low, restore))
                self.boundaries.append({"kind": "merge", "after": node.name, "before": consumer.name,
                                        "reason": why or describe(consumer, self.modules)})  # fmt: skip
            return self.merged[key]

        return fx.node.map_arg(arg, one)

    def copy_plain(self, node: fx.Node, why: str = "") -> fx.Node:
        return self.graph.node_copy(node, lambda n: self.plain(n, node, why))

    def per_branch(self, node: fx.Node, pair: Pair, rest: tuple[Any, ...] = ()) -> Pair:
        """Apply ``node``'s op to each branch (its first argument replaced by the branch)."""
        kwargs = {k: self.plain(v, node) for k, v in node.kwargs.items()}
        rest = tuple(self.plain(a, node) for a in rest)
        high = self.graph.create_node(node.op, node.target, (pair.high, *rest), kwargs, name=f"{node.name}_h")
        low = self.graph.create_node(node.op, node.target, (pair.low, *rest), kwargs, name=f"{node.name}_l")
        return replace(pair, high=high, low=low)

    def pair_from_tuple(self, node: fx.Node, layout: Layout, origins: frozenset[str]) -> Pair:
        high = self.graph.call_function(operator.getitem, (node, 0))
        low = self.graph.call_function(operator.getitem, (node, 1))
        return Pair(high, low, layout, origins)

    def as_layout(self, arg: fx.Node, consumer: fx.Node, layout: Layout, why: str) -> Pair:
        """``arg`` as a pair with ``layout``: as it is when it has that layout, else merged
        (if a pair) and split again, recorded as a boundary."""
        value = self.env[arg]
        if isinstance(value, Pair) and value.layout == layout:
            return value
        split = self.graph.call_function(split_ordered, (self.plain(arg, consumer, why), layout.high, layout.low))
        self.boundaries.append({"kind": "split", "after": arg.name, "before": consumer.name, "reason": why})
        origins = value.origins if isinstance(value, Pair) else frozenset()
        return self.pair_from_tuple(split, layout, origins)

    def set_module(self, name: str, module: nn.Module) -> None:
        if self.root is not None:
            replace_module(self.root, name, module)

    # -- driver
    def run(self) -> fx.Graph:
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                self.env[node] = self.graph.node_copy(node)
            elif node.op == "output":
                self.graph.output(self.plain(node.args[0], node, "model output"))
            else:
                mutated = mutated_by(node)
                if isinstance(mutated, fx.Node) and isinstance(self.env.get(mutated), Pair):
                    raise ConversionError(f"graph mode cannot keep the effect of in-place {op_name(node, self.modules)} "
                                          f"on an octave pair ({mutated.name}): it would mutate a merged copy")  # fmt: skip
                self.env[node] = handler_for(node, self.modules)(self, node)
            tag(node.name, self.env.get(node))
        return self.graph


def tag(name: str, value: Any) -> None:
    """Record in the new graph which original node a value stands for (see :data:`ORIGIN`)."""
    if isinstance(value, Pair):
        restore = None if value.layout.is_standard else inverse(value.layout.order)
        value.high.meta.setdefault(ORIGIN, []).append((name, "high", restore))
        value.low.meta.setdefault(ORIGIN, []).append((name, "low", None))
    elif isinstance(value, fx.Node):
        value.meta.setdefault(ORIGIN, []).append((name, "plain", None))


def op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} {node.target}"
    if node.op == "call_method":
        return f".{node.target}()"
    return str(getattr(node.target, "__name__", node.target))


def describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    return f"{op_name(node, modules)} takes a plain tensor"


def group_granularity(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> dict[str, int]:
    """For convs feeding a grouped conv or a GroupNorm (through BN/activations): the group
    size their low channel count must be a multiple of, so the pair reaches it aligned."""
    result: dict[str, int] = {}
    for node in gm.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.GroupNorm):
            size = module.num_channels // module.num_groups
        elif module is not None and is_convertible_conv(module) and 1 < module.groups < module.in_channels:
            size = module.in_channels // module.groups
        else:
            continue
        prev = node.args[0]
        while isinstance(prev, fx.Node) and is_passthrough(prev, modules):
            prev = prev.args[0]
        if isinstance(prev, fx.Node) and prev.op == "call_module" and is_convertible_conv(modules.get(prev.target)):
            result[prev.target] = math.lcm(result.get(prev.target, 1), size)
    return result
