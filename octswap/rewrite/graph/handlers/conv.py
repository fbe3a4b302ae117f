"""Convs: octave convs where the plan says so ("first", "last" or pair to pair)."""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from octswap.layers import OctaveConv2d
from octswap.rewrite.graph.handler_registry import register, register_kind
from octswap.rewrite.graph.layout import Layout
from octswap.rewrite.graph.passes import GraphPass, Outcome, Pair

__all__ = ["conv"]


def _is_conv_subclass(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)


# Subclasses too (timm's Conv2dSame, weight-standardized convs): the plan says which of
# them convert; the others stay plain with their reason.
@register_kind(_is_conv_subclass)
@register(modules=(nn.Conv2d,))
def conv(p: GraphPass, node: fx.Node) -> Any:
    name = node.target
    conv = p.modules[name]
    target = p.targets.get(name)
    x = p.value(node.args[0])
    if name in p.shared and name in p.outcomes:
        return _repeated_call(p, node, p.outcomes[name])
    if target is None or not target.accepts_pair or name in p.read_directly:
        if name in p.inconsistent:
            reason = p.inconsistent[name]
        elif name in p.read_directly:
            reason = f"its parameters are also used directly by the forward ({p.read_directly[name]})"
        else:
            reason = target.reason if target else "not planned"
        p.outcomes[name] = Outcome(reason=reason)
        return p.copy_plain(node, f"{name} stays plain ({reason})")
    shared = ""
    if name in p.shared:
        shared = f"; called {p.shared[name]} times per forward (shared weights), same split each time"
    outcome = Outcome(reason=target.reason + shared)
    source = x
    if isinstance(x, Pair) and name in p.shared:
        p.first_origins[name] = x.origins
    if isinstance(x, Pair):
        gin = conv.in_channels // conv.groups
        aligned = conv.groups == 1 or (x.layout.is_standard and len(x.layout.low) % gin == 0)
        if aligned:
            outcome.in_low = len(x.layout.low)
            outcome.in_order = None if x.layout.is_standard else x.layout.order
            outcome.in_layout = x.layout
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


def _repeated_call(p: GraphPass, node: fx.Node, first: Outcome) -> Any:
    """A later call of a conv called several times per forward (a detection head shared by
    the pyramid levels): the module the first call made, its input merged or split to the
    first call's layout where this call's differs (recorded as a boundary)."""
    name, conv = node.target, p.modules[node.target]
    x = p.value(node.args[0])
    if isinstance(x, Pair) and name in p.first_origins:
        p.joins.append(x.origins | p.first_origins[name])
    if first.in_low == 0 and first.out_low == 0:
        return p.copy_plain(node, f"{name} stays plain ({first.reason})")
    layout = first.in_layout
    if layout is None and isinstance(x, Pair) or layout is not None and (not isinstance(x, Pair) or x.layout != layout):
        # Planning keeps such a conv plain (see plan_traced): merging or splitting for it
        # would cost more than it saves.
        p.inconsistent[name] = (f"called {p.shared[name]} times in one forward pass (shared weights), "
                                "with differently split inputs")  # fmt: skip
    if layout is None:
        arg: Any = p.plain(node.args[0], node, f"shared conv {name} takes a plain input at its first call")
    else:
        pair = p.as_layout(node.args[0], node, layout, f"shared conv {name} takes the split of its first call")
        p.useful |= pair.origins
        arg = (pair.high, pair.low)
    call = p.graph.call_module(name, (arg,))
    if first.out_low == 0:
        return call
    return p.pair_from_tuple(call, Layout.standard(conv.out_channels, first.out_low), frozenset({name}))
