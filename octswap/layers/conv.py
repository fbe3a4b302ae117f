"""The octave convolution (Chen et al., "Drop an Octave", ICCV 2019).

An :class:`OctaveConv2d` has four paths between the two branches of a pair
(:mod:`octswap.layers.split`), each an ``nn.Conv2d``. They come in two layouts:

* ``groups == 1`` (:func:`_summed_paths`): every output channel sees every input
  channel, so each output branch is the *sum* of two paths.
* ``groups > 1`` (:func:`_grouped_paths`; ResNeXt, depthwise): split at group
  boundaries, the first groups high-frequency and the last groups low-frequency, on
  both the input and the output side. Each group keeps its own input channels, so
  weights transfer from the original conv by slicing alone and no cross-frequency path
  mixes groups; each output branch is the *concatenation* of its paths. This differs
  from the official MXNet code, which keeps the same ``groups`` value on all four paths
  and so cannot start from a trained grouped conv.

:meth:`OctaveConv2d.forward` is the reference computation; for CPU inference the summed
layout may run :func:`~octswap.layers.fused.fused_forward` instead (same result up to
float rounding).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from octswap.layers import kernels
from octswap.layers.convertible import conv_padding, conv_weight
from octswap.layers.fused import fused_forward
from octswap.layers.resample import downsample, upsample
from octswap.layers.split import OctaveInput, check_geometry, low_channels, pair_of

__all__ = ["OctaveConv2d"]

#: The paths, in the order every layout builds, loads and reads them.
PATHS = ("h2h", "h2l", "l2h", "l2l")
#: One conv per path (``None`` where a path has no channels), in :data:`PATHS` order.
Paths = tuple[Optional[nn.Conv2d], Optional[nn.Conv2d], Optional[nn.Conv2d], Optional[nn.Conv2d]]
#: Slices (start, stop) of the source branch each path reads; None = all of it.
Slices = dict[str, Optional[tuple[int, int]]]
#: Builds one path: (in channels, out channels, groups, bias) -> its conv, or None.
PathConv = Callable[[int, int, int, bool], Optional[nn.Conv2d]]


def _path_conv(cin: int, cout: int, groups: int, bias: bool, **options: Any) -> nn.Conv2d | None:
    """One path: an ``nn.Conv2d`` with the octave conv's ``options`` (geometry, padding
    mode, device, dtype), or None when it has no channels."""
    if cin == 0 or cout == 0:
        return None
    return nn.Conv2d(cin, cout, groups=groups, bias=bias, **options)


def _summed_paths(path: PathConv, *, in_low: int, in_high: int, out_low: int, out_high: int, bias: bool) -> Paths:
    """``groups == 1``: every output channel sees every input channel: four summed paths.
    One bias per output branch, on the path that always exists for it."""
    return (
        path(in_high, out_high, 1, bias),
        path(in_high, out_low, 1, bias and in_low == 0),
        path(in_low, out_high, 1, False),
        path(in_low, out_low, 1, bias),
    )


def _grouped_paths(
    path: PathConv, *, groups: int, in_low: int, in_high: int, out_low: int, out_high: int, bias: bool
) -> tuple[Paths, Slices]:
    """``groups > 1``: each group belongs to exactly one path.

    Group j reads low input iff j >= groups - gl_in and writes low output iff
    j >= groups - gl_out, so each group belongs to exactly one path and the
    outputs of a branch are the concatenation of its paths in group order.
    """
    gin, gout = (in_high + in_low) // groups, (out_high + out_low) // groups
    gl_in, gl_out = in_low // gin, out_low // gout
    n_hh = groups - max(gl_in, gl_out)
    n_hl = max(0, gl_out - gl_in)
    n_lh = max(0, gl_in - gl_out)
    n_ll = min(gl_in, gl_out)
    paths = (
        path(n_hh * gin, n_hh * gout, n_hh, bias),
        path(n_hl * gin, n_hl * gout, n_hl, bias),
        path(n_lh * gin, n_lh * gout, n_lh, bias),
        path(n_ll * gin, n_ll * gout, n_ll, bias),
    )
    slices: Slices = {
        "h2h": (0, n_hh * gin),
        "h2l": (n_hh * gin, in_high),
        "l2h": (0, n_lh * gin),
        "l2l": (n_lh * gin, in_low),
    }
    return paths, slices


def _low_counts(
    in_channels: int, out_channels: int, groups: int, alphas: tuple[float, float], lows: tuple[int | None, int | None]
) -> tuple[int, int]:
    """Low-frequency input and output channels: ``lows`` where given, else from ``alphas``.

    Raises:
        ValueError: a count outside ``[0, channels)`` or not whole groups.
    """
    gin, gout = in_channels // groups, out_channels // groups
    in_low = low_channels(in_channels, alphas[0], groups=groups) if lows[0] is None else lows[0]
    out_low = low_channels(out_channels, alphas[1], groups=groups) if lows[1] is None else lows[1]
    for side, low, total, size in (("in", in_low, in_channels, gin), ("out", out_low, out_channels, gout)):
        if not 0 <= low < total or (groups > 1 and low % size):
            raise ValueError(f"{side}_low={low} must be in [0, {total}) and whole groups of {size if groups > 1 else 1}")
    return in_low, out_low


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
        self.kernel_size = pair_of(kernel_size, "kernel_size")
        self.dilation = pair_of(dilation, "dilation")
        self.stride = pair_of(stride, "stride")
        self.padding = check_geometry(self.kernel_size, stride=self.stride, padding=padding, dilation=self.dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self.alpha_in = float(alpha_in)
        self.alpha_out = float(alpha_out)

        # Explicit counts (graph mode: the input split is whatever flows in) override alphas.
        self.in_low, self.out_low = _low_counts(
            in_channels, out_channels, groups, (alpha_in, alpha_out), (in_low, out_low)
        )
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
        path = functools.partial(
            _path_conv, kernel_size=self.kernel_size, stride=self.stride if self._plain else (1, 1),
            padding=self.padding, dilation=self.dilation, padding_mode=padding_mode, device=device, dtype=dtype,
        )  # fmt: skip
        sides = dict(in_low=self.in_low, in_high=self.in_high, out_low=self.out_low, out_high=self.out_high)
        self._slices: Slices
        if groups == 1:
            paths, self._slices = _summed_paths(path, bias=bias, **sides), dict.fromkeys(PATHS)
            self._combine = "sum"
        else:
            paths, self._slices = _grouped_paths(path, groups=groups, bias=bias, **sides)
            self._combine = "cat"
        self.h2h, self.h2l, self.l2h, self.l2l = paths

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
        :func:`octswap.layers.transfer.resample_paths` then fits the slices of the paths
        that run at a coarser resolution (what :func:`octswap.convert` does by default).

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
            self._load_blocks(weight, bias)
        else:
            self._load_groups(weight, bias)

    def _load_blocks(self, weight: Tensor, bias: Tensor | None) -> None:
        """Summed layout: each path gets its (output branch, input branch) block of ``weight``."""
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

    def _load_groups(self, weight: Tensor, bias: Tensor | None) -> None:
        """Grouped layout: paths own whole groups, in order h2h, then h2l or l2h, then l2l."""
        gout = self.out_channels // self.groups
        start = 0
        for name in PATHS:
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
                    "split a tensor with octswap.layers.split_frequencies first"
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
        """:func:`~octswap.layers.fused.fused_forward` on this conv's paths (summed layout)."""
        return fused_forward(self.h2h, self.h2l, self.l2h, self.l2l, x_h, x_l,
                             strided=self._strided, low_output=self.out_low > 0)  # fmt: skip

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
