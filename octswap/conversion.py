"""The conversion entry point: plan, copy, rewrite, verify."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from octswap.errors import ConversionError, InputError, UntraceableError, one_line
from octswap.eval_mode import eval_mode
from octswap.layers.block import OctaveConvBlock
from octswap.layers.conv import OctaveConv2d
from octswap.layers.transfer import TRANSFERS, resample_paths
from octswap.plan import Plan, example_input, output_signature, output_tensors, policy_plan, same_signature
from octswap.policy import Policy
from octswap.rewrite import apply_plan, rewriter
from octswap.rewrite.regions.rewriter import LAYER_MODE

__all__ = ["AUTO", "MODES", "convert", "make_plan", "verify"]

logger = logging.getLogger(__name__)

#: Graph mode where ``torch.fx`` can rewrite the model, else graph mode region by region
#: (the submodules that trace), else layer mode (with one warning).
AUTO = "auto"
#: The modes :func:`convert` and :func:`make_plan` take.
MODES = (AUTO, "graph", "regions", "layer")
#: What auto mode tries, in order.
_AUTO_ORDER = ("graph", "regions", "layer")


def _fallback_warning(err: ConversionError, mode: str) -> str:
    if mode == "graph":
        why = f"it does not trace with torch.fx: {err.detail}" if isinstance(err, UntraceableError) else one_line(err)
        return f"graph mode cannot convert this model as a whole ({why})"
    return f"{mode} mode cannot convert this model ({one_line(err)})"


def _with_warning(plan: Plan, warning: str) -> Plan:
    logger.warning("%s", warning)
    return replace(plan, warnings=(*plan.warnings, warning))


def _refined(model: nn.Module, plan: Plan, mode: str) -> Plan:
    refine = rewriter(mode).refine
    plan = replace(plan, mode=mode)
    return refine(model, plan) if refine is not None else plan


def _auto_plan(model: nn.Module, policy_decisions: Plan, modes: tuple[str, ...], notes: tuple[str, ...] = ()) -> Plan:
    """The first of ``modes`` that can plan the model (layer mode always can); ``notes`` say
    why earlier modes were left. Reasons for leaving a mode are logged."""
    for mode in modes:
        try:
            plan = _refined(model, policy_decisions, mode)
        except ConversionError as err:
            notes = (*notes, _fallback_warning(err, mode))
            logger.info("%s", notes[-1])
            continue
        return _summarised(plan, notes)
    raise AssertionError("layer mode plans every model")  # pragma: no cover - layer mode has no refine step


def _summarised(plan: Plan, notes: tuple[str, ...]) -> Plan:
    """``plan`` with one warning saying which mode auto chose and why (none for graph mode)."""
    if not notes:
        return plan
    if plan.mode == "regions":
        outside = sum(d.action == "octave" and d.reason.startswith(LAYER_MODE) for d in plan.layers)
        extra = f"; {outside} converted convs outside the regions use layer mode" if outside else ""
        count = f"{len(plan.regions)} region{'s' if len(plan.regions) != 1 else ''}"
        return _with_warning(plan, f"{notes[0]}; graph mode region by region ({count}){extra}")
    return _with_warning(plan, f"{'; '.join(notes)}; using layer mode instead")


def _check_arguments(mode: str, input_shape: Any) -> None:
    """Refuse an unknown mode or a malformed input shape before the probe (InputError)."""
    if mode not in MODES:
        raise InputError(f"unknown conversion mode {mode!r} (known: {', '.join(MODES)})")
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(isinstance(v, int) and v > 0 for v in input_shape)):  # fmt: skip
        raise InputError(f"input_shape must be (C, H, W) of positive integers, got {input_shape!r}")


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
        mode: ``"graph"`` (pairs flow between layers through the whole model),
            ``"regions"`` (graph mode in each largest submodule that traces, layer mode
            for convs outside them), ``"layer"`` (self-contained blocks) or ``"auto"``
            (default): the first of graph, regions, layer that can plan the model; the
            plan's ``mode`` is the one used and its ``warnings`` say why it fell back.
        strict: Make a rule that matches no conv an error instead of a warning.

    Example:
        >>> plan = make_plan(torchvision.models.resnet18(), Policy(alpha=0.5))  # doctest: +SKIP
        >>> plan.layers[0].reason                                                # doctest: +SKIP
        'stem: 3 input channels < min_channels 16'

    Raises:
        InputError: unknown mode, or the model does not run at ``input_shape``.
        PolicyError: with ``strict``, a rule matches no conv.
        ConversionError: graph mode cannot plan the model (it does not trace); regions
            mode finds no part holding a conv that traces.
    """
    _check_arguments(mode, input_shape)
    # The policy's own decisions, probed once (its warnings logged once) for either mode.
    plan = policy_plan(model, policy if policy is not None else Policy(), input_shape=input_shape,
                       mode="layer", strict=strict)  # fmt: skip
    if mode == AUTO:
        return _auto_plan(model, plan, _AUTO_ORDER)
    return _refined(model, plan, mode)


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
    transfer: str = "resampled",
) -> tuple[nn.Module, Plan]:
    """Replace the convs the policy selects with octave convs, weights copied across.

    Args:
        model: The model to convert. Left untouched unless ``inplace``.
        policy: Which convs, at which alpha; ``Policy()`` by default.
        alpha: Overrides the policy's global alpha (rules keep their own).
        input_shape: ``(C, H, W)`` of one sample, for the shape probe and check.
        mode: ``"graph"``: pairs flow between layers through an ``fx.GraphModule``, as
            in the paper's networks; ``"regions"``: the same inside each largest submodule
            that traces (an encoder, a decoder, a detector's backbone and heads), merged at
            its outputs, layer mode for convs outside them; ``"layer"``: each conv becomes a
            self-contained tensor-in/tensor-out block; ``"auto"`` (default): the first of
            graph, regions, layer that plans, rewrites and passes the check (not retried
            with ``inplace``). The returned plan's ``mode`` is the one used; its
            ``warnings`` say why it fell back.
        strict: A policy rule that matches no conv is an error.
        inplace: Modify ``model`` itself instead of a deep copy.
        check: Run the converted model once and compare its output shapes.
        transfer: How the trained kernels fill the octave paths: ``"resampled"`` (default:
            each path that runs at a lower resolution gets the kernel that computes what the
            original does on 2x2-constant maps, :mod:`octswap.layers.transfer`) or
            ``"sliced"`` (its slice of the kernel as it is, as in the paper's code).

    Returns:
        The converted model and the plan that was applied.

    Example:
        >>> import torchvision
        >>> converted, plan = convert(torchvision.models.resnet18(), alpha=0.25)
        >>> len(plan.octave_layers) > 0
        True

    Raises:
        InputError: the model does not run at ``input_shape``, or an unknown ``transfer``.
        PolicyError: invalid alpha, or with ``strict`` a rule matching nothing.
        ConversionError: the rewrite or its check failed.
    """
    if transfer not in TRANSFERS:
        raise InputError(f"transfer must be one of {', '.join(TRANSFERS)}, got {transfer!r}")
    policy = policy if policy is not None else Policy()
    if alpha is not None:
        policy = policy.with_alpha(alpha)
    if mode == AUTO:
        plan = make_plan(model, policy, input_shape=input_shape, mode=AUTO, strict=strict)  # graph, regions, layer
        notes: tuple[str, ...] = ()
        while True:
            try:
                return _apply(model, plan, inplace=inplace, check=check, transfer=transfer), plan
            except ConversionError as err:
                if plan.mode == "layer" or inplace:
                    raise  # layer mode failed too, or the model itself may be half rewritten
                notes = (*notes, _fallback_warning(err, plan.mode))
                rest = _AUTO_ORDER[_AUTO_ORDER.index(plan.mode) + 1 :]
                decisions = policy_plan(model, policy, input_shape=input_shape, mode="layer", strict=strict)
                plan = _auto_plan(model, decisions, rest, notes)
    plan = make_plan(model, policy, input_shape=input_shape, mode=mode, strict=strict)
    return _apply(model, plan, inplace=inplace, check=check, transfer=transfer), plan


