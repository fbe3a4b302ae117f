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
    if target is None or not target.accepts_pair or name in p.shared or name in p.read_directly:
        if name in p.shared:
            reason = f"called {p.shared[name]} times in one forward pass (shared weights)"
        elif name in p.read_directly:
            reason = f"its parameters are also used directly by the forward ({p.read_directly[name]})"
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
