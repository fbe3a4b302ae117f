"""Stochastic depth for a (high, low) pair: one random draw shared by both branches.

It lives at module level so that fx code generation can name it (graph mode calls it
where the original model called torchvision's ``stochastic_depth``).
"""

from __future__ import annotations

import torch

__all__ = ["stochastic_depth_pair"]


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
