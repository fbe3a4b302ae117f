"""Which conv classes an octave conv can stand in for, and what it reads from them.

``nn.Conv2d`` and a few subclasses (timm's, the EfficientNet port's) whose forward is a plain
conv of a function of the weight (:data:`REPARAMETRIZED_CONVS`), of an input padded to
'same' (:data:`SAME_PADDING_CONVS`) or of an input with a fixed padding
(:data:`STATIC_PADDING_CONVS`). :func:`conv_weight` and :func:`conv_padding` give the
weight and padding an octave conv needs to compute what such a conv computes. The
classes are named, not imported: timm and segmentation_models_pytorch are optional.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CONVERTIBLE_CONVS",
    "REPARAMETRIZED_CONVS",
    "SAME_PADDING_CONVS",
    "STATIC_PADDING_CONVS",
    "conv_padding",
    "conv_weight",
    "is_convertible_conv",
    "module_type",
]


def _standardized(conv: nn.Conv2d, gain: Tensor | None = None) -> Tensor:
    """Weight standardization as timm's ``StdConv2d``/``ScaledStdConv2d`` compute it in
    their forward (per output channel over ``in x kh x kw``; Qiao et al. 2019, Brock et
    al. 2021): the weight their conv actually applies."""
    weight = conv.weight
    flat = F.batch_norm(weight.reshape(1, conv.out_channels, -1), None, None, weight=gain,
                        training=True, momentum=0.0, eps=float(conv.eps))  # type: ignore[arg-type]  # fmt: skip
    return flat.reshape_as(weight)


def _scaled_standardized(conv: nn.Conv2d) -> Tensor:
    return _standardized(conv, (conv.gain * conv.scale).view(-1))  # type: ignore[operator]


#: ``nn.Conv2d`` subclasses whose forward convolves with a function of ``weight``, and that
#: function: timm's weight-standardized convs (NF-Nets, BiT ResNet-V2, ViT hybrids). An
#: octave conv made from one starts from the weight the original applies, so the
#: conversion is exact at alpha 0; the standardization (and ScaledStdConv's ``gain``) is
#: folded into the octave conv's weights, which healing then trains directly. Named, not
#: imported: timm is optional.
REPARAMETRIZED_CONVS: dict[str, Callable[[nn.Conv2d], Tensor]] = {
    "timm.layers.std_conv.StdConv2d": _standardized,
    "timm.layers.std_conv.StdConv2dSame": _standardized,
    "timm.layers.std_conv.ScaledStdConv2d": _scaled_standardized,
    "timm.layers.std_conv.ScaledStdConv2dSame": _scaled_standardized,
}


def conv_weight(conv: nn.Conv2d) -> Tensor:
    """The weight ``conv``'s forward applies: ``conv.weight``, or its function for
    :data:`REPARAMETRIZED_CONVS`."""
    function = REPARAMETRIZED_CONVS.get(module_type(conv))
    return conv.weight if function is None else function(conv)


#: ``nn.Conv2d`` subclasses whose forward pads its input to TensorFlow's 'same' (output
#: ``ceil(H / stride)``, the extra pixel at the bottom/right) and then runs the plain conv:
#: timm's ``Conv2dSame``, which ``create_conv2d(..., padding='same')`` builds for strided
#: convs and TF-ported models, and the EfficientNet port's ``Conv2dDynamicSamePadding``. With an odd (dilated) kernel the padding is symmetric at
#: stride 1, so an octave conv padded symmetrically computes the same function; at stride
#: 2 an octave conv pools first and then convolves at stride 1 (as for every strided conv),
#: landing on the same ``ceil(H / 2)``. Named, not imported: timm is optional.
#: The weight-standardized 'Same' variants do so only when built with dynamic padding
#: (their ``same_pad`` flag); otherwise their ``padding`` is static.
SAME_PADDING_CONVS = frozenset({
    "timm.layers.conv2d_same.Conv2dSame",
    "timm.layers.std_conv.StdConv2dSame",
    "timm.layers.std_conv.ScaledStdConv2dSame",
    "segmentation_models_pytorch.encoders._efficientnet.Conv2dDynamicSamePadding",
    "efficientnet_pytorch.utils.Conv2dDynamicSamePadding",
})

#: ``nn.Conv2d`` subclasses that apply a fixed ``static_padding`` module (``nn.ZeroPad2d`` or
#: ``nn.Identity``) and then the plain conv: the TensorFlow-'same' convs of the EfficientNet port
#: (``efficientnet_pytorch``, and segmentation_models_pytorch's ``efficientnet-b*`` encoders),
#: padded for the image size they were built for. Symmetric padding (every stride-1 conv with an
#: odd kernel) is an ordinary conv's padding at every input size; an asymmetric one (their
#: stride-2 convs: ``(0, 1, 0, 1)``) has no symmetric equivalent, and :func:`conv_padding` gives
#: it as ``(left, right, top, bottom)`` for the geometry check to refuse with that reason.
#: (Their dynamic siblings pad like timm's ``Conv2dSame``: :data:`SAME_PADDING_CONVS`.)
STATIC_PADDING_CONVS = frozenset({
    "segmentation_models_pytorch.encoders._efficientnet.Conv2dStaticSamePadding",
    "efficientnet_pytorch.utils.Conv2dStaticSamePadding",
})

#: Every conv class octave convs can stand in for: ``nn.Conv2d`` and the subclasses above.
#: Any other subclass's forward would be lost, so it stays plain.
CONVERTIBLE_CONVS = frozenset({"torch.nn.modules.conv.Conv2d", *SAME_PADDING_CONVS, *STATIC_PADDING_CONVS,
                               *REPARAMETRIZED_CONVS})


def module_type(module: nn.Module) -> str:
    """The qualified class name, e.g. ``torch.nn.modules.conv.Conv2d``."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def is_convertible_conv(module: nn.Module) -> bool:
    """Whether an octave conv can stand in for ``module`` (:data:`CONVERTIBLE_CONVS`)."""
    return isinstance(module, nn.Conv2d) and module_type(module) in CONVERTIBLE_CONVS


def _static_padding(conv: nn.Conv2d) -> tuple[int, ...]:
    """:data:`STATIC_PADDING_CONVS`' ``static_padding`` plus their own ``padding``: ``(height, width)``
    when symmetric, else ``(left, right, top, bottom)``."""
    pad = getattr(conv, "static_padding", None)
    left, right, top, bottom = pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
    own_h, own_w = (conv.padding, conv.padding) if isinstance(conv.padding, int) else conv.padding
    if left == right and top == bottom:
        return (int(top) + int(own_h), int(left) + int(own_w))
    return (int(left) + int(own_w), int(right) + int(own_w), int(top) + int(own_h), int(bottom) + int(own_h))


def conv_padding(conv: nn.Conv2d) -> str | tuple[int, ...]:
    """The padding an octave conv needs to compute ``conv``'s map sizes.

    ``conv.padding``, except for the dynamic 'same' padding of :data:`SAME_PADDING_CONVS`:
    the symmetric ``dilation * (kernel - 1) / 2`` where that is whole, else ``"same"``
    (which :func:`~octswap.layers.split.check_geometry` refuses with its reason); and for
    :data:`STATIC_PADDING_CONVS`, their fixed padding (four sides when asymmetric, refused too).
    """
    if module_type(conv) in STATIC_PADDING_CONVS:
        return _static_padding(conv)
    if module_type(conv) not in SAME_PADDING_CONVS or not getattr(conv, "same_pad", True):
        return conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    spans = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
    return tuple(span // 2 for span in spans) if not any(span % 2 for span in spans) else "same"
