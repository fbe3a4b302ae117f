"""Glue the rewritten graph calls between octave modules that is not an octave layer.

The octave operations it calls (splitting and merging pairs, stochastic depth of a
pair, picking channels) are in :mod:`octswap.layers`. Functions live at module level so
that fx code generation can name them.
"""

from __future__ import annotations

import torch

__all__ = ["low_size", "pair_shape"]


def pair_shape(high: torch.Tensor, channels: int) -> torch.Size:
    """The shape of the tensor a pair stands for: the high branch's, with all ``channels``."""
    return torch.Size((high.shape[0], channels, *high.shape[2:]))


def low_size(high: torch.Tensor) -> tuple[int, int]:
    """The low branch's height and width for a high branch: ``ceil(size / 2)``, as pooling
    keeps it (:mod:`octswap.layers.pooling`); symbolic sizes stay symbolic."""
    height, width = high.shape[-2:]
    return ((height + 1) // 2, (width + 1) // 2)
