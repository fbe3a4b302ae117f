"""Input shapes as people write them (``224``, ``224x192``, ``1x28x28``); no torch needed."""

from __future__ import annotations

import re

from octswap.errors import InputError

__all__ = ["parse_input_shape"]


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``224`` -> (3, 224, 224); ``224x192`` -> (3, 224, 192); ``1x28x28`` -> (1, 28, 28).

    Raises:
        InputError: the text is not N, HxW or CxHxW with positive whole numbers.
    """
    parts = re.split(r"[x,]", text.strip().lower())
    if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in (1, 2, 3):
        raise InputError(f"--input-size: expected N, HxW or CxHxW with positive numbers, got {text!r}")
    dims = [int(p) for p in parts]
    if len(dims) == 1:
        return (3, dims[0], dims[0])
    if len(dims) == 2:
        return (3, dims[0], dims[1])
    return (dims[0], dims[1], dims[2])
