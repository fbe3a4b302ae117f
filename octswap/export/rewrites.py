"""ONNX graph rewrites that let ONNX Runtime fuse an octave model's sums.

ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc) and folds
one addition into each convolution ("Conv + Sum" fusion) and an activation after it
(``onnxruntime/core/optimizer/nchwc_transformer.cc``). It fuses an ``Add`` only when
one operand comes straight from a single-use ``Conv``. An octave conv's high output
is ``h2h(x_h) + upsample(l2h(x_l))``; a residual block adds its shortcut to that:
``(conv + up) + shortcut``. The inner sum fuses, the outer one and the ReLU after it
then run as separate passes over the full-resolution map. Re-associated as
``conv + (up + shortcut)`` the conv takes the whole sum and the ReLU, as in the
original network.

Rules are written with ``onnxscript.rewriter`` patterns. Re-association changes
float rounding only; every export is validated against PyTorch after the rewrite.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fusion_rules", "rewrite_for_onnxruntime"]


def _single_use_conv(value: Any) -> bool:
    producer = value.producer()
    return producer is not None and producer.op_type == "Conv" and producer.domain in ("", "ai.onnx") and len(value.uses()) == 1


def _sum_of_three(op: Any, conv: Any, other: Any, shortcut: Any) -> Any:
    return op.Add(op.Add(conv, other), shortcut)


def _conv_takes_the_sum(op: Any, conv: Any, other: Any, shortcut: Any) -> Any:
    return op.Add(conv, op.Add(other, shortcut))


def _reassociate(context: Any, conv: Any, other: Any, shortcut: Any, **_: Any) -> bool:
    # The shortcut must not itself be a fusable conv output (ONNX Runtime would fuse
    # that one already), which also keeps the rule from undoing its own rewrite.
    if not _single_use_conv(conv) or _single_use_conv(shortcut):
        return False
    # Same shapes on all three, so moving the brackets cannot change broadcasting.
    shapes = [v.shape for v in (conv, other, shortcut)]
    return all(s is not None for s in shapes) and shapes[0] == shapes[1] == shapes[2]


def fusion_rules() -> Any:
    """The rule set (an ``onnxscript.rewriter.pattern.RewriteRuleSet``)."""
    from onnxscript.rewriter import pattern

    rule = pattern.RewriteRule(_sum_of_three, _conv_takes_the_sum, _reassociate, name="ConvTakesTheSum")
    return pattern.RewriteRuleSet([rule], commute=True)


def rewrite_for_onnxruntime(model: Any) -> int:
    """Apply :func:`fusion_rules` to an ``onnx_ir`` model in place; returns the number of rewrites."""
    return int(fusion_rules().apply_to_model(model))