def _apply(model: nn.Module, plan: Plan, *, inplace: bool, check: bool, transfer: str) -> nn.Module:
    """Apply ``plan`` to ``model`` (or a deep copy), fill its paths, and verify it."""
    target = apply_plan(model if inplace else copy.deepcopy(model), plan)
    if transfer == "resampled":
        _resample(target, plan)
    if check:
        verify(target, plan)
    logger.info("converted %d of %d convs (%s mode)", len(plan.octave_layers), len(plan.layers), plan.mode)
    return target


def _resample(model: nn.Module, plan: Plan) -> None:
    """Resample the sliced kernels of the octave convs ``plan`` made (and no other: a model's
    own octave convs keep their trained weights)."""
    changed = 0
    for decision in plan.octave_layers:
        module = model.get_submodule(decision.name)
        conv = module.conv if isinstance(module, OctaveConvBlock) else module
        if isinstance(conv, OctaveConv2d):
            changed += resample_paths(conv)
    logger.debug("resampled the kernels of %d low-resolution paths", changed)


def _finite(value: Any) -> bool:
    return all(not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in output_tensors(value))


def verify(converted: nn.Module, plan: Plan) -> None:
    """Run the converted model once; its outputs must have the original shapes and be finite
    (per-image detections may differ in number: :func:`~octswap.plan.same_signature`).

    Raises:
        ConversionError: the forward pass fails, the shapes differ, or values are not finite.
    """
    try:
        with eval_mode(converted), torch.no_grad():
            output = converted(example_input(plan.input_shape))
    except Exception as err:  # noqa: BLE001 - report any failure of the rewritten model
        raise ConversionError(f"the converted model fails to run: {type(err).__name__}: {err}") from err
    signature = output_signature(output)
    if plan.output is not None and not same_signature(signature, plan.output):
        raise ConversionError(f"the converted model's output shapes {signature} differ from the original {plan.output}")
    if not _finite(output):
        raise ConversionError("the converted model produces non-finite values")
