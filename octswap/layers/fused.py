"""The fused forward of an octave conv, for CPU inference.

The same computation as :meth:`OctaveConv2d.forward <octswap.layers.conv.OctaveConv2d.forward>`
(same paths, same weights, same resampling) with each two-path sum done by one oneDNN
conv that adds into its output (:mod:`octswap.layers.kernels`). The octave conv runs it
only where :func:`~octswap.layers.kernels.fast_path_allowed` says the fused kernels
cannot change results beyond float rounding.
"""

from __future__ import annotations

from torch import Tensor, nn

from octswap.layers import kernels
from octswap.layers.resample import downsample, upsample
from octswap.layers.split import OctaveInput

__all__ = ["fused_forward"]


def fused_forward(
    h2h: nn.Conv2d,
    h2l: nn.Conv2d | None,
    l2h: nn.Conv2d | None,
    l2l: nn.Conv2d | None,
    x_h: Tensor,
    x_l: Tensor | None,
    *,
    strided: bool,
    low_output: bool,
) -> OctaveInput:
    """The reference computation with each two-path sum done by one fused conv.

    Same paths, same weights, same resampling; only the additions move into the
    convolutions' output stage (no extra full-size tensor, no separate add kernel).
    Paths are called as functions (:mod:`octswap.layers.kernels`, which also uses packed
    weights where the paths are packed): on small maps the module-call overhead of
    four path convs is a measurable share of the layer's time.

    Args:
        h2h, h2l, l2h, l2l: the octave conv's four summed paths (``None`` where a path
            has no channels; ``h2h`` always has).
        x_h, x_l: the high input and the low input (``None`` with no low input).
        strided: whether the octave conv has stride 2 (it pools first, then convolves
            at stride 1).
        low_output: whether the octave conv has low-frequency output channels.
    """
    if strided:
        x_h = downsample(x_h)
    if l2h is not None:
        assert x_l is not None
        y = kernels.conv(l2h, x_l)
        # The strided conv's low input already sits at the output resolution.
        high = kernels.conv_into(y if strided else upsample(y, x_h.shape[-2:]), h2h, x_h)
    else:
        high = kernels.conv(h2h, x_h)
    if not low_output:
        return high
    low_in = None if x_l is None else downsample(x_l) if strided else x_l
    if h2l is None:
        return high, kernels.conv(l2l, low_in)
    low = kernels.conv(h2l, downsample(x_h))
    if l2l is not None:
        low = kernels.conv_into(low, l2l, low_in)
    return high, low
