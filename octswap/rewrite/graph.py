"""Graph mode: keep (high, low) pairs flowing from conv to conv, as the paper's networks do.

The model is traced with ``torch.fx``. One forward pass over the graph gives every
tensor a *state*: plain, or a pair with a channel :class:`Layout`. Convs the plan
converts produce pairs; BatchNorm is split per branch; activations, dropout and
pooling run per branch (the low branch's pooling lands on ``ceil(high / 2)`` at every
input size: :mod:`octswap.pooling`); residual ``add``/``mul`` and channel ``cat`` combine pairs;
global average pooling pools each branch and concatenates (the official SE block).
Where a pair meets anything else (flatten, attention, channel shuffle, a kept conv,
the output) a merge is inserted: upsample the low branch, concatenate, restore the
original channel order. A conv whose input is plain becomes a "first" octave conv
(``alpha_in = 0``); a conv that receives a pair but whose plan says no octave output
becomes a "last" one (``alpha_out = 0``).

Each per-op rule is a small handler in a registry keyed by module type, function or
method name (like fvcore's op-handle table).
"""

from __future__ import annotations

import copy
import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from octswap.errors import ConversionError
from octswap.eval_mode import eval_mode
from octswap.octave import OctaveBatchNorm2d, OctaveConv2d, downsample, upsample
from octswap.plan import LayerDecision, Plan, example_input
from octswap.pooling import FUNCTION_OPS, MODULE_OPS, pool_low, pool_parameters
from octswap.rewrite import register_rewriter
from octswap.rewrite.layer import replace_module

__all__ = [
    "ORIGIN",
    "Layout",
    "merge_ordered",
    "plan_graph",
    "pooled_merge",
    "rewrite_graph",
    "split_ordered",
    "stochastic_depth_pair",
    "take_channels",
    "trace",
]

logger = logging.getLogger(__name__)

#: ``node.meta`` key of the rewritten graph: which node of the traced original a node
#: carries, as ``(original node name, role, restore)`` tuples; role ``plain``, ``high``
#: or ``low``; ``restore`` (high only) reorders a merged pair to the original channels.
#: Fidelity measurements use it to compare stage outputs (:mod:`octswap.fidelity`).
ORIGIN = "octswap_origin"


# ------------------------------------------------------------------ layouts
@dataclass(frozen=True)
class Layout:
    """Which original channels are high- and which low-frequency, in pair order."""

    high: tuple[int, ...]
    low: tuple[int, ...]

    @classmethod
    def standard(cls, channels: int, low: int) -> Layout:
        return cls(tuple(range(channels - low)), tuple(range(channels - low, channels)))

    @property
    def channels(self) -> int:
        return len(self.high) + len(self.low)

    @property
    def is_standard(self) -> bool:
        return self == Layout.standard(self.channels, len(self.low))

    @property
    def order(self) -> tuple[int, ...]:
        """The original channel at each position of ``[high; low]``."""
        return self.high + self.low

    @staticmethod
    def concat(parts: Sequence[Layout | int]) -> Layout:
        """Layout of a channel ``cat``; an int stands for a plain part of that many channels."""
        high: list[int] = []
        low: list[int] = []
        offset = 0
        for part in parts:
            if isinstance(part, int):
                high.extend(range(offset, offset + part))
                offset += part
            else:
                high.extend(offset + c for c in part.high)
                low.extend(offset + c for c in part.low)
                offset += part.channels
        return Layout(tuple(high), tuple(low))


# Functions the rewritten graph calls. Module-level so fx code generation can name them.
def merge_ordered(high: torch.Tensor, low: torch.Tensor, restore: Sequence[int] | None) -> torch.Tensor:
    """Merge a pair (upsample low, concatenate) and restore the original channel order."""
    merged = torch.cat([high, upsample(low, high.shape[-2:])], dim=1)
    return merged if restore is None else merged[:, list(restore)]


