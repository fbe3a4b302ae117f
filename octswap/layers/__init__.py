"""Octave building blocks (Chen et al., "Drop an Octave", ICCV 2019), one idea per module.

A feature map is split into a high-frequency branch at full resolution and a
low-frequency branch at half resolution; octave modules take and give such
``(high, low)`` pairs.

* :mod:`~octswap.layers.split`: how many channels go low (:func:`low_channels`), which
  conv geometry allows it (:func:`check_geometry`), picking a branch's channels.
* :mod:`~octswap.layers.resample`: :func:`downsample` / :func:`upsample` between the two
  resolutions; splitting a map into a pair and merging it back.
* :mod:`~octswap.layers.conv`: :class:`OctaveConv2d`, its two path layouts and its
  reference forward; :mod:`~octswap.layers.fused` its fused forward for CPU inference,
  on the oneDNN kernels of :mod:`~octswap.layers.kernels`.
* :mod:`~octswap.layers.norm`: :class:`OctaveBatchNorm2d`, :class:`OctaveChannelwise`, :func:`split_group_norm`.
* :mod:`~octswap.layers.block`: :class:`OctaveConvBlock`, tensor in, tensor out.
* :mod:`~octswap.layers.pooling`: max/average pooling of a pair at any input size.
* :mod:`~octswap.layers.drop`: stochastic depth of a pair.
* :mod:`~octswap.layers.convertible`: which conv classes an octave conv can stand in
  for, and the weight and padding it reads from them.
* :mod:`~octswap.layers.transfer`: the trained kernels resampled for the paths that run at a
  coarser resolution than the original conv (:func:`resample_paths`).
"""

from __future__ import annotations

from octswap.layers.block import OctaveConvBlock
from octswap.layers.conv import OctaveConv2d
from octswap.layers.convertible import (
    CONVERTIBLE_CONVS,
    REPARAMETRIZED_CONVS,
    SAME_PADDING_CONVS,
    STATIC_PADDING_CONVS,
    conv_padding,
    conv_weight,
    is_convertible_conv,
    module_type,
)
from octswap.layers.drop import stochastic_depth_pair
from octswap.layers.kernels import PackedConv2d, fused_kernels, fused_kernels_available, pack_convs
from octswap.layers.norm import OctaveBatchNorm2d, OctaveChannelwise, split_group_norm
from octswap.layers.pooling import pool_low, pool_parameters
from octswap.layers.resample import (
    downsample,
    merge_frequencies,
    merge_ordered,
    pooled_merge,
    split_frequencies,
    split_ordered,
    upsample,
)
from octswap.layers.split import OctaveInput, check_geometry, low_channels, take_channels
from octswap.layers.transfer import resample_paths, resampling_matrix

__all__ = [
    "CONVERTIBLE_CONVS",
    "OctaveBatchNorm2d",
    "OctaveChannelwise",
    "OctaveConv2d",
    "OctaveConvBlock",
    "OctaveInput",
    "PackedConv2d",
    "REPARAMETRIZED_CONVS",
    "SAME_PADDING_CONVS",
    "STATIC_PADDING_CONVS",
    "check_geometry",
    "conv_padding",
    "conv_weight",
    "downsample",
    "fused_kernels",
    "fused_kernels_available",
    "is_convertible_conv",
    "low_channels",
    "merge_frequencies",
    "merge_ordered",
    "module_type",
    "pack_convs",
    "pool_low",
    "pool_parameters",
    "pooled_merge",
    "resample_paths",
    "resampling_matrix",
    "split_frequencies",
    "split_group_norm",
    "split_ordered",
    "stochastic_depth_pair",
    "take_channels",
    "upsample",
]
