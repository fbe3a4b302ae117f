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

The blocked layout keeps only some activations (``Relu``, ``Sigmoid``, ``Tanh``): a
``Clip`` after a sum (ReLU6 after an octave conv, as in MobileNet) is run in the plain
layout, with a conversion out of the blocked layout before it and one back after it
(mobilenet_v2 at alpha 0.5: 25 such Clips, 58 reorders taking 6.6 ms of a 50 ms batch-8
run on this project's CPU VM). ``clip(s, 0, hi)`` is written instead as
``r - relu(r - hi)`` with ``r = relu(s)``: the first ReLU fuses into the conv that takes
the sum, ``relu(r - hi)`` is a 1x1 depthwise conv (weight 1, bias ``-hi``) with a fused
ReLU, and the subtraction a 1x1 depthwise conv (weight -1) that takes ``r`` as its sum:
all in the blocked layout (the same model: 10 reorders left). It is exact wherever
``r <= hi`` and within one rounding of ``r`` above.

Rules are written with ``onnxscript.rewriter`` patterns. They change float rounding
only; every export is validated against PyTorch after the rewrite.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NCHWC_BLOCK", "fusion_rules", "rewrite_for_onnxruntime"]

#: Channel block of ONNX Runtime's NCHWc convolutions on AVX-512 machines (8 on AVX2):
#: a conv whose input or output channel count is not a multiple of it runs in the plain
#: layout, with the reorders around it (``nchwc_transformer.cc``).
NCHWC_BLOCK = 16


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


def _clip_of_sum(op: Any, x: Any, y: Any, low: Any, high: Any) -> Any:
    return op.Clip(op.Add(x, y), low, high)


def _scalar(value: Any) -> float | None:
    constant = getattr(value, "const_value", None)
    if constant is None:
        return None
    array = constant.numpy()
    return float(array.reshape(())) if array.size == 1 else None


def _blocked_channels(value: Any) -> int | None:
    """Channels of an ``N x C x H x W`` value, where ``C`` is a whole number of NCHWc blocks."""
    shape = value.shape
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or shape[1] % NCHWC_BLOCK:
        return None
    return int(shape[1])


def _clip_stays_blocked(context: Any, x: Any, y: Any, low: Any, high: Any, **_: Any) -> bool:
    # Only a sum a conv takes part in (else nothing is in the blocked layout to keep), a
    # clip from 0 to a positive bound, whole blocks of channels, and no broadcasting.
    producers = [v.producer() for v in (x, y)]
    from_conv = any(p is not None and p.op_type == "Conv" and p.domain in ("", "ai.onnx") for p in producers)
    top = _scalar(high)
    return (from_conv and _scalar(low) == 0.0 and top is not None and top > 0 and _blocked_channels(x) is not None
            and x.shape == y.shape)  # fmt: skip


def _clip_as_relus(op: Any, x: Any, y: Any, low: Any, high: Any, **_: Any) -> Any:
    import numpy as np
    from onnxscript import ir

    channels, top = _blocked_channels(x), _scalar(high)

    def weights(value: float) -> Any:
        return op.Constant(value=ir.tensor(np.full((channels, 1, 1, 1), value, dtype=np.float32)))

    shift = op.Constant(value=ir.tensor(np.full((channels,), -top, dtype=np.float32)))
    rectified = op.Relu(op.Add(x, y))
    over = op.Relu(op.Conv(rectified, weights(1.0), shift, group=channels, kernel_shape=[1, 1]))
    return op.Add(op.Conv(over, weights(-1.0), group=channels, kernel_shape=[1, 1]), rectified)


def fusion_rules() -> Any:
    """The rule set (an ``onnxscript.rewriter.pattern.RewriteRuleSet``)."""
    from onnxscript.rewriter import pattern

    rules = [pattern.RewriteRule(_sum_of_three, _conv_takes_the_sum, _reassociate, name="ConvTakesTheSum"),
             pattern.RewriteRule(_clip_of_sum, _clip_as_relus, _clip_stays_blocked, name="ClipAsBlockedRelus")]
    return pattern.RewriteRuleSet(rules, commute=True)


def rewrite_for_onnxruntime(model: Any) -> int:
    """Apply :func:`fusion_rules` to an ``onnx_ir`` model in place; returns the number of rewrites."""
    return int(fusion_rules().apply_to_model(model))
