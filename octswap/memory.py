"""Activation memory of one forward pass, measured on the real tensors.

Every tensor an ATen op creates during the forward pass is seen through a
``TorchDispatchMode`` (so the internals of octave modules count too, not only
module outputs). Two figures, in bytes, batch size 1 unless the input says otherwise:

* ``peak``: the most activation memory alive at once (storages are released when the
  last tensor seen on them is garbage-collected; eager PyTorch frees them at once);
* ``total``: the size of every activation written, each storage once (the paper's
  "activation memory" column compares feature-map sizes this way).

Parameters, buffers and the input are not activations and are not counted.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from octswap.eval_mode import eval_mode

__all__ = ["ActivationMemory", "measure_activations"]


@dataclass(frozen=True)
class ActivationMemory:
    peak: int
    total: int


class _Tracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.total = 0
        self.refs: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors alive]

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if not isinstance(value, torch.Tensor) or isinstance(value, nn.Parameter):
                continue
            if value.layout != torch.strided:
                # oneDNN's packed weights (octswap.layers.kernels) are opaque, have no storage
                # to measure, and are weights, not activations.
                continue
            storage = value.untyped_storage()
            nbytes = storage.nbytes()
            if nbytes == 0:
                continue
            key = storage.data_ptr()
            entry = self.refs.get(key)
            if entry is None:
                self.refs[key] = [nbytes, 1]
                self.live += nbytes
                self.total += nbytes
                self.peak = max(self.peak, self.live)
            else:
                entry[1] += 1
            weakref.finalize(value, self._release, key)
        return out


def measure_activations(model: nn.Module, inputs: torch.Tensor) -> ActivationMemory:
    """Peak and total activation bytes of one eval-mode forward pass without gradients.

    Example:
        >>> mem = measure_activations(nn.Conv2d(3, 8, 3, padding=1), torch.randn(1, 3, 16, 16))
        >>> mem.total == 8 * 16 * 16 * 4
        True
    """
    tracker = _Tracker()
    with eval_mode(model), torch.no_grad(), tracker:
        out = model(inputs)
        del out
    return ActivationMemory(peak=tracker.peak, total=tracker.total)
