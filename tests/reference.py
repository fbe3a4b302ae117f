"""Independent reference implementation of octave convolution for the tests.

Written from the paper's equations with plain tensor ops (reshape-based pooling,
repeat-based upsampling, one ``F.conv2d`` per group), sharing no code with
``octswap.layers``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def ref_low(channels: int, alpha: float, group_size: int = 1) -> int:
    low = int(round(alpha * channels, 6) // 1)
    return (low // group_size) * group_size


def ref_pool(x: Tensor) -> Tensor:
    """2x2 mean over the valid elements of each window; odd edges get partial windows."""
    n, c, h, w = x.shape
    ph, pw = h % 2, w % 2
    padded = F.pad(x, (0, pw, 0, ph))
    ones = F.pad(torch.ones(1, 1, h, w, dtype=x.dtype), (0, pw, 0, ph))
    hh, ww = (h + ph) // 2, (w + pw) // 2
    sums = padded.reshape(n, c, hh, 2, ww, 2).sum(dim=(3, 5))
    counts = ones.reshape(1, 1, hh, 2, ww, 2).sum(dim=(3, 5))
    return sums / counts


def ref_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[:, :, : size[0], : size[1]]


def ref_octave(
    x_h: Tensor,
    x_l: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    *,
    in_low: int,
    out_low: int,
    stride: int,
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> tuple[Tensor, Tensor | None]:
    """Octave conv of a (high, low) pair with the *original* conv's weight and bias."""
    out_ch = weight.shape[0]
    out_high = out_ch - out_low
    in_high = x_h.shape[1]
    if in_low == 0 and out_low == 0:
        y = F.conv2d(x_h, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
        return y, None

    def conv(inp: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(inp, w, None, stride=1, padding=padding, dilation=dilation)

    # Inputs at the resolutions the outputs live at: high output at level 0 (stride 1)
    # or 1 (stride 2), low output one level lower.
    hi_at_out = ref_pool(x_h) if stride == 2 else x_h
    out_size = hi_at_out.shape[-2:]
    low_size = (math.ceil(out_size[0] / 2), math.ceil(out_size[1] / 2))
    n = x_h.shape[0]
    y_h = torch.zeros(n, out_high, *out_size, dtype=x_h.dtype)
    y_l = torch.zeros(n, out_low, *low_size, dtype=x_h.dtype)

    gin, gout = weight.shape[1], out_ch // groups
    for g in range(groups):
        # Channels of group g in the original input/output numbering.
        ci = range(g * gin, (g + 1) * gin) if groups > 1 else range(in_high + in_low)
        co = range(g * gout, (g + 1) * gout)
        w_g = weight[co.start : co.stop]
        for src in ("h", "l"):
            cols = [c for c in ci if (c >= in_high) == (src == "l")]
            if not cols:
                continue
            w_in = w_g[:, [c - ci.start for c in cols]] if groups == 1 else w_g
            if src == "h":
                inp_for_high, inp_for_low = hi_at_out[:, cols], ref_pool(hi_at_out[:, cols])
            else:
                xl = x_l[:, [c - in_high for c in cols]]
                inp_for_high = xl  # convolved, then upsampled when stride 1
                inp_for_low = ref_pool(xl) if stride == 2 else xl
            high_rows = [r for r in co if r < out_high]
            low_rows = [r for r in co if r >= out_high]
            if high_rows:
                y = conv(inp_for_high, w_in[[r - co.start for r in high_rows]])
                if src == "l" and stride == 1:
                    y = ref_up(y, out_size)
                y_h[:, high_rows] += y
            if low_rows:
                y = conv(inp_for_low, w_in[[r - co.start for r in low_rows]])
                y_l[:, [r - out_high for r in low_rows]] += y
    if bias is not None:
        y_h += bias[:out_high].view(1, -1, 1, 1)
        y_l += bias[out_high:].view(1, -1, 1, 1)
    return y_h, (y_l if out_low else None)
