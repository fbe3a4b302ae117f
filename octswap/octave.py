"""Octave convolution modules (Chen et al., "Drop an Octave", ICCV 2019).

A feature map with ``c`` channels is split into a high-frequency branch at full
resolution (``c - low`` channels, first in channel order) and a low-frequency
branch at half resolution (``low = floor(alpha * c)`` channels, last in channel
order). Resampling follows the paper and the official code: 2x2 average pooling
with ``ceil_mode=True`` (so odd sizes never crash and never lose a row) and
nearest upsampling to the *exact* size of the high branch. The low branch of a
map of size ``H x W`` is therefore always ``ceil(H/2) x ceil(W/2)``.

Grouped convolutions (ResNeXt, depthwise) are split at group boundaries: the
first groups are high-frequency, the last groups low-frequency, on both the
input and the output side. Each group keeps its own input channels, so weights
transfer from the original conv by slicing alone and no cross-frequency path
mixes groups. This differs from the official MXNet code, which keeps the same
``groups`` value on all four paths and so cannot start from a trained grouped conv.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from octswap import kernels
from octswap.kernels import fused_kernels, fused_kernels_available  # re-exported: part of this API

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
    strides = _pair_of(stride, "stride")
    if strides not in ((1, 1), (2, 2)):
        raise ValueError(f"stride {strides} is not supported (octave convs need stride 1 or 2)")
    kernel, dil = _pair_of(kernel_size, "kernel_size"), _pair_of(dilation, "dilation")
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
    got = _pair_of(padding, "padding")
    if got != same:
        raise ValueError(f"padding {got} does not preserve the map size for kernel {kernel} (needs {same})")
    return same


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
#: convs and TF-ported models. With an odd (dilated) kernel the padding is symmetric at
#: stride 1, so an octave conv padded symmetrically computes the same function; at stride
#: 2 an octave conv pools first and then convolves at stride 1 (as for every strided conv),
#: landing on the same ``ceil(H / 2)``. Named, not imported: timm is optional.
#: The weight-standardized 'Same' variants do so only when built with dynamic padding
#: (their ``same_pad`` flag); otherwise their ``padding`` is static.
SAME_PADDING_CONVS = frozenset({
    "timm.layers.conv2d_same.Conv2dSame",
    "timm.layers.std_conv.StdConv2dSame",
    "timm.layers.std_conv.ScaledStdConv2dSame",
})

#: Every conv class octave convs can stand in for: ``nn.Conv2d`` and the subclasses above.
#: Any other subclass's forward would be lost, so it stays plain.
CONVERTIBLE_CONVS = frozenset({"torch.nn.modules.conv.Conv2d", *SAME_PADDING_CONVS, *REPARAMETRIZED_CONVS})


def module_type(module: nn.Module) -> str:
    """The qualified class name, e.g. ``torch.nn.modules.conv.Conv2d``."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def is_convertible_conv(module: nn.Module) -> bool:
    """Whether an octave conv can stand in for ``module`` (:data:`CONVERTIBLE_CONVS`)."""
    return isinstance(module, nn.Conv2d) and module_type(module) in CONVERTIBLE_CONVS


def conv_padding(conv: nn.Conv2d) -> str | tuple[int, ...]:
    """The padding an octave conv needs to compute ``conv``'s map sizes.

    ``conv.padding``, except for the dynamic 'same' padding of :data:`SAME_PADDING_CONVS`:
    the symmetric ``dilation * (kernel - 1) / 2`` where that is whole, else ``"same"``
    (which :func:`check_geometry` refuses with its reason).
    """
    if module_type(conv) not in SAME_PADDING_CONVS or not getattr(conv, "same_pad", True):
        return conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    spans = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
    return tuple(span // 2 for span in spans) if not any(span % 2 for span in spans) else "same"


def downsample(x: Tensor) -> Tensor:
    """Halve a map's resolution: 2x2 average pool, stride 2, ``ceil_mode`` for odd sizes."""
    return F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False)


