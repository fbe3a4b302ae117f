"""Old home of the octave modules, kept so that ``octswap.octave`` imports keep working.

Everything here now lives in :mod:`octswap.layers`, one idea per module:

* channel split and geometry (``low_channels``, ``check_geometry``, ``OctaveInput``):
  :mod:`octswap.layers.split`;
* resampling and split/merge (``downsample``, ``upsample``, ``split_frequencies``,
  ``merge_frequencies``): :mod:`octswap.layers.resample`;
* ``OctaveConv2d``: :mod:`octswap.layers.conv` (its fused forward:
  :mod:`octswap.layers.fused`; ``fused_kernels``: :mod:`octswap.layers.kernels`);
* ``OctaveBatchNorm2d``, ``OctaveChannelwise``: :mod:`octswap.layers.norm`;
* ``OctaveConvBlock``: :mod:`octswap.layers.block`;
* the convertible conv classes and their weight and padding (``CONVERTIBLE_CONVS``,
  ``module_type``, ``is_convertible_conv``, ``conv_weight``, ``conv_padding``...):
  :mod:`octswap.layers.convertible`.

New code should import from :mod:`octswap.layers`.
"""

from __future__ import annotations

# Names that are not in __all__ (as before) are re-exported by alias (``x as x``).
from octswap.layers import kernels as kernels
from octswap.layers.block import OctaveConvBlock
from octswap.layers.conv import OctaveConv2d
from octswap.layers.conv import _half as _half
from octswap.layers.convertible import CONVERTIBLE_CONVS as CONVERTIBLE_CONVS
from octswap.layers.convertible import REPARAMETRIZED_CONVS as REPARAMETRIZED_CONVS
from octswap.layers.convertible import SAME_PADDING_CONVS as SAME_PADDING_CONVS
from octswap.layers.convertible import STATIC_PADDING_CONVS as STATIC_PADDING_CONVS
from octswap.layers.convertible import _scaled_standardized as _scaled_standardized
from octswap.layers.convertible import _standardized as _standardized
from octswap.layers.convertible import conv_padding as conv_padding
from octswap.layers.convertible import conv_weight as conv_weight
from octswap.layers.convertible import is_convertible_conv as is_convertible_conv
from octswap.layers.convertible import module_type as module_type
from octswap.layers.kernels import fused_kernels, fused_kernels_available
from octswap.layers.norm import OctaveBatchNorm2d, OctaveChannelwise
from octswap.layers.norm import _channel_slice as _channel_slice
from octswap.layers.resample import downsample, merge_frequencies, split_frequencies, upsample
from octswap.layers.split import _ALPHA_EPS as _ALPHA_EPS
from octswap.layers.split import OctaveInput, check_geometry, low_channels
from octswap.layers.split import pair_of as _pair_of

__all__ = [
    "OctaveBatchNorm2d",
    "OctaveChannelwise",
    "OctaveConv2d",
    "OctaveConvBlock",
    "OctaveInput",
    "check_geometry",
    "downsample",
    "fused_kernels",
    "fused_kernels_available",
    "low_channels",
    "merge_frequencies",
    "split_frequencies",
    "upsample",
]
