"""What each submodule is called with: the probe's record, and the structure fx traces it with.

A submodule of a model that does not trace as a whole is traced on its own (a *region*,
:mod:`octswap.rewrite.regions`). Its forward may take a list of feature maps (a
detection head), a dict (torchvision's ``FeaturePyramidNetwork``) or keyword arguments;
one probe forward of the whole model records the first call of every submodule holding
a conv, and :func:`concrete_args` turns it into ``fx.Tracer.trace``'s ``concrete_args``:
the same structure with ``fx.PH`` for each tensor, so the traced graph takes what the
parent passes and a loop over a list unrolls once per element (like Hugging Face's
tracer, which records concrete inputs to trace code that depends on their structure).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_map

from octswap.eval_mode import eval_mode
from octswap.plan import example_input

__all__ = ["Call", "concrete_args", "holds_conv", "probe_call", "record_calls"]


@dataclass(frozen=True)
class Call:
    """One recorded call of a submodule: its arguments and its output (tensors cloned)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any

    def run(self, module: nn.Module) -> Any:
        """Call ``module`` (its traced graph, say) with the recorded arguments."""
        return module(*self.args, **self.kwargs)

    def positional(self, module: nn.Module) -> tuple[Any, ...]:
        """The arguments in the order of ``module.forward``'s parameters, defaults filled in
        (what ``fx.Interpreter`` takes for the graph traced from ``module``)."""
        bound = inspect.signature(module.forward).bind(*self.args, **self.kwargs)
        bound.apply_defaults()
        return tuple(bound.arguments.values())


def probe_call(input_shape: tuple[int, int, int]) -> Call:
    """The probe's own call of a whole model (output not recorded)."""
    return Call((example_input(input_shape),), {}, None)


def holds_conv(module: nn.Module) -> bool:
    """Whether ``module`` is or contains an ``nn.Conv2d``."""
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _detached(value: Any) -> Any:
    return tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


def record_calls(
    model: nn.Module, input_shape: tuple[int, int, int], paths: Iterable[str] | None = None
) -> dict[str, Call]:
    """Run ``model`` once on the probe input and record the first call of each submodule.

    Args:
        model: The model; run in eval mode without gradients.
        input_shape: ``(C, H, W)`` of the probe input (:func:`octswap.plan.example_input`).
        paths: Dotted names of the submodules to record (``""`` is the model); default:
            every submodule that holds a conv.

    Returns:
        Dotted name -> :class:`Call`, for the submodules the forward called.
    """
    wanted = set(paths) if paths is not None else {name for name, m in model.named_modules() if holds_conv(m)}
    calls: dict[str, Call] = {}
    pending: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def before(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name not in calls and name not in pending:
                pending[name] = (_detached(args), _detached(kwargs))

        return hook

    def after(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if name in pending:
                recorded_args, recorded_kwargs = pending.pop(name)
                calls[name] = Call(recorded_args, recorded_kwargs, _detached(output))

        return hook

    handles = []
    for name, module in model.named_modules():
        if name in wanted:
            handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True))
            handles.append(module.register_forward_hook(after(name), with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input(input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _placeholders(value: Any) -> Any:
    """``value`` with each tensor replaced by ``fx.PH``; None where it holds something fx cannot take."""
    if isinstance(value, torch.Tensor):
        return fx.PH
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        items = [_placeholders(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else type(value)(items)
    if isinstance(value, Mapping) and type(value) is dict:
        items = {k: _placeholders(v) for k, v in value.items()}
        return None if any(items[k] is None and value[k] is not None for k in value) else items
    return None


def concrete_args(module: nn.Module, call: Call) -> dict[str, Any]:
    """``fx.Tracer.trace``'s ``concrete_args`` for tracing ``module`` as it was called.

    Tensors in lists, tuples and dicts become placeholders (``fx.PH``); ``None`` and
    numbers stay constants (fx asserts them); a tensor argument and the arguments the call
    left out stay ordinary placeholders (not listed).

    Raises:
        TypeError: an argument is of a type fx cannot take as an input (a custom class,
            such as torchvision's ``ImageList``).
    """
    signature = inspect.signature(module.forward)
    bound = signature.bind(*call.args, **call.kwargs)
    result = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"takes *args/**kwargs ({name})")
        if isinstance(value, torch.Tensor):
            continue
        structure = _placeholders(value)
        if structure is None and value is not None:
            kind = type(value).__name__
            article = "an" if kind[:1].lower() in "aeiou" else "a"
            raise TypeError(f"takes {article} {kind} ({name}), which torch.fx cannot trace as an input")
        result[name] = structure
    return result
