"""The conversion entry point: plan, copy, rewrite, verify."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from octswap.errors import ConversionError, UntraceableError, one_line
from octswap.eval_mode import eval_mode
from octswap.plan import Plan, example_input, output_signature, output_tensors, policy_plan
from octswap.policy import Policy
from octswap.rewrite import apply_plan, rewriter

__all__ = ["AUTO", "MODES", "convert", "make_plan", "verify"]

logger = logging.getLogger(__name__)

#: Graph mode where ``torch.fx`` can rewrite the model, else layer mode (with one warning).
AUTO = "auto"
#: The modes :func:`convert` and :func:`make_plan` take.
MODES = (AUTO, "graph", "layer")


def _fallback_warning(err: ConversionError) -> str:
    why = f"it does not trace with torch.fx: {err.detail}" if isinstance(err, UntraceableError) else one_line(err)
    return f"graph mode cannot convert this model ({why}); using layer mode instead"


def _with_warning(plan: Plan, warning: str) -> Plan:
    logger.warning("%s", warning)
    return replace(plan, warnings=(*plan.warnings, warning))


def make_plan(
    model: nn.Module,
    policy: Policy | None = None,
    *,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    mode: str = AUTO,
    strict: bool = False,
) -> Plan:
    """Probe ``model`` and decide, conv by conv, what the policy converts in ``mode``.

    Args:
        model: Any module containing ``nn.Conv2d`` layers; not modified.
        policy: Defaults to ``Policy()`` (alpha 0.25 with the automatic guards).
        input_shape: ``(C, H, W)`` of one input sample for the shape probe.
        mode: ``"graph"`` (pairs flow between layers), ``"layer"`` (self-contained blocks)
            or ``"auto"`` (default): graph mode, else layer mode where graph mode cannot
            plan the model (it does not trace); the plan's ``mode`` is the one used and
            its ``warnings`` say why it fell back.
        strict: Make a rule that matches no conv an error instead of a warning.

    Example:
        >>> plan = make_plan(torchvision.models.resnet18(), Policy(alpha=0.5))  # doctest: +SKIP
        >>> plan.layers[0].reason                                                # doctest: +SKIP
        'stem: 3 input channels < min_channels 16'

    Raises:
        InputError: unknown mode, or the model does not run at ``input_shape``.
        PolicyError: with ``strict``, a rule matches no conv.
        ConversionError: graph mode cannot plan the model (it does not trace).
    """
    wanted = "graph" if mode == AUTO else mode
    refine = rewriter(wanted).refine  # an unknown mode fails before the probe
    # The policy's own decisions, probed once (its warnings logged once) for either mode.
    plan = policy_plan(model, policy if policy is not None else Policy(), input_shape=input_shape, mode=wanted, strict=strict)
    if refine is None:
        return plan
    try:
        layers, boundaries = refine(model, plan.layers, input_shape)
    except ConversionError as err:
        if mode != AUTO:
            raise
        return _with_warning(_layer_plan(model, plan), _fallback_warning(err))
    return replace(plan, layers=layers, boundaries=boundaries)


def _layer_plan(model: nn.Module, plan: Plan) -> Plan:
    """``plan``'s policy decisions refined for layer mode."""
    refine = rewriter("layer").refine
    policy_layers = replace(plan, mode="layer")
    if refine is None:
        return policy_layers
    layers, boundaries = refine(model, plan.layers, plan.input_shape)
    return replace(policy_layers, layers=layers, boundaries=boundaries)


def convert(
    model: nn.Module,
    policy: Policy | None = None,
    *,
    alpha: float | None = None,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    mode: str = AUTO,
    strict: bool = False,
    inplace: bool = False,
    check: bool = True,
) -> tuple[nn.Module, Plan]:
    """Replace the convs the policy selects with octave convs, weights copied across.

    Args:
        model: The model to convert. Left untouched unless ``inplace``.
        policy: Which convs, at which alpha; ``Policy()`` by default.
        alpha: Overrides the policy's global alpha (rules keep their own).
        input_shape: ``(C, H, W)`` of one sample, for the shape probe and check.
        mode: ``"graph"``: pairs flow between layers through an ``fx.GraphModule``, as
            in the paper's networks; ``"layer"``: each conv becomes a self-contained
            tensor-in/tensor-out block, for models ``torch.fx`` cannot trace; ``"auto"``
            (default): graph mode, and layer mode where graph mode fails to plan, rewrite
            or pass the check (not retried with ``inplace``). The returned plan's ``mode``
            is the one used; its ``warnings`` say why it fell back.
        strict: A policy rule that matches no conv is an error.
        inplace: Modify ``model`` itself instead of a deep copy.
        check: Run the converted model once and compare its output shapes.

    Returns:
        The converted model and the plan that was applied.

    Example:
        >>> import torchvision
        >>> converted, plan = convert(torchvision.models.resnet18(), alpha=0.25)
        >>> len(plan.octave_layers) > 0
        True

    Raises:
        InputError: the model does not run at ``input_shape``.
        PolicyError: invalid alpha, or with ``strict`` a rule matching nothing.
        ConversionError: the rewrite or its check failed.
    """
    policy = policy if policy is not None else Policy()
    if alpha is not None:
        policy = policy.with_alpha(alpha)
    if mode == AUTO:
        plan = make_plan(model, policy, input_shape=input_shape, mode=AUTO, strict=strict)  # graph, else layer
        try:
            return _apply(model, plan, inplace=inplace, check=check), plan
        except ConversionError as err:
            if plan.mode != "graph" or inplace:
                raise  # layer mode failed too, or the model itself may be half rewritten
            layer_plan = make_plan(model, policy, input_shape=input_shape, mode="layer", strict=strict)
            layer_plan = _with_warning(layer_plan, _fallback_warning(err))
            return _apply(model, layer_plan, inplace=inplace, check=check), layer_plan
    plan = make_plan(model, policy, input_shape=input_shape, mode=mode, strict=strict)
    return _apply(model, plan, inplace=inplace, check=check), plan


def _apply(model: nn.Module, plan: Plan, *, inplace: bool, check: bool) -> nn.Module:
    """Apply ``plan`` to ``model`` (or a deep copy) and verify it."""
    target = apply_plan(model if inplace else copy.deepcopy(model), plan)
    if check:
        verify(target, plan)
    logger.info("converted %d of %d convs (%s mode)", len(plan.octave_layers), len(plan.layers), plan.mode)
    return target


def _finite(value: Any) -> bool:
    return all(not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in output_tensors(value))


def verify(converted: nn.Module, plan: Plan) -> None:
    """Run the converted model once; its outputs must have the original shapes and be finite.

    Raises:
        ConversionError: the forward pass fails, the shapes differ, or values are not finite.
    """
    try:
        with eval_mode(converted), torch.no_grad():
            output = converted(example_input(plan.input_shape))
    except Exception as err:  # noqa: BLE001 - report any failure of the rewritten model
        raise ConversionError(f"the converted model fails to run: {type(err).__name__}: {err}") from err
    signature = output_signature(output)
    if plan.output is not None and signature != plan.output:
        raise ConversionError(f"the converted model's output shapes {signature} differ from the original {plan.output}")
    if not _finite(output):
        raise ConversionError("the converted model produces non-finite values")