def upsample(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Nearest upsampling to an exact ``size`` (for odd sizes this is x2 then crop).

    When ``size`` is exactly twice the input this is written as a fixed x2 resize, the
    same computation (nearest x2 reads input pixel ``floor(i / 2)``, as the exact-size
    resize does). A graph exporter then records a resize by constant scales rather than
    one by sizes computed from shapes; ONNX Runtime keeps the former in its blocked
    NCHWc layout and moves the latter out of it and back (see :mod:`octswap.export`).
    Symbolic sizes (``torch.export`` with a dynamic height or width) keep the exact-size
    resize: a x2 resize and a crop would make the exporter assume even sizes.
    """
    height, width = x.shape[-2:]
    if all(isinstance(v, int) for v in (height, width, size[0], size[1])):
        if size[0] == 2 * height and size[1] == 2 * width:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.interpolate(x, size=size, mode="nearest")


def split_frequencies(x: Tensor, low: int) -> tuple[Tensor, Tensor]:
    """Split a plain ``N x C x H x W`` tensor into a (high, low) pair.

    The last ``low`` channels become the low-frequency branch at half resolution.

    Example:
        >>> h, l = split_frequencies(torch.randn(1, 8, 7, 7), 2)
        >>> tuple(h.shape), tuple(l.shape)
        ((1, 6, 7, 7), (1, 2, 4, 4))
    """
    if not 0 < low < x.shape[1]:
        raise ValueError(f"cannot split {x.shape[1]} channels into {x.shape[1] - low} high + {low} low")
    # Negative bounds keep shape arithmetic out of traced graphs.
    return x[:, :-low], downsample(x[:, -low:])


def merge_frequencies(high: Tensor, low: Tensor) -> Tensor:
    """Merge a (high, low) pair back into one tensor in the original channel order."""
    return torch.cat([high, upsample(low, high.shape[-2:])], dim=1)


def _pair_of(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return (int(value[0]), int(value[1]))


class OctaveConv2d(nn.Module):
    """A 2-D octave convolution.

    Four paths, each an ``nn.Conv2d`` built only when it has channels:
    ``h2h`` (high to high), ``h2l`` (pool, then conv), ``l2h`` (conv, then nearest
    upsample) and ``l2l``. A stride-2 octave conv pools its inputs first and
    convolves at stride 1, as the paper does; ``l2h`` then needs no upsampling.
    When neither side has low-frequency channels the module *is* the original conv
    (same stride), so ``alpha_in = alpha_out = 0`` reproduces it bit for bit.

    Input is a tensor when ``alpha_in`` yields no low channels, else a
    ``(high, low)`` pair; output likewise for ``alpha_out``. The high output always
    has exactly the shape the plain conv would give, for any input size.

    Args:
        in_channels: Channels of the whole input (high + low).
        out_channels: Channels of the whole output.
        kernel_size: As for ``nn.Conv2d``; the effective kernel must be odd.
        alpha_in: Low-frequency share of the input, in ``[0, 1)``.
        alpha_out: Low-frequency share of the output, in ``[0, 1)``.
        in_low: Exact number of low-frequency input channels (overrides ``alpha_in``).
        out_low: Exact number of low-frequency output channels (overrides ``alpha_out``).
        stride: 1 or 2 (the same in both dimensions).
        padding: 'same' geometry only (``dilation * (kernel - 1) / 2``), or ``'same'``.
        dilation: As for ``nn.Conv2d``.
        groups: As for ``nn.Conv2d``; grouped convs split at group boundaries.
        bias: Whether each output branch gets a bias.
        padding_mode: As for ``nn.Conv2d``.

    Example:
        >>> conv = OctaveConv2d(64, 128, 3, alpha_in=0.5, alpha_out=0.5, padding=1)
        >>> h, l = conv((torch.randn(1, 32, 9, 9), torch.randn(1, 32, 5, 5)))
        >>> tuple(h.shape), tuple(l.shape)
        ((1, 64, 9, 9), (1, 64, 5, 5))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        alpha_in: float = 0.5,
        alpha_out: float = 0.5,
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        in_low: int | None = None,
        out_low: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair_of(kernel_size, "kernel_size")
        self.dilation = _pair_of(dilation, "dilation")
        self.stride = _pair_of(stride, "stride")
        self.padding = check_geometry(self.kernel_size, stride=self.stride, padding=padding, dilation=self.dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self.alpha_in = float(alpha_in)
        self.alpha_out = float(alpha_out)

        gin, gout = in_channels // groups, out_channels // groups
        # Explicit counts (graph mode: the input split is whatever flows in) override alphas.
        self.in_low = low_channels(in_channels, alpha_in, groups=groups) if in_low is None else in_low
        self.out_low = low_channels(out_channels, alpha_out, groups=groups) if out_low is None else out_low
        for side, low, total, size in (("in", self.in_low, in_channels, gin), ("out", self.out_low, out_channels, gout)):
            if not 0 <= low < total or (groups > 1 and low % size):
                raise ValueError(f"{side}_low={low} must be in [0, {total}) and whole groups of {size if groups > 1 else 1}")
        if in_low is not None:
            self.alpha_in = self.in_low / in_channels
        if out_low is not None:
            self.alpha_out = self.out_low / out_channels
        self.in_high = in_channels - self.in_low
        self.out_high = out_channels - self.out_low
        # With no low channels anywhere this is an ordinary conv: keep its stride so
        # alpha 0 is exact (pool-then-conv would change what a trained conv computes).
        self._plain = self.in_low == 0 and self.out_low == 0
        self._strided = self.stride == (2, 2) and not self._plain
        path_stride = self.stride if self._plain else (1, 1)

        def conv(cin: int, cout: int, path_groups: int, path_bias: bool) -> nn.Conv2d | None:
            if cin == 0 or cout == 0:
                return None
            return nn.Conv2d(
                cin, cout, self.kernel_size, stride=path_stride, padding=self.padding,
                dilation=self.dilation, groups=path_groups, bias=path_bias,
                padding_mode=padding_mode, device=device, dtype=dtype,
            )  # fmt: skip

        # Slices (start, stop) of the source branch each path reads; None = all of it.
        self._slices: dict[str, tuple[int, int] | None] = {}
        if groups == 1:
            # Every output channel sees every input channel: four summed paths. One
            # bias per output branch, on the path that always exists for it.
            self.h2h = conv(self.in_high, self.out_high, 1, bias)
            self.h2l = conv(self.in_high, self.out_low, 1, bias and self.in_low == 0)
            self.l2h = conv(self.in_low, self.out_high, 1, False)
            self.l2l = conv(self.in_low, self.out_low, 1, bias)
            self._combine = "sum"
            self._slices = dict.fromkeys(("h2h", "h2l", "l2h", "l2l"))
        else:
            # Group j reads low input iff j >= groups - gl_in and writes low output iff
            # j >= groups - gl_out, so each group belongs to exactly one path and the
            # outputs of a branch are the concatenation of its paths in group order.
            gl_in, gl_out = self.in_low // gin, self.out_low // gout
            n_hh = groups - max(gl_in, gl_out)
            n_hl = max(0, gl_out - gl_in)
            n_lh = max(0, gl_in - gl_out)
            n_ll = min(gl_in, gl_out)
            self.h2h = conv(n_hh * gin, n_hh * gout, n_hh, bias)
            self.h2l = conv(n_hl * gin, n_hl * gout, n_hl, bias)
            self.l2h = conv(n_lh * gin, n_lh * gout, n_lh, bias)
            self.l2l = conv(n_ll * gin, n_ll * gout, n_ll, bias)
            self._combine = "cat"
            self._slices = {
                "h2h": (0, n_hh * gin),
                "h2l": (n_hh * gin, self.in_high),
                "l2h": (0, n_lh * gin),
                "l2l": (n_lh * gin, self.in_low),
            }

    # ------------------------------------------------------------------ building
    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        alpha_in: float = 0.0,
        alpha_out: float = 0.0,
        in_low: int | None = None,
        out_low: int | None = None,
        in_order: Sequence[int] | None = None,
    ) -> OctaveConv2d:
        """Build an octave conv from a trained ``nn.Conv2d``, copying its weights by slicing.

        ``h2h`` gets ``W[out_high, in_high]``, ``h2l`` gets ``W[out_low, in_high]``,
        and so on, so the converted layer starts close to the original. ``in_order``
        says which original input channel sits at each position of ``[high; low]``
        when the input pair is not in the original order (after a channel ``cat``).

        Example:
            >>> plain = nn.Conv2d(32, 32, 3, padding=1)
            >>> octave = OctaveConv2d.from_conv(plain, alpha_in=0.25, alpha_out=0.25)
            >>> octave.in_low, octave.out_low
            (8, 8)
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected nn.Conv2d, got {type(conv).__name__}")
        octave = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size,
            alpha_in=alpha_in, alpha_out=alpha_out, stride=conv.stride, padding=conv_padding(conv),
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
            padding_mode=conv.padding_mode, in_low=in_low, out_low=out_low,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        octave.load_from_conv(conv, in_order=in_order)
        return octave

    @torch.no_grad()
    def load_from_conv(self, conv: nn.Conv2d, *, in_order: Sequence[int] | None = None) -> None:
        """Copy a plain conv's weights into the four paths (exact slices)."""
        weight, bias = conv_weight(conv), conv.bias
        if in_order is not None:
            if self.groups > 1:
                raise ValueError("a reordered input needs groups=1")
            weight = weight[:, list(in_order)]
        if tuple(weight.shape) != (self.out_channels, self.in_channels // self.groups, *self.kernel_size):
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit {self}")
        if self._combine == "sum":
            oh, ih = self.out_high, self.in_high
            blocks = {
                "h2h": (slice(None, oh), slice(None, ih)),
                "h2l": (slice(oh, None), slice(None, ih)),
                "l2h": (slice(None, oh), slice(ih, None)),
                "l2l": (slice(oh, None), slice(ih, None)),
            }
            for name, (rows, cols) in blocks.items():
                path = getattr(self, name)
                if path is None:
                    continue
                path.weight.copy_(weight[rows, cols])
                if path.bias is not None and bias is not None:
                    path.bias.copy_(bias[rows])
            return
        # Grouped: paths own whole groups, in order h2h, then h2l or l2h, then l2l.
        gout = self.out_channels // self.groups
        start = 0
        order = ("h2h", "h2l", "l2h", "l2l")
        for name in order:
            path = getattr(self, name)
            if path is None:
                continue
            stop = start + path.groups * gout
            path.weight.copy_(weight[start:stop])
            if path.bias is not None and bias is not None:
                path.bias.copy_(bias[start:stop])
            start = stop

    # ------------------------------------------------------------------- forward
    def _unpack(self, x: OctaveInput) -> tuple[Tensor, Tensor | None]:
        if self.in_low == 0:
            if not isinstance(x, Tensor):
                raise TypeError(f"{self._name()} has no low-frequency input and expects a tensor, got a pair")
            high, low = x, None
        else:
            if isinstance(x, Tensor) or len(x) != 2:
                raise TypeError(
                    f"{self._name()} expects a (high, low) pair with {self.in_high} + {self.in_low} channels; "
                    "split a tensor with octswap.octave.split_frequencies first"
                )
            high, low = x
            if low.shape[1] != self.in_low or low.shape[-2:] != _half(high.shape[-2:]):
                raise ValueError(
                    f"{self._name()}: low branch {tuple(low.shape)} does not match high branch "
                    f"{tuple(high.shape)} (expected {self.in_low} channels at half resolution, rounded up)"
                )
        if high.shape[1] != self.in_high:
            raise ValueError(f"{self._name()}: high branch has {high.shape[1]} channels, expected {self.in_high}")
        return high, low

    def forward(self, x: OctaveInput) -> OctaveInput:
        x_h, x_l = self._unpack(x)
        if self._can_fuse(x_h, x_l):
            return self._forward_fused(x_h, x_l)
        if self._strided:
            # Pool first, then convolve at stride 1 (paper, Sec. 3.3): the high input
            # drops to the output resolution and the low input to half of it.
            x_h = downsample(x_h)
        y_h = self.h2h(self._take(x_h, "h2h"))
        high_parts, low_parts = [y_h], []
        if self.h2l is not None:
            low_parts.append(self.h2l(downsample(self._take(x_h, "h2l"))))
        if self.l2h is not None:
            assert x_l is not None  # l2h exists only with low input
            y = self.l2h(self._take(x_l, "l2h"))
            # A strided conv's low input already sits at the new high resolution.
            high_parts.append(y if self._strided else upsample(y, y_h.shape[-2:]))
        if self.l2l is not None:
            assert x_l is not None
            low_in = self._take(x_l, "l2l")
            low_parts.append(self.l2l(downsample(low_in) if self._strided else low_in))
        high = self._join(high_parts)
        if self.out_low == 0:
            return high
        return high, self._join(low_parts)

    def _can_fuse(self, x_h: Tensor, x_l: Tensor | None) -> bool:
        # Cheapest and most often false first: this runs on every call.
        return (
            self._combine == "sum"
            and not self._plain
            and self.padding_mode == "zeros"
            and kernels.fast_path_allowed(x_h, x_l)
        )

    def _forward_fused(self, x_h: Tensor, x_l: Tensor | None) -> OctaveInput:
        """The reference computation with each two-path sum done by one fused conv.

        Same paths, same weights, same resampling; only the additions move into the
        convolutions' output stage (no extra full-size tensor, no separate add kernel).
        Paths are called as functions (:mod:`octswap.kernels`, which also uses packed
        weights where the paths are packed): on small maps the module-call overhead of
        four path convs is a measurable share of the layer's time.
        """
        if self._strided:
            x_h = downsample(x_h)
        if self.l2h is not None:
            assert x_l is not None
            y = kernels.conv(self.l2h, x_l)
            # The strided conv's low input already sits at the output resolution.
            high = kernels.conv_into(y if self._strided else upsample(y, x_h.shape[-2:]), self.h2h, x_h)
        else:
            high = kernels.conv(self.h2h, x_h)
        if self.out_low == 0:
            return high
        low_in = None if x_l is None else downsample(x_l) if self._strided else x_l
        if self.h2l is None:
            return high, kernels.conv(self.l2l, low_in)
        low = kernels.conv(self.h2l, downsample(x_h))
        if self.l2l is not None:
            low = kernels.conv_into(low, self.l2l, low_in)
        return high, low

    def _take(self, x: Tensor, path: str) -> Tensor:
        bounds = self._slices[path]
        if bounds is None or (bounds[0] == 0 and bounds[1] == x.shape[1]):
            return x
        part = x[:, bounds[0] : bounds[1]]
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # A channel slice of a channels-last map is strided; oneDNN convs and
            # avg_pool2d then fall back to slow generic kernels (measured: a depthwise
            # conv or a pool on the slice takes about twice as long as on a copy).
            part = part.contiguous(memory_format=torch.channels_last)
        return part

    def _join(self, parts: list[Tensor]) -> Tensor:
        if len(parts) == 1:
            return parts[0]
        if self._combine == "sum":
            return parts[0] + parts[1]
        return torch.cat(parts, dim=1)

    def _name(self) -> str:
        return f"OctaveConv2d({self.in_channels}, {self.out_channels}, alpha_in={self.alpha_in}, alpha_out={self.alpha_out})"

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels} ({self.in_high}h+{self.in_low}l) -> {self.out_channels} "
            f"({self.out_high}h+{self.out_low}l), kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"alpha_in={self.alpha_in}, alpha_out={self.alpha_out}"
        )


