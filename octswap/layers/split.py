"""How a feature map splits into a (high, low) pair: channel counts, geometry, channel picks.

A feature map with ``c`` channels is split into a high-frequency branch at full
resolution (``c - low`` channels, first in channel order) and a low-frequency
branch at half resolution (``low = floor(alpha * c)`` channels, last in channel
order). Grouped convolutions (ResNeXt, depthwise) are split at group boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

__all__ = ["OctaveInput", "check_geometry", "low_channels", "take_channels"]

#: What an octave module accepts: a plain tensor (all high-frequency) or a (high, low) pair.
OctaveInput = Union[Tensor, tuple[Tensor, Tensor]]

# Floating-point products such as 0.29 * 100 = 28.999999999999996 would otherwise
# lose a channel; nobody asking for alpha=0.29 of 100 channels means 28.
_ALPHA_EPS = 1e-6


def low_channels(channels: int, alpha: float, *, groups: int = 1, multiple: int = 1) -> int:
    """Number of low-frequency channels for ``channels`` at ratio ``alpha``.

    ``floor(alpha * channels)``; for a grouped conv (``groups > 1``) rounded down to
    whole groups, so the split falls on a group boundary.

    With ``multiple > 1``, and when ``channels`` is itself a multiple of
    ``u = lcm(multiple, channels // groups)``, the split is instead the multiple of ``u``
    nearest to ``alpha * channels`` (ties toward fewer low channels), at most
    ``channels - u``: both branches then have a multiple of ``u`` channels. Runtimes with
    blocked layouts need that (ONNX Runtime's CPU convs: 16 on AVX-512, 8 on AVX2;
    ``nchwc_transformer.cc``). Channel counts that are not a multiple of ``u`` keep the
    plain rule. The result may be 0 (the conv stays plain).

    Raises:
        ValueError: ``alpha`` outside [0, 1) or ``multiple`` < 1.

    Example:
        >>> low_channels(64, 0.25)
        16
        >>> low_channels(128, 0.3, groups=32)   # 38 rounded down to whole groups of 4
        36
        >>> low_channels(144, 0.375, multiple=16), low_channels(64, 0.125, multiple=16)  # 54 -> 48; 8 -> 0
        (48, 0)
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    group_size = channels // groups if groups > 1 else 1
    if multiple > 1:
        unit = math.lcm(multiple, group_size)
        if channels % unit == 0:
            units = math.ceil(alpha * channels / unit - 0.5 - _ALPHA_EPS)  # nearest, ties down
            return min(units, channels // unit - 1) * unit
    low = math.floor(alpha * channels + _ALPHA_EPS)
    return low - low % group_size


def check_geometry(
    kernel_size: int | tuple[int, int],
    *,
    stride: int | tuple[int, int],
    padding: str | int | tuple[int, ...],
    dilation: int | tuple[int, int],
) -> tuple[int, int]:
    """Check a conv's geometry can be made octave; return its symmetric padding.

    Octave paths resample between two resolutions, so every path must map an
    ``H``-sized input to ``ceil(H / stride)``; only 'same' geometry does that on
    both branches (a 'valid' 3x3 conv shrinks a 7-map to 5 but its 4-map low
    branch to 2, not ceil(5/2) = 3). Stride must be 1 or 2 in both dimensions.

    Raises:
        ValueError: saying what does not fit.
    """
    strides = pair_of(stride, "stride")
    if strides not in ((1, 1), (2, 2)):
        raise ValueError(f"stride {strides} is not supported (octave convs need stride 1 or 2)")
    kernel, dil = pair_of(kernel_size, "kernel_size"), pair_of(dilation, "dilation")
    need = []
    for k, d in zip(kernel, dil):
        span = d * (k - 1)
        if span % 2:
            raise ValueError(f"kernel {kernel} with dilation {dil} has no symmetric 'same' padding")
        need.append(span // 2)
    same = (need[0], need[1])
    if padding == "same" and strides != (1, 1):
        raise ValueError("padding='same' with stride 2 is not supported (as in nn.Conv2d)")
    if padding == "same":
        return same
    if padding == "valid":
        padding = 0
    if isinstance(padding, str):
        raise ValueError(f"unknown padding {padding!r}")
    if not isinstance(padding, int) and len(padding) == 4:
        raise ValueError(f"asymmetric padding {tuple(padding)} (left, right, top, bottom) has no symmetric "
                         f"equivalent at every input size")
    got = pair_of(padding, "padding")
    if got != same:
        raise ValueError(f"padding {got} does not preserve the map size for kernel {kernel} (needs {same})")
    return same


def pair_of(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    """``value`` as a (height, width) pair; ``name`` is for the error.

    Raises:
        ValueError: ``value`` is neither an int nor a pair.
    """
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return (int(value[0]), int(value[1]))


def take_channels(x: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    """Channels ``index`` of ``x`` (a slice when they are contiguous)."""
    if len(index) and list(index) == list(range(index[0], index[0] + len(index))):
        return x[:, index[0] : index[0] + len(index)]
    return x[:, list(index)]
