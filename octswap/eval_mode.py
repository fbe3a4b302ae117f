"""Run a model in eval mode for a moment, then give every submodule its own mode back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block.

    Each submodule's flag is restored on its own, so a model with frozen (eval-mode)
    BatchNorm inside a training model comes back exactly as it was; ``model.train(prev)``
    would flip them all.

    Example:
        >>> net = nn.Sequential(nn.BatchNorm2d(4), nn.BatchNorm2d(4).eval())
        >>> with eval_mode(net):
        ...     pass
        >>> [m.training for m in net]
        [True, False]
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
