"""FLOP and parameter counting with fvcore, completed for what octave convs add.

Convention (fvcore's): one multiply-add is one FLOP. fvcore counts conv, linear,
matmul/einsum, BatchNorm/LayerNorm, nearest/bilinear upsampling and adaptive
average pooling. It leaves out average and max pooling, ``add`` and other
elementwise arithmetic -- exactly the ops an octave conv adds (2x2 pooling, the
sum of two paths) -- and the attention products of ``nn.MultiheadAttention``.
octswap registers handles for those, so original and converted models are
counted completely and alike:

* pooling: one per element of each pooling window (``out.numel() * kh * kw``);
  ``mean`` over dims: one per input element;
* ``add``/``sub``/``mul``/``div`` (and in-place forms): one per output element;
* attention: ``L*S*(E + Ev)`` per batch and head for ``scaled_dot_product_attention``,
  plus the in/out projections for the fused ``_native_multi_head_attention``.

Activations (ReLU, SiLU, GELU, ...) stay uncounted as in fvcore and are listed.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from octswap.eval_mode import eval_mode

__all__ = ["CONVENTION", "CORE_OPERATORS", "Cost", "OP_HANDLES", "count_cost"]

logger = logging.getLogger(__name__)

CONVENTION = "FLOPs are multiply-adds (fvcore's convention: 1 MAC = 1 FLOP); batch size 1"

#: fvcore operator names that torchvision's published GFLOPS (``weights.meta["_ops"]``) cover.
CORE_OPERATORS = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum", "attention"})

Handle = Callable[[list[Any], list[Any]], Any]


def _shape(value: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return list(get_shape(value))


def _ints(value: Any) -> list[int] | None:
    """The int list behind a traced argument (a constant or a ListConstruct of constants)."""
    constant = value.toIValue()
    if constant is None and value.node().kind() == "prim::ListConstruct":
        constant = [v.toIValue() for v in value.node().inputs()]
    if isinstance(constant, int):
        return [constant, constant]
    if isinstance(constant, (list, tuple)) and all(isinstance(v, int) for v in constant):
        return list(constant)
    return None


def _pool_handle(inputs: list[Any], outputs: list[Any]) -> int:
    kernel = _ints(inputs[1])
    if not kernel:  # unknown window: every input element is read at least once
        return math.prod(_shape(inputs[0]))
    area = math.prod(kernel) if len(kernel) == 2 else kernel[0] ** 2
    return math.prod(_shape(outputs[0])) * area


def _input_elements(inputs: list[Any], outputs: list[Any]) -> int:
    return math.prod(_shape(inputs[0]))


def _output_elements(inputs: list[Any], outputs: list[Any]) -> int:
    return math.prod(_shape(outputs[0]))


def _sdpa_handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return Counter({"attention": batch * q[-2] * k[-2] * (q[-1] + v[-1])})


def _native_mha_handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    # (query, key, value, embed_dim, num_heads, qkv_weight, ...); batch-first (B, L, E).
    q, k = _shape(inputs[0]), _shape(inputs[1])
    batch, length, embed = math.prod(q[:-2]), q[-2], q[-1]
    source = k[-2]
    projections = batch * (length * embed * embed * 2 + source * embed * embed * 2)  # q, k, v, out
    products = batch * length * source * embed * 2  # Q K^T and A V over all heads
    return Counter({"linear": projections, "attention": products})


#: Handles octswap adds to fvcore's defaults (name -> handle), like fvcore's own table.
OP_HANDLES: dict[str, Handle] = {
    "aten::avg_pool2d": _pool_handle,
    "aten::max_pool2d": _pool_handle,
    "aten::mean": _input_elements,
    "aten::scaled_dot_product_attention": _sdpa_handle,
    "aten::_native_multi_head_attention": _native_mha_handle,
    **{f"aten::{op}": _output_elements for op in ("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_")},
}


@dataclass(frozen=True)
class Cost:
    """FLOPs and parameters of one model at one input shape."""

    flops: int
    params: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    params_by_module: dict[str, int]
    uncounted: dict[str, int]

    @property
    def core_flops(self) -> int:
        """Conv + linear + matmul/attention FLOPs: what torchvision publishes as GFLOPS."""
        return sum(v for k, v in self.by_operator.items() if k in CORE_OPERATORS)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence fvcore's tracing chatter for this call only, not globally."""
    jit_logger = logging.getLogger("fvcore.nn.jit_analysis")
    level = jit_logger.level
    jit_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*TorchScript.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
            yield
    finally:
        jit_logger.setLevel(level)


def count_cost(model: nn.Module, inputs: torch.Tensor | tuple[Any, ...]) -> Cost:
    """Count FLOPs (per module and per operator) and parameters of ``model`` on ``inputs``.

    ``inputs`` is one tensor, or a tuple of positional arguments (so a (high, low)
    pair for an octave module is passed as ``((high, low),)``).

    The model is traced in eval mode without gradients and restored afterwards.

    Example:
        >>> cost = count_cost(nn.Conv2d(3, 8, 3, padding=1), torch.randn(1, 3, 8, 8))
        >>> cost.flops == 8 * 3 * 9 * 64
        True
    """
    with eval_mode(model), _quiet(), torch.no_grad():
        # Imported here, under _quiet: fvcore scripts a helper at import time.
        from fvcore.nn import FlopCountAnalysis, parameter_count

        analysis = FlopCountAnalysis(model, inputs)
        for name, handle in OP_HANDLES.items():
            analysis.set_op_handle(name, handle)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = analysis.total()
        by_module = dict(analysis.by_module())
        by_operator = dict(analysis.by_operator())
        uncounted = dict(analysis.unsupported_ops())
        params = parameter_count(model)
    return Cost(
        flops=int(total),
        params=int(params.get("", 0)),
        by_module={k: int(v) for k, v in by_module.items()},
        by_operator={k: int(v) for k, v in by_operator.items()},
        params_by_module={k: int(v) for k, v in params.items()},
        uncounted={k.removeprefix("aten::"): int(v) for k, v in uncounted.items()},
    )