def _half(size: torch.Size | tuple[int, ...]) -> torch.Size:
    """The low-branch size of a high-branch map (ceil-mode pooling)."""
    return torch.Size(((size[0] + 1) // 2, (size[1] + 1) // 2))


class OctaveBatchNorm2d(nn.Module):
    """Per-branch BatchNorm for a (high, low) pair, sliced from a trained ``BatchNorm2d``.

    Example:
        >>> bn = OctaveBatchNorm2d.from_bn(nn.BatchNorm2d(64).eval(), low=16)
        >>> h, l = bn((torch.randn(1, 48, 8, 8), torch.randn(1, 16, 4, 4)))
    """

    def __init__(
        self,
        num_features: int,
        *,
        low: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= low < num_features:
            raise ValueError(f"low={low} must be in [0, {num_features})")
        kwargs = dict(eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats,
                      device=device, dtype=dtype)  # fmt: skip
        self.num_features = num_features
        self.low = low
        self.bn_h = nn.BatchNorm2d(num_features - low, **kwargs)
        self.bn_l = nn.BatchNorm2d(low, **kwargs) if low else None

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, *, low: int, order: Sequence[int] | None = None) -> OctaveBatchNorm2d:
        """Split ``bn`` into a high part (first channels) and a low part (last ``low`` channels).

        ``order`` gives the original channel at each position of ``[high; low]`` when
        the pair is not in the original channel order.
        """
        ref = bn.weight if bn.weight is not None else bn.running_mean
        octave = cls(
            bn.num_features, low=low, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype,
        )  # fmt: skip
        high = bn.num_features - low
        index = list(order) if order is not None else list(range(bn.num_features))
        with torch.no_grad():
            for part, rows in ((octave.bn_h, index[:high]), (octave.bn_l, index[high:])):
                if part is None:
                    continue
                for name in ("weight", "bias", "running_mean", "running_var"):
                    src, dst = getattr(bn, name), getattr(part, name)
                    if src is not None and dst is not None:
                        dst.copy_(src[rows])
                if bn.num_batches_tracked is not None and part.num_batches_tracked is not None:
                    part.num_batches_tracked.copy_(bn.num_batches_tracked)
        octave.train(bn.training)
        return octave

    def forward(self, x: OctaveInput) -> OctaveInput:
        if self.bn_l is None:
            if not isinstance(x, Tensor):
                raise TypeError("OctaveBatchNorm2d with low=0 expects a tensor")
            return self.bn_h(x)
        if isinstance(x, Tensor):
            raise TypeError(f"OctaveBatchNorm2d(low={self.low}) expects a (high, low) pair")
        return self.bn_h(x[0]), self.bn_l(x[1])

    def extra_repr(self) -> str:
        return f"{self.num_features} ({self.num_features - self.low}h+{self.low}l)"


class OctaveChannelwise(nn.Module):
    """A module that acts channel by channel (a norm with its activation, a frozen BatchNorm...)
    applied to each branch of a pair: two copies of it, their per-channel parameters and
    buffers sliced to the branch's channels.

    Example:
        >>> norm_act = nn.Sequential(nn.BatchNorm2d(8), nn.PReLU(8)).eval()
        >>> split = OctaveChannelwise.from_module(norm_act, channels=8, high=range(6), low=range(6, 8))
        >>> h, l = split((torch.randn(1, 6, 4, 4), torch.randn(1, 2, 2, 2)))
    """

    def __init__(self, high: nn.Module, low: nn.Module) -> None:
        super().__init__()
        self.high = high
        self.low = low

    @classmethod
    def from_module(cls, module: nn.Module, *, channels: int, high: Sequence[int], low: Sequence[int]) -> OctaveChannelwise:
        """Copies of ``module`` for channels ``high`` and ``low`` (indices into its ``channels``).

        Every parameter and buffer whose first dimension is ``channels`` is sliced; a
        ``num_features`` attribute equal to ``channels`` follows.
        """
        return cls(_channel_slice(module, channels, list(high)), _channel_slice(module, channels, list(low)))

    def forward(self, x: OctaveInput) -> OctaveInput:
        if isinstance(x, Tensor):
            raise TypeError("OctaveChannelwise expects a (high, low) pair")
        return self.high(x[0]), self.low(x[1])


def _channel_slice(module: nn.Module, channels: int, index: list[int]) -> nn.Module:
    part = copy.deepcopy(module)
    rows = torch.tensor(index, dtype=torch.long)
    with torch.no_grad():
        for sub in part.modules():
            for name, param in list(sub.named_parameters(recurse=False)):
                if param.ndim >= 1 and param.shape[0] == channels:
                    setattr(sub, name, nn.Parameter(param[rows.to(param.device)].clone(), requires_grad=param.requires_grad))
            for name, buffer in list(sub.named_buffers(recurse=False)):
                if buffer.ndim >= 1 and buffer.shape[0] == channels:
                    sub._buffers[name] = buffer[rows.to(buffer.device)].clone()
            if getattr(sub, "num_features", None) == channels:
                sub.num_features = len(index)
    return part


class OctaveConvBlock(nn.Module):
    """A self-contained octave replacement for one conv: tensor in, tensor out.

    Splits its input (when ``alpha_in`` gives low channels), applies an
    :class:`OctaveConv2d` and merges the pair back in the original channel order
    (when ``alpha_out`` does), so it drops into any model where the conv was.
    This is octswap's layer-wise conversion unit.

    Example:
        >>> block = OctaveConvBlock.from_conv(nn.Conv2d(32, 64, 3, padding=1), alpha_in=0.5, alpha_out=0.5)
        >>> tuple(block(torch.randn(2, 32, 15, 15)).shape)
        (2, 64, 15, 15)
    """

    def __init__(self, conv: OctaveConv2d) -> None:
        super().__init__()
        self.conv = conv

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        alpha_in: float,
        alpha_out: float,
        in_low: int | None = None,
        out_low: int | None = None,
    ) -> OctaveConvBlock:
        """Replace ``conv`` by split -> octave conv -> merge, with its weights.

        ``in_low``/``out_low`` set the low channel counts (default: from the alphas, as
        :func:`low_channels` with no rounding).
        """
        return cls(OctaveConv2d.from_conv(conv, alpha_in=alpha_in, alpha_out=alpha_out, in_low=in_low, out_low=out_low))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(split_frequencies(x, self.conv.in_low) if self.conv.in_low else x)
        return merge_frequencies(*y) if self.conv.out_low else y
