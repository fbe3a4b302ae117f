"""Moving between resolutions, and between one map and a (high, low) pair.

Resampling follows the paper and the official code: 2x2 average pooling with
``ceil_mode=True`` (so odd sizes never crash and never lose a row) and nearest
upsampling to the *exact* size of the high branch. The low branch of a map of size
``H x W`` is therefore always ``ceil(H/2) x ceil(W/2)``.

:func:`split_frequencies` and :func:`merge_frequencies` split and merge in the
plain channel order (high channels first); :func:`split_ordered`,
:func:`merge_ordered` and :func:`pooled_merge` take any channel layout (graph mode,
where the rewritten graph calls them between octave modules; they live at module
level so that fx code generation can name them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from octswap.layers.split import take_channels

__all__ = [
    "downsample",
    "merge_frequencies",
    "merge_ordered",
    "pooled_merge",
    "split_frequencies",
    "split_ordered",
    "upsample",
]


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


def split_ordered(x: torch.Tensor, high: Sequence[int], low: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a plain tensor into a pair with the given channel layout."""
    return take_channels(x, high), downsample(take_channels(x, low))


def merge_ordered(high: torch.Tensor, low: torch.Tensor, restore: Sequence[int] | None) -> torch.Tensor:
    """Merge a pair (upsample low, concatenate) and restore the original channel order."""
    merged = merge_frequencies(high, low)
    return merged if restore is None else merged[:, list(restore)]


def pooled_merge(high: torch.Tensor, low: torch.Tensor, restore: Sequence[int] | None) -> torch.Tensor:
    """Concatenate per-branch global averages (the official octave SE block), original order."""
    merged = torch.cat([high, low], dim=1)
    return merged if restore is None else merged[:, list(restore)]
