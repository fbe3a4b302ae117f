"""Layer-wise conversion: each selected conv becomes a self-contained octave block.

Every block takes and returns a plain tensor (split -> OctaveConv2d -> merge), so
the model keeps working whatever surrounds the conv. Cheaper convs, but the
split and merge around each one cost time: the graph mode keeps pairs flowing.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from octswap.errors import ConversionError
from octswap.layers import OctaveConvBlock, is_convertible_conv
from octswap.plan import LayerDecision, Plan
from octswap.rewrite.registry import register_rewriter

__all__ = ["convert_decisions", "convert_layers", "replace_module"]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Swap the submodule at dotted ``name`` for ``new``; return the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


@register_rewriter("layer")
def convert_layers(model: nn.Module, plan: Plan) -> nn.Module:
    """Replace every conv the plan converts by an :class:`OctaveConvBlock`, weights sliced in."""
    return convert_decisions(model, plan.octave_layers)


def convert_decisions(model: nn.Module, decisions: Sequence[LayerDecision]) -> nn.Module:
    """Replace the conv each decision names by an :class:`OctaveConvBlock` (split its input,
    octave conv, merge its output), with the decision's split; returns ``model``, edited.

    Raises:
        ConversionError: a decision names a module the model lacks, or one that is not a conv.
    """
    for decision in decisions:
        try:
            conv = model.get_submodule(decision.name)
        except AttributeError:
            raise ConversionError(f"plan names {decision.name!r}, which this model does not have") from None
        if not is_convertible_conv(conv):
            raise ConversionError(f"{decision.name} is a {type(conv).__name__}, which octave convs cannot stand in for")
        block = OctaveConvBlock.from_conv(
            conv, alpha_in=decision.alpha_in, alpha_out=decision.alpha_out, in_low=decision.in_low,
            out_low=decision.out_low,
        )  # fmt: skip
        replace_module(model, decision.name, block)
    return model
