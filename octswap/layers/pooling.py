"""Pooling a (high, low) pair branch by branch, at any input size.

Graph mode runs a model's max and average pooling on each branch of a pair, as the
paper's networks do (Chen et al. 2019, Sec. 3). The pair's invariant is that the low
map is ``ceil(H/2) x ceil(W/2)`` when the high map is ``H x W``. The same pooling on
both branches keeps it only at some sizes: a 2x2 stride-2 max pool takes a 10-wide
high map to 5 but its 5-wide low map to 2, where the low branch needs ``ceil(5/2) = 3``.

:func:`pool_low` pools the low branch so that it lands on exactly ``ceil(high/2)``
windows, each at the place the op puts it (window ``j`` starts at ``j*stride -
padding``). Rows and columns no window reads are cropped; where windows reach past the
map's bottom or right edge they become *partial windows*: a max over the pixels
present, an average over the pixels present (the
divisor counts them, plus the op's own padding if ``count_include_pad``), as PyTorch's
``ceil_mode`` does. At sizes where the op already gives ``ceil(high/2)`` windows the
result is the op's own, bit for bit.

Ops are named by string because fx graphs take only plain data as arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FUNCTION_OPS", "MODULE_OPS", "POOL_PARAMETERS", "pool_low", "pool_parameters"]

#: Each pooling op's parameters, in its functional signature's order after ``input``.
POOL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
}
#: The pooling modules and functions (as fx records them) this module handles, by op name.
MODULE_OPS: dict[type[nn.Module], str] = {nn.MaxPool2d: "max_pool2d", nn.AvgPool2d: "avg_pool2d"}
FUNCTION_OPS: dict[Callable[..., Any], str] = {
    F.max_pool2d: "max_pool2d", torch.max_pool2d: "max_pool2d", F.avg_pool2d: "avg_pool2d",
}  # fmt: skip
_DEFAULTS: dict[str, Any] = {
    "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False,
    "count_include_pad": True, "divisor_override": None,
}  # fmt: skip


def pool_parameters(
    op: str | nn.Module | Callable[..., Any], args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The op name and its full keyword parameters, from a pooling module or a call's arguments.

    Args:
        op: an ``nn.MaxPool2d`` / ``nn.AvgPool2d`` module, a function of :data:`FUNCTION_OPS`,
            or an op name (``"max_pool2d"`` / ``"avg_pool2d"``).
        args: the call's positional arguments after the input (ignored for a module).
        kwargs: the call's keyword arguments (ignored for a module).

    Raises:
        KeyError: ``op`` is not a pooling op this module knows.
    """
    if isinstance(op, nn.Module):
        name = MODULE_OPS[type(op)]
        params = {key: getattr(op, key) for key in POOL_PARAMETERS[name]}
    else:
        name = op if isinstance(op, str) else FUNCTION_OPS[op]
        params = dict(_DEFAULTS, **dict(zip(POOL_PARAMETERS[name], args)), **(kwargs or {}))
        params = {key: params[key] for key in POOL_PARAMETERS[name]}
    if params["stride"] in (None, [], ()):  # torch.max_pool2d's default is [] (= kernel size)
        params["stride"] = params["kernel_size"]
    return name, params


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def pool_low(low: Tensor, high: Tensor, op: str, **params: Any) -> Tensor:
    """Pool the low branch of a pair onto exactly ``ceil(high/2)``, ``high`` being the pooled high branch.

    Args:
        low: the low branch before pooling, ``N x C x h x w``.
        high: the high branch *after* the same pooling, ``N x C' x H' x W'``.
        op: ``"max_pool2d"`` or ``"avg_pool2d"``.
        **params: the op's parameters (:func:`pool_parameters`); ``ceil_mode`` plays no
            part: the number of windows is ``ceil(H'/2) x ceil(W'/2)``.

    Returns:
        ``N x C x ceil(H'/2) x ceil(W'/2)``.

    Example:
        >>> import torch
        >>> high = F.max_pool2d(torch.randn(1, 8, 10, 10), 2)           # 5 x 5
        >>> pool_low(torch.randn(1, 4, 5, 5), high, "max_pool2d", kernel_size=2, stride=2).shape
        torch.Size([1, 4, 3, 3])
    """
    kernel = _pair(params["kernel_size"])
    stride = _pair(params.get("stride") or kernel)
    padding, dilation = _pair(params.get("padding", 0)), _pair(params.get("dilation", 1))
    target = ((high.shape[-2] + 1) // 2, (high.shape[-1] + 1) // 2)
    # Rows (columns) the first `target` windows read: window j covers
    # [j*s - p, j*s - p + d*(k-1)] (the op's own padding on the left).
    read = [(t - 1) * s - p + d * (k - 1) + 1 for t, s, p, d, k in zip(target, stride, padding, dilation, kernel)]
    x = low[..., : read[0], : read[1]]  # rows and columns no window reads
    extra = (max(0, read[1] - x.shape[-1]), max(0, read[0] - x.shape[-2]))  # F.pad order: (W, H)
    if op == "max_pool2d":
        if any(extra):  # a max over the pixels present, as the op's own padding does
            x = F.pad(x, (0, extra[0], 0, extra[1]), value=float("-inf"))
        out = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=False)
    elif op == "avg_pool2d":
        include_pad, divisor = params.get("count_include_pad", True), params.get("divisor_override")
        if not any(extra):
            out = F.avg_pool2d(x, kernel, stride, padding, False, include_pad, divisor)
        else:
            out = _partial_average(x, extra, kernel, stride, padding, include_pad=include_pad, divisor=divisor)
    else:
        raise KeyError(f"unknown pooling op {op!r}")
    return out[..., : target[0], : target[1]]


def _partial_average(
    x: Tensor, extra: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
    *, include_pad: bool, divisor: int | None,
) -> Tensor:
    """Average pooling whose windows may reach ``extra`` columns/rows past the bottom-right
    edge: the sum of the pixels present over their count (PyTorch's ``ceil_mode`` divisor)."""
    pad_extra = (0, extra[0], 0, extra[1])
    sums = F.avg_pool2d(F.pad(x, pad_extra), kernel, stride, padding, divisor_override=1)
    if divisor is not None:
        return sums / divisor
    present = x.new_ones((1, 1, x.shape[-2], x.shape[-1]))
    if include_pad:  # the op's own padding counts, the extra rows do not
        present = F.pad(present, (padding[1], padding[1], padding[0], padding[0]), value=1.0)
        counts = F.avg_pool2d(F.pad(present, pad_extra), kernel, stride, divisor_override=1)
    else:
        counts = F.avg_pool2d(F.pad(present, pad_extra), kernel, stride, padding, divisor_override=1)
    return sums / counts.clamp_min(1.0)