def split_ordered(x: torch.Tensor, high: Sequence[int], low: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a plain tensor into a pair with the given channel layout."""
    return _take(x, high), downsample(_take(x, low))


def take_channels(x: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    """Channels ``index`` of ``x`` (a slice when they are contiguous)."""
    return _take(x, index)


def _take(x: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    if len(index) and list(index) == list(range(index[0], index[0] + len(index))):
        return x[:, index[0] : index[0] + len(index)]
    return x[:, list(index)]


def pooled_merge(high: torch.Tensor, low: torch.Tensor, restore: Sequence[int] | None) -> torch.Tensor:
    """Concatenate per-branch global averages (the official octave SE block), original order."""
    merged = torch.cat([high, low], dim=1)
    return merged if restore is None else merged[:, list(restore)]


def stochastic_depth_pair(
    high: torch.Tensor, low: torch.Tensor, p: float, mode: str, training: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's stochastic depth with one random draw shared by both branches."""
    if not training or p == 0.0:
        return high, low
    shape = [high.shape[0]] + [1] * (high.ndim - 1) if mode == "row" else [1] * high.ndim
    keep = 1.0 - p
    noise = torch.empty(shape, dtype=high.dtype, device=high.device).bernoulli_(keep)
    if keep > 0.0:
        noise.div_(keep)
    return high * noise, low * noise


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


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` in eval mode, with a clear error when it fails.

    Traces a shallow copy: fx stores tensor constants (``_tensor_constant0``...) on the
    root it traces, and they must be numbered the same on every trace (checkpoint replay).
    """
    try:
        with eval_mode(model):
            return fx.symbolic_trace(copy.copy(model))
    except Exception as err:  # noqa: BLE001 - fx raises many kinds for untraceable code
        raise ConversionError(
            f"the model does not trace with torch.fx ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "use --mode layer"
        ) from err


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


# ---------------------------------------------------------------- the pass
class _Pass:
    """One forward pass over the traced graph, building the rewritten graph."""

    def __init__(self, gm: fx.GraphModule, targets: dict[str, Target], *, root: nn.Module | None) -> None:
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
        calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        self.shared = {name: n for name, n in calls.items() if n > 1}  # module -> calls per forward
        self.granularity = _group_granularity(gm, self.modules)

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
                restore = None if value.layout.is_standard else _inverse(value.layout.order)
                self.merged[key] = self.graph.call_function(merge_ordered, (value.high, value.low, restore))
                self.boundaries.append({"kind": "merge", "after": node.name, "before": consumer.name,
                                        "reason": why or _describe(consumer, self.modules)})  # fmt: skip
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
                self.env[node] = _handler(node, self.modules)(self, node)
            _tag(node.name, self.env.get(node))
        return self.graph


def _tag(name: str, value: Any) -> None:
    """Record in the new graph which original node a value stands for (see :data:`ORIGIN`)."""
    if isinstance(value, Pair):
        restore = None if value.layout.is_standard else _inverse(value.layout.order)
        value.high.meta.setdefault(ORIGIN, []).append((name, "high", restore))
        value.low.meta.setdefault(ORIGIN, []).append((name, "low", None))
    elif isinstance(value, fx.Node):
        value.meta.setdefault(ORIGIN, []).append((name, "plain", None))


def _inverse(order: Sequence[int]) -> tuple[int, ...]:
    inverse = [0] * len(order)
    for position, channel in enumerate(order):
        inverse[channel] = position
    return tuple(inverse)


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} {node.target}"
    if node.op == "call_method":
        return f".{node.target}()"
    return str(getattr(node.target, "__name__", node.target))


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    return f"{_op_name(node, modules)} takes a plain tensor"


def _group_granularity(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> dict[str, int]:
    """For convs feeding a grouped conv (through BN/activations): the group size their low
    channel count must be a multiple of, so the pair reaches the grouped conv aligned."""
    result: dict[str, int] = {}
    for node in gm.graph.nodes:
        conv = modules.get(node.target) if node.op == "call_module" else None
        if type(conv) is not nn.Conv2d or conv.groups == 1 or conv.groups == conv.in_channels:
            continue
        size = conv.in_channels // conv.groups
        prev = node.args[0]
        while isinstance(prev, fx.Node) and _is_passthrough(prev, modules):
            prev = prev.args[0]
        if isinstance(prev, fx.Node) and prev.op == "call_module" and type(modules.get(prev.target)) is nn.Conv2d:
            result[prev.target] = math.lcm(result.get(prev.target, 1), size)
    return result


# ---------------------------------------------------------------- handlers
Handler = Callable[[_Pass, fx.Node], Any]

_UNARY_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardtanh, nn.Softplus, nn.Dropout, nn.Dropout2d, nn.Identity,
)  # fmt: skip
_UNARY_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.silu, F.hardswish, F.hardsigmoid, torch.sigmoid,
    F.sigmoid, torch.tanh, F.gelu, F.leaky_relu, F.elu, F.hardtanh, F.dropout, F.mish,
)  # fmt: skip
_UNARY_METHODS = ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone")
_BINARY_FUNCTIONS = (operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul,
                     operator.sub, torch.sub, operator.truediv, torch.div)  # fmt: skip
_BINARY_METHODS = ("add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_")


def _is_passthrough(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) in (*_UNARY_MODULES, nn.BatchNorm2d)
    if node.op == "call_function":
        return node.target in _UNARY_FUNCTIONS
    return node.op == "call_method" and node.target in _UNARY_METHODS


def _default(p: _Pass, node: fx.Node) -> Any:
    return p.copy_plain(node)


def _conv(p: _Pass, node: fx.Node) -> Any:
    name = node.target
    conv = p.modules[name]
    target = p.targets.get(name)
    x = p.value(node.args[0])
    if target is None or not target.accepts_pair or name in p.shared:
        if name in p.shared:
            reason = f"called {p.shared[name]} times in one forward pass (shared weights)"
        else:
            reason = target.reason if target else "not planned"
        p.outcomes[name] = Outcome(reason=reason)
        return p.copy_plain(node, f"{name} stays plain ({reason})")
    outcome = Outcome(reason=target.reason)
    source = x
    if isinstance(x, Pair):
        gin = conv.in_channels // conv.groups
        aligned = conv.groups == 1 or (x.layout.is_standard and len(x.layout.low) % gin == 0)
        if aligned:
            outcome.in_low = len(x.layout.low)
            outcome.in_order = None if x.layout.is_standard else x.layout.order
            p.useful |= x.origins
        else:
            source = p.plain(node.args[0], node, f"grouped conv {name} needs its split on a group boundary")
    out_low = target.out_low
    granularity = p.granularity.get(name, 1)
    outcome.out_low = out_low - out_low % granularity
    p.outcomes[name] = outcome
    if outcome.in_low == 0 and outcome.out_low == 0:
        return p.graph.call_module(name, (p.plain(node.args[0], node),))
    if p.root is not None:
        octave = OctaveConv2d.from_conv(conv, in_low=outcome.in_low, out_low=outcome.out_low, in_order=outcome.in_order)
        p.set_module(name, octave)
    arg = (source.high, source.low) if isinstance(source, Pair) else source
    call = p.graph.call_module(name, (arg,))
    if outcome.out_low == 0:
        return call
    return p.pair_from_tuple(call, Layout.standard(conv.out_channels, outcome.out_low), frozenset({name}))


def _batchnorm(p: _Pass, node: fx.Node) -> Any:
    x = p.value(node.args[0])
    if not isinstance(x, Pair) or node.target in p.shared:
        return p.copy_plain(node)
    if p.root is not None:
        bn = p.modules[node.target]
        order = None if x.layout.is_standard else x.layout.order
        p.set_module(node.target, OctaveBatchNorm2d.from_bn(bn, low=len(x.layout.low), order=order))
    call = p.graph.call_module(node.target, ((x.high, x.low),))
    return p.pair_from_tuple(call, x.layout, x.origins)


def _unary(p: _Pass, node: fx.Node) -> Any:
    x = p.value(node.args[0]) if node.args else None
    if not isinstance(x, Pair):
        return p.copy_plain(node)
    return p.per_branch(node, x, node.args[1:])


def _stochastic_depth(p: _Pass, node: fx.Node) -> Any:
    x = p.value(node.args[0])
    if not isinstance(x, Pair):
        return p.copy_plain(node)
    rest = tuple(p.plain(a, node) for a in node.args[1:])
    kwargs = {k: p.plain(v, node) for k, v in node.kwargs.items() if k != "input"}
    call = p.graph.call_function(stochastic_depth_pair, (x.high, x.low, *rest), kwargs)
    return p.pair_from_tuple(call, x.layout, x.origins)


def _pool(p: _Pass, node: fx.Node) -> Any:
    """Max/average pooling: per branch, the low branch through :func:`~octswap.pooling.pool_low`
    so that it stays ``ceil(high/2)`` at every input size (the high branch runs the op as is)."""
    x = p.value(node.args[0])
    out = _shape(node)
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
    in_shape = _shape(node.args[0])
    assert in_shape is not None
    dummy = torch.zeros(1, 1, (in_shape[2] + 1) // 2, (in_shape[3] + 1) // 2)
    try:
        low_out = fn(dummy, *rest, **node.kwargs)
    except RuntimeError:  # e.g. a kernel larger than the low map
        low_out = None
    if low_out is None or tuple(low_out.shape[-2:]) != ((out[2] + 1) // 2, (out[3] + 1) // 2):
        return p.copy_plain(node, f"{_op_name(node, p.modules)} would break the half-size low map")
    kwargs = {k: p.plain(v, node) for k, v in node.kwargs.items()}
    high = p.graph.create_node(node.op, node.target, (x.high, *rest), kwargs, name=f"{node.name}_h")
    low = p.graph.call_function(pool_low, (x.low, high, op), params)
    return replace(x, high=high, low=low)


def _global_pool(p: _Pass, node: fx.Node) -> Any:
    """Adaptive average pooling to 1x1 / mean over H, W: pool each branch, concatenate."""
    x = p.value(node.args[0])
    out = _shape(node)
    global_pool = out is not None and (len(out) == 2 or (len(out) == 4 and out[2:] == (1, 1)))
    if node.op == "call_method":  # x.mean(dims, keepdim)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        global_pool = global_pool and isinstance(dims, (list, tuple)) and sorted(d % 4 for d in dims) == [2, 3]
    if not isinstance(x, Pair) or not global_pool:
        return p.copy_plain(node)
    branches = p.per_branch(node, x, node.args[1:])
    restore = None if x.layout.is_standard else _inverse(x.layout.order)
    p.boundaries.append({"kind": "pooled-merge", "after": node.args[0].name, "before": node.name,
                         "reason": "global average pooling of each branch, concatenated"})  # fmt: skip
    return p.graph.call_function(pooled_merge, (branches.high, branches.low, restore))


def _binary(p: _Pass, node: fx.Node) -> Any:
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
        if a.layout != b.layout:
            raise ConversionError(
                f"{node.name}: operands have different channel splits: "
                f"{len(a.layout.low)} low of {a.layout.channels} from {', '.join(sorted(a.origins))} vs "
                f"{len(b.layout.low)} low of {b.layout.channels} from {', '.join(sorted(b.origins))}; "
                "give these convs the same alpha in the policy"
            )
        pair, other_high, other_low = a, b.high, b.low
        origins = a.origins | b.origins
    else:
        pair = a if isinstance(a, Pair) else b
        other_node = b_node if isinstance(a, Pair) else a_node
        other_high, other_low, origins = None, None, pair.origins
        shape = _shape(other_node)
        full = _shape(node)
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


def _cat(p: _Pass, node: fx.Node) -> Any:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    values = [p.value(t) for t in tensors] if isinstance(tensors, (list, tuple)) else []
    shapes = [_shape(t) for t in tensors] if values else []
    if not any(isinstance(v, Pair) for v in values) or not all(s is not None and len(s) == 4 for s in shapes):
        return p.copy_plain(node)
    if dim not in (1, -3):
        return p.copy_plain(node)
    parts: list[Layout | int] = []
    highs, lows = [], []
    origins: frozenset[str] = frozenset()
    for tensor, value, shape in zip(tensors, values, shapes):
        if isinstance(value, Pair):
            parts.append(value.layout)
            highs.append(value.high)
            lows.append(value.low)
            origins |= value.origins
        else:
            parts.append(shape[1])  # type: ignore[index]
            highs.append(p.plain(tensor, node))
    high = p.graph.call_function(torch.cat, (highs,), {"dim": 1}) if len(highs) > 1 else highs[0]
    low = p.graph.call_function(torch.cat, (lows,), {"dim": 1}) if len(lows) > 1 else lows[0]
    return Pair(high, low, Layout.concat(parts), origins)


_MODULE_HANDLERS: dict[type[nn.Module], Handler] = {
    nn.Conv2d: _conv,
    nn.BatchNorm2d: _batchnorm,
    nn.AdaptiveAvgPool2d: _global_pool,
    **{cls: _pool for cls in MODULE_OPS},
    **{cls: _unary for cls in _UNARY_MODULES},
}
_FUNCTION_HANDLERS: dict[Any, Handler] = {
    F.adaptive_avg_pool2d: _global_pool,
    torch.cat: _cat,
    torch.concat: _cat,
    **{fn: _pool for fn in FUNCTION_OPS},
    **{fn: _unary for fn in _UNARY_FUNCTIONS},
    **{fn: _binary for fn in _BINARY_FUNCTIONS},
}
_METHOD_HANDLERS: dict[str, Handler] = {
    "mean": _global_pool,
    **{name: _unary for name in _UNARY_METHODS},
    **{name: _binary for name in _BINARY_METHODS},
}

try:  # torchvision's stochastic depth (EfficientNet, ConvNeXt...) is an fx-wrapped function
    from torchvision.ops.stochastic_depth import stochastic_depth as _tv_stochastic_depth

    _FUNCTION_HANDLERS[_tv_stochastic_depth] = _stochastic_depth
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass


def _handler(node: fx.Node, modules: dict[str, nn.Module]) -> Handler:
    if node.op == "call_module":
        return _MODULE_HANDLERS.get(type(modules[node.target]), _default)
    if node.op == "call_function":
        return _FUNCTION_HANDLERS.get(node.target, _default)
    if node.op == "call_method":
        return _METHOD_HANDLERS.get(node.target, _default)
    return _default


# ---------------------------------------------------------------- planning
def _targets(decisions: Sequence[LayerDecision]) -> dict[str, Target]:
    return {
        d.name: Target(out_low=d.out_low if d.action == "octave" else 0, accepts_pair=d.accepts_pair, reason=d.reason)
        for d in decisions
    }


def _traced_with_shapes(model: nn.Module, input_shape: tuple[int, int, int]) -> fx.GraphModule:
    gm = trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input(input_shape))
    return gm


def plan_graph(
    model: nn.Module, decisions: Sequence[LayerDecision], input_shape: tuple[int, int, int]
) -> tuple[tuple[LayerDecision, ...], tuple[dict[str, str], ...]]:
    """Turn policy decisions into graph-mode decisions: first/last/octave per conv, boundaries.

    A conv whose octave output would only be merged again (no octave conv consumes it)
    stays plain; the pass repeats until no such conv is left.
    """
    gm = _traced_with_shapes(model, input_shape)
    targets = _targets(decisions)
    islands: dict[str, str] = {}
    for _ in range(len(decisions) + 1):
        p = _Pass(gm, targets, root=None)
        p.run()
        lonely = [name for name, o in p.outcomes.items() if o.out_low > 0 and name not in p.useful]
        if not lonely:
            break
        for name in lonely:
            islands[name] = "no octave conv consumes its output"
            t = targets[name]
            targets[name] = Target(0, t.accepts_pair, t.reason)
    final = []
    for d in decisions:
        outcome = p.outcomes.get(d.name)
        if outcome is None:
            why = d.reason if d.action == "keep" else "not reached by the traced graph"
            final.append(replace(d, action="keep", alpha_in=0.0, alpha_out=0.0, in_low=0, out_low=0, reason=why))
            continue
        in_low, out_low = outcome.in_low, outcome.out_low
        why = f"{islands[d.name]}; {outcome.reason}" if d.name in islands else outcome.reason
        if in_low == 0 and out_low == 0:
            final.append(replace(d, action="keep", alpha_in=0.0, alpha_out=0.0, in_low=0, out_low=0, reason=why))
            continue
        role = "first: plain input; " if in_low == 0 else "last: " if out_low == 0 else ""
        final.append(replace(
            d, action="octave", in_low=in_low, out_low=out_low, reason=role + why,
            alpha_in=round(in_low / d.site.in_channels, 6), alpha_out=round(out_low / d.site.out_channels, 6),
        ))  # fmt: skip
    return tuple(final), tuple(p.boundaries)


# ---------------------------------------------------------------- rewriting
@register_rewriter("graph")
def rewrite_graph(model: nn.Module, plan: Plan) -> fx.GraphModule:
    """Rebuild ``model`` as an ``fx.GraphModule`` in which pairs flow between layers."""
    gm = _traced_with_shapes(model, plan.input_shape)
    targets = {
        d.name: Target(out_low=d.out_low, accepts_pair=d.action == "octave", reason=d.reason) for d in plan.layers
    }
    # Octave modules replace convs and BatchNorms inside the traced module (which holds
    # the model's own submodules and fx's tensor constants); the new GraphModule then
    # takes its submodules from it by qualified name.
    root = gm
    p = _Pass(gm, targets, root=root)
    graph = p.run()
    for d in plan.layers:
        outcome = p.outcomes.get(d.name)
        got = (outcome.in_low, outcome.out_low) if outcome else (0, 0)
        want = (d.in_low, d.out_low) if d.action == "octave" else (0, 0)
        if got != want:
            raise ConversionError(f"{d.name}: the plan expects {want[0]}/{want[1]} low channels, the graph gives {got[0]}/{got[1]}")
    graph.lint()
    new = fx.GraphModule(root, graph, class_name=f"Octave{type(model).__name__}")
    new.recompile()
    new.training = model.training  # submodules keep their own flags (frozen BatchNorm stays frozen)
    return new


