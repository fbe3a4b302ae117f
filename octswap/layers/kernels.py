"""oneDNN inference kernels: convs that add into their output, and weights packed once.

Two things eager PyTorch leaves on the table for CPU inference, both used by
inductor's own CPU passes and exposed as (private) ``torch.ops.mkldnn`` ops:

* **Adding convs.** A oneDNN convolution can add its result into an existing tensor
  ("sum" post-op), so an octave path sum such as ``h2h(x_h) + upsample(l2h(x_l))``
  costs one conv writing into the upsampled tensor instead of a conv, a new
  full-size tensor and an add kernel (:func:`conv_into`).
* **Packed weights.** ``F.conv2d`` hands oneDNN a plain weight, which it reorders to
  its blocked layout on every call; for big weights on small maps that reorder costs
  as much as the conv. :class:`PackedConv2d` keeps the reordered weight, made once on
  the first call and remade when the weight changes. An octave conv, with four path
  weights per layer, pays the per-call cost more often than the conv it replaces.

Both run only where they cannot change results beyond float rounding: CPU, float32,
channels-last input, no autograd, not under ``torch.compile`` or ``torch.jit.trace``
(fvcore counts FLOPs on a trace of the reference ops), and only if a one-time probe
of the private ops succeeds; otherwise the plain PyTorch ops run.
:func:`fused_kernels` switches both off for a block (tests compare the two).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PackedConv2d",
    "conv",
    "conv_into",
    "fast_path_allowed",
    "fused_kernels",
    "fused_kernels_available",
    "pack_convs",
    "packable",
]

_mkldnn = getattr(torch.ops, "mkldnn", None)
_conv_add_ = getattr(_mkldnn, "_convolution_pointwise_", None)
_conv_packed = getattr(_mkldnn, "_convolution_pointwise", None)
_reorder_weight = getattr(_mkldnn, "_reorder_convolution_weight", None)
_state: dict[str, Any] = {"enabled": True, "works": None}


def fused_kernels_available() -> bool:
    """Whether this PyTorch build runs oneDNN's adding convs and packed weights.

    Tried once on a tiny input (the ops are private to PyTorch, so their presence
    alone is not trusted).
    """
    if _state["works"] is None:
        _state["works"] = False
        ops = (_conv_add_, _conv_packed, _reorder_weight)
        if all(op is not None for op in ops) and torch.backends.mkldnn.is_available():
            try:
                with torch.inference_mode():
                    cl = torch.channels_last
                    x = torch.ones(1, 2, 3, 3).contiguous(memory_format=cl)
                    w = torch.ones(2, 2, 1, 1).contiguous(memory_format=cl)
                    acc = torch.ones(1, 2, 3, 3).contiguous(memory_format=cl)
                    _conv_add_(acc, x, w, None, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, None, [], None)
                    packed = _reorder_weight(w, [0, 0], [1, 1], [1, 1], 1, [1, 2, 3, 3])
                    y = _conv_packed(x, packed, None, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
                _state["works"] = bool((acc == 3).all()) and bool((y == 2).all())
            except (RuntimeError, TypeError, NotImplementedError):
                _state["works"] = False
    return bool(_state["works"])


@contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Allow (default) or forbid the fused and packed inference kernels inside the block.

    Forbidding them forces the reference computation (plain PyTorch ops).

    Example:
        >>> with fused_kernels(False):
        ...     y = conv(x)   # doctest: +SKIP
    """
    previous = _state["enabled"]
    _state["enabled"] = enabled
    try:
        yield
    finally:
        _state["enabled"] = previous


def fast_path_allowed(*inputs: Tensor | None) -> bool:
    """Whether the fused/packed kernels may run on these inputs here and now."""
    channels_last = torch.channels_last
    for x in inputs:
        if x is None:
            continue
        if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous(memory_format=channels_last):
            return False
    return (
        _state["enabled"]
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and fused_kernels_available()
    )


class PackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that keeps its weight in oneDNN's layout for inference.

    Same parameters, same state dict, same results; the packed copy is a cache (not
    saved, not copied) made on the first eligible call and remade when the weight
    changes (``load_state_dict``, ``.to()``). Training, NCHW input, other dtypes or
    devices run ``nn.Conv2d.forward``.

    Example:
        >>> fast = PackedConv2d.from_conv(nn.Conv2d(16, 32, 3, padding=1))
        >>> with torch.inference_mode():
        ...     y = fast(torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last))
    """

    @classmethod
    def from_conv(cls, plain: nn.Conv2d) -> PackedConv2d:
        """A packed conv sharing ``plain``'s parameters (not copied; hooks are not carried over).

        Raises:
            ValueError: ``plain`` pads other than with zeros by explicit amounts, which
                oneDNN's packed conv cannot do.
        """
        if not packable(plain):
            raise ValueError(f"cannot pack {plain}: only zero padding by explicit amounts")
        packed = cls(
            plain.in_channels, plain.out_channels, plain.kernel_size, stride=plain.stride, padding=plain.padding,
            dilation=plain.dilation, groups=plain.groups, bias=plain.bias is not None,
            padding_mode=plain.padding_mode, device="meta",
        )  # fmt: skip
        packed.weight = plain.weight
        packed.bias = plain.bias
        return packed.train(plain.training)

    def __getstate__(self) -> dict[str, Any]:
        # The packed weight is an opaque oneDNN tensor: neither picklable nor copyable.
        state = super().__getstate__()
        state.pop("_packed", None)
        return state

    def packed_weight(self, x: Tensor) -> Tensor:
        """The weight to hand to oneDNN for input ``x`` (packed once per weight version)."""
        key = (self.weight.data_ptr(), self.weight._version)
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            assert _reorder_weight is not None  # fast_path_allowed checked the probe
            packed = _reorder_weight(
                self.weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape),
            )  # fmt: skip
            cached = (key, packed)
            self.__dict__["_packed"] = cached
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        if not fast_path_allowed(x):
            return super().forward(x)
        return conv(self, x)


def packable(module: nn.Conv2d) -> bool:
    """Whether oneDNN's packed conv computes ``module``: zero padding by explicit amounts."""
    return module.padding_mode == "zeros" and not isinstance(module.padding, str)


def conv(module: nn.Conv2d, x: Tensor) -> Tensor:
    """``module(x)`` for a zero-padded conv, with the packed weight when there is one.

    Callers check :func:`fast_path_allowed` first when ``module`` may be packed.
    """
    if isinstance(module, PackedConv2d) and _conv_packed is not None:
        return _conv_packed(
            x, module.packed_weight(x), module.bias, list(module.padding), list(module.stride),
            list(module.dilation), module.groups, "none", [], "",
        )  # fmt: skip
    return F.conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)


def conv_into(acc: Tensor, module: nn.Conv2d, x: Tensor) -> Tensor:
    """``acc += module(x)`` in one oneDNN call; ``acc`` must be a fresh tensor (it is overwritten).

    Callers check :func:`fast_path_allowed` first.
    """
    assert _conv_add_ is not None  # fast_path_allowed checked the probe
    if not acc.is_contiguous(memory_format=torch.channels_last):
        acc = acc.contiguous(memory_format=torch.channels_last)
    weight = module.packed_weight(x) if isinstance(module, PackedConv2d) else module.weight
    return _conv_add_(
        acc, x, weight, module.bias, list(module.padding), list(module.stride), list(module.dilation),
        module.groups, "add", 1.0, None, [], None,
    )  # fmt: skip


def pack_convs(model: nn.Module) -> int:
    """Replace every packable ``nn.Conv2d`` in ``model`` (in place) by a :class:`PackedConv2d`.

    Parameters are shared, state-dict keys unchanged; octave path convs are packed too.
    Convs with other padding (reflect, ``'same'``) stay as they are.

    Returns:
        How many convs were replaced.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and packable(child):
                setattr(parent, name, PackedConv2d.from_conv(child))
                replaced += 1
    return replaced
