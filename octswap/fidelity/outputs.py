"""Outputs compared tensor by tensor: relative L2 error and cosine similarity per output."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from octswap.errors import InputError
from octswap.fidelity.result import OutputDrift
from octswap.fidelity.taps import RelativeError, named_leaves

__all__ = ["OutputsTally"]


class OutputsTally:
    """Running figures per output tensor (the leaves of whatever ``forward`` returns).

    Both models must return the same structure with tensors of the same shapes; integer
    tensors (indices, labels) are skipped. The cosine similarity is taken per sample
    (flattened over every dimension but the first) and averaged over samples.
    """

    def __init__(self) -> None:
        self.errors: dict[str, RelativeError] = {}
        self.cosine_sum: dict[str, float] = {}
        self.cosine_count: dict[str, int] = {}

    def add(self, original: Any, converted: Any) -> None:
        """One batch of both models' outputs.

        Raises:
            InputError: the outputs differ in structure or in a tensor's shape.
        """
        leaves_o, leaves_c = named_leaves(original), named_leaves(converted)
        if leaves_o.keys() != leaves_c.keys():
            raise InputError(f"the models' outputs differ in structure: {', '.join(list(leaves_o)[:4]) or 'one tensor'} "
                             f"in the original's, {', '.join(list(leaves_c)[:4]) or 'one tensor'} in the converted's")
        for name, o in leaves_o.items():
            c = leaves_c[name]
            if not (isinstance(o, torch.Tensor) and isinstance(c, torch.Tensor) and o.is_floating_point()):
                continue
            if o.numel() == 0 and c.numel() == 0:
                continue  # nothing to compare (a detector that found nothing)
            if o.shape != c.shape:
                raise InputError(f"the models' outputs{name} differ in shape: {tuple(o.shape)} vs {tuple(c.shape)}")
            self.errors.setdefault(name, RelativeError()).add(c, o)
            flat_o = o.double().reshape(len(o), -1) if o.ndim > 1 else o.double().reshape(1, -1)
            flat_c = c.double().reshape(flat_o.shape)
            cosine = F.cosine_similarity(flat_o, flat_c, dim=1, eps=1e-12)
            self.cosine_sum[name] = self.cosine_sum.get(name, 0.0) + float(cosine.sum())
            self.cosine_count[name] = self.cosine_count.get(name, 0) + len(cosine)

    def drifts(self) -> tuple[OutputDrift, ...]:
        return tuple(
            OutputDrift(name, err.value, self.cosine_sum[name] / self.cosine_count[name])
            for name, err in self.errors.items()
        )

    def relative_error(self) -> float | None:
        """Relative L2 error of all outputs together."""
        if not self.errors:
            return None
        total = RelativeError()
        total.diff = sum(e.diff for e in self.errors.values())
        total.ref = sum(e.ref for e in self.errors.values())
        return total.value

    def mean_cosine(self) -> float | None:
        """Mean cosine similarity over every output's samples."""
        count = sum(self.cosine_count.values())
        return sum(self.cosine_sum.values()) / count if count else None
