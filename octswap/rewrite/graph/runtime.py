"""Functions the rewritten graph calls between octave modules.

They live at module level so that fx code generation can name them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from octswap.octave import downsample, upsample

__all__ = ["merge_ordered", "pair_shape", "pooled_merge", "split_ordered", "stochastic_depth_pair", "take_channels"]


def merge_ordered(high: torch.Tensor, low: torch.Tensor, restore: Sequence[int] | None) -> torch.Tensor:
    """Merge a pair (upsample low, concatenate) and restore the original channel order."""
    merged = torch.cat([high, upsample(low, high.shape[-2:])], dim=1)
    return merged if restore is None else merged[:, list(restore)]


def split_ordered(x: torch.Tensor, high: Sequence[int], low: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a plain tensor into a pair with the given channel layout."""
    return _take(x, high), downsample(_take(x, low))


def take_channels(x: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    """Channels ``index`` of ``x`` (a slice when they are contiguous)."""
    return _take(x, index)


def _take(x: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    if len(index) and list(index) == list(range(index[0], index[0] + len(index))):
        return x[:, index[0] : index[0] + len(index)]
    return x[:, list(index)]


def pair_shape(high: torch.Tensor, channels: int) -> torch.Size:
    """The shape of the tensor a pair stands for: the high branch's, with all ``channels``."""
    return torch.Size((high.shape[0], channels, *high.shape[2:]))


def pooled_merge(high: torch.Tensor, low: torch.Tensor, restore: Sequence[int] | None) -> torch.Tensor:
    """Concatenate per-branch global averages (the official octave SE block), original order."""
    merged = torch.cat([high, low], dim=1)
    return merged if restore is None else merged[:, list(restore)]


def stochastic_depth_pair(
    high: torch.Tensor, low: torch.Tensor, p: float, mode: str, training: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's stochastic depth with one random draw shared by both branches."""
    if not training or p == 0.0:
        return high, low
    shape = [high.shape[0]] + [1] * (high.ndim - 1) if mode == "row" else [1] * high.ndim
    keep = 1.0 - p
    noise = torch.empty(shape, dtype=high.dtype, device=high.device).bernoulli_(keep)
    if keep > 0.0:
        noise.div_(keep)
    return high * noise, low * noise
