"""Per-channel normalisation split per branch: BatchNorm, and modules that act channel by
channel like it (timm's BatchNormAct2d and its frozen/sync variants, torchvision's
FrozenBatchNorm2d), recognised by what they are, not one class at a time; GroupNorm
(FPN and segmentation decoders) where the split falls on a group boundary."""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from octswap.layers import OctaveBatchNorm2d, OctaveChannelwise, split_group_norm
from octswap.rewrite.graph.handler_registry import register, register_kind
from octswap.rewrite.graph.passes import GraphPass, Pair

__all__ = ["batchnorm", "channelwise", "group_norm", "is_channelwise"]

#: Per-channel activations and dropout a norm module may carry (timm's ``act``/``drop``).
_ELEMENTWISE = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.PReLU, nn.Dropout, nn.Dropout2d,
)  # fmt: skip


def _later_call(p: GraphPass, node: fx.Node) -> Any:
    """A later call of a norm module called several times per forward (a detection head's
    norm, shared by the pyramid levels): the way its first call ran -- plain, or per branch
    with the input brought to the first call's layout. None for a first or only call."""
    name = node.target
    if name not in p.shared or name not in p.first_layouts:
        return None
    layout = p.first_layouts[name]
    if layout is None:
        return p.copy_plain(node, f"shared {name} takes a plain input at its first call")
    pair = p.as_layout(node.args[0], node, layout, f"shared {name} takes the split of its first call")
    call = p.graph.call_module(name, ((pair.high, pair.low),))
    return p.pair_from_tuple(call, layout, pair.origins)


def _first_call(p: GraphPass, node: fx.Node, layout: Any) -> None:
    if node.target in p.shared:
        p.first_layouts[node.target] = layout


@register(modules=(nn.BatchNorm2d,), passthrough=True)
def batchnorm(p: GraphPass, node: fx.Node) -> Any:
    x = p.value(node.args[0])
    if (later := _later_call(p, node)) is not None:
        return later
    if not isinstance(x, Pair):
        _first_call(p, node, None)
        return p.copy_plain(node)
    _first_call(p, node, x.layout)
    if p.root is not None:
        bn = p.modules[node.target]
        order = None if x.layout.is_standard else x.layout.order
        p.set_module(node.target, OctaveBatchNorm2d.from_bn(bn, low=len(x.layout.low), order=order))
    call = p.graph.call_module(node.target, ((x.high, x.low),))
    return p.pair_from_tuple(call, x.layout, x.origins)


def is_channelwise(module: nn.Module) -> bool:
    """A BatchNorm-like module (per-channel statistics and affine) whose submodules, if any,
    are element-wise (an activation, dropout): it acts on each channel on its own."""
    batchnorm_like = isinstance(module, nn.modules.batchnorm._BatchNorm) or (
        type(module).__name__.startswith("FrozenBatchNorm")
        and all(hasattr(module, name) for name in ("weight", "bias", "running_mean", "running_var"))
    )
    return batchnorm_like and all(isinstance(child, _ELEMENTWISE) or type(child).__module__.startswith("timm.layers.activations")
                                  for child in module.children())  # fmt: skip


@register_kind(is_channelwise, passthrough=True)
def channelwise(p: GraphPass, node: fx.Node) -> Any:
    x = p.value(node.args[0])
    if (later := _later_call(p, node)) is not None:
        return later
    if not isinstance(x, Pair) or len(node.args) != 1 or node.kwargs:
        _first_call(p, node, None)
        return p.copy_plain(node)
    _first_call(p, node, x.layout)
    if p.root is not None:
        module = p.modules[node.target]
        split = OctaveChannelwise.from_module(module, channels=x.layout.channels, high=x.layout.high, low=x.layout.low)
        p.set_module(node.target, split.train(module.training))
    call = p.graph.call_module(node.target, ((x.high, x.low),))
    return p.pair_from_tuple(call, x.layout, x.origins)


@register(modules=(nn.GroupNorm,), passthrough=True)
def group_norm(p: GraphPass, node: fx.Node) -> Any:
    """GroupNorm per branch (:func:`~octswap.layers.split_group_norm`) when the pair is in
    the original channel order and its low channels are whole groups; the planner aligns
    the producing conv's split to the group size (:func:`~octswap.rewrite.graph.passes.group_granularity`)."""
    x = p.value(node.args[0])
    gn = p.modules[node.target]
    size = gn.num_channels // gn.num_groups
    if (later := _later_call(p, node)) is not None:
        return later
    if not isinstance(x, Pair) or not x.layout.is_standard or len(x.layout.low) % size:
        _first_call(p, node, None)
        return p.copy_plain(node)
    _first_call(p, node, x.layout)
    if p.root is not None:
        p.set_module(node.target, split_group_norm(gn, low=len(x.layout.low)))
    call = p.graph.call_module(node.target, ((x.high, x.low),))
    return p.pair_from_tuple(call, x.layout, x.origins)
