"""Check an exported file against the PyTorch model it came from.

The file is run by its runtime on seeded random inputs at the probe size and, when
height and width are dynamic, at a size of the other parity (odd where the probe is
even), which is where octave resampling crops. Each check reports the largest
absolute difference between the outputs, that difference relative to the largest
reference output magnitude (so one tolerance fits logits of any scale) and, for
``N x K`` outputs, the share of samples whose top-1 class agrees.

Example:
    >>> inputs = validation_inputs((3, 32, 32), batch=None, dynamic=True)
    >>> [tuple(x.shape) for x in inputs]
    [(2, 3, 32, 32), (1, 3, 31, 31)]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from octswap.errors import one_line

__all__ = ["DEFAULT_TOLERANCE", "Check", "Validation", "flatten_outputs", "other_parity", "validate", "validation_inputs"]

logger = logging.getLogger(__name__)

#: Largest accepted ``max |exported - reference| / max |reference|``. float32 runtimes
#: order their sums differently from PyTorch; through 50 layers that stays near 1e-6
#: of the output scale (Oct-ResNet-50 in ONNX Runtime: 6e-7 to 8e-7 at 223 and 224).
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Check:
    """One input shape run through the exported file and the PyTorch model.

    Attributes:
        input_shape: ``(N, C, H, W)`` of the input.
        max_abs: Largest absolute difference over all outputs (``None``: not run).
        max_rel: ``max_abs`` / largest absolute reference output.
        top1_agreement: Share of samples with the same arg-max class (first ``N x K``
            output), ``None`` when the model has no such output.
        passed: ``max_rel`` within the tolerance (a skipped check passes).
        note: Why the check was skipped, or what failed.
    """

    input_shape: tuple[int, ...]
    max_abs: float | None
    max_rel: float | None
    top1_agreement: float | None
    passed: bool
    note: str = ""

    @property
    def skipped(self) -> bool:
        return self.max_abs is None and self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape), "max_abs": self.max_abs, "max_rel": self.max_rel,
            "top1_agreement": self.top1_agreement, "passed": self.passed, **({"note": self.note} if self.note else {}),
        }  # fmt: skip


@dataclass(frozen=True)
class Validation:
    """All checks of one exported file."""

    runtime: str
    tolerance: float
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and any(not c.skipped for c in self.checks)

    def failure(self) -> str:
        """One line saying what failed (empty when everything passed)."""
        if self.passed:
            return ""
        for check in self.checks:
            if not check.passed:
                shape = "x".join(map(str, check.input_shape))
                if check.note:
                    return f"at input {shape}: {check.note}"
                return (f"at input {shape} the {self.runtime} output differs from PyTorch's by {check.max_abs:.3g} "
                        f"(relative {check.max_rel:.3g} > tolerance {self.tolerance:g})")  # fmt: skip
        return "no input shape could be checked"

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "tolerance": self.tolerance, "passed": self.passed,
                "checks": [c.to_dict() for c in self.checks]}  # fmt: skip


def other_parity(size: int) -> int:
    """A size of the other parity next to ``size``: one less when even, one more when odd."""
    return size - 1 if size % 2 == 0 else size + 1


def validation_inputs(input_shape: tuple[int, int, int], *, batch: int | None, dynamic: bool) -> list[Tensor]:
    """Seeded inputs: ``(batch or 2, *input_shape)``, then a second shape for whatever the
    file leaves free: with dynamic height/width one at the other parity (batch ``batch or
    1``, so a dynamic batch is exercised too), else with a dynamic batch one of batch 1."""
    gen = torch.Generator().manual_seed(0)
    channels, height, width = input_shape
    inputs = [torch.randn(batch or 2, channels, height, width, generator=gen)]
    if dynamic:
        shape = (batch or 1, channels, other_parity(height), other_parity(width))
        inputs.append(torch.randn(*shape, generator=gen))
    elif batch is None:
        inputs.append(torch.randn(1, channels, height, width, generator=gen))
    return inputs


def flatten_outputs(output: Any) -> list[Tensor]:
    """A model's output as a list of tensors, in the order exporters flatten it
    (tensors; tuples and lists in order; dicts by insertion order).

    Raises:
        TypeError: an output that is none of these.
    """
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in flatten_outputs(item)]
    if isinstance(output, Mapping):
        return [t for item in output.values() for t in flatten_outputs(item)]
    raise TypeError(f"cannot compare a model output of type {type(output).__name__}")


def _compare(reference: Sequence[Tensor], exported: Sequence[Tensor]) -> tuple[float, float, float | None, str]:
    if len(reference) != len(exported):
        return float("inf"), float("inf"), None, f"{len(exported)} outputs, PyTorch gives {len(reference)}"
    max_abs = max_rel = 0.0
    agreement = None
    for ref, got in zip(reference, exported):
        ref = ref.detach().float()
        got = got.detach().float()
        if tuple(ref.shape) != tuple(got.shape):
            return float("inf"), float("inf"), None, f"output of shape {tuple(got.shape)}, PyTorch gives {tuple(ref.shape)}"
        if ref.numel() == 0:
            continue
        diff = float((ref - got).abs().max())
        scale = float(ref.abs().max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
        if agreement is None and ref.dim() == 2 and ref.shape[1] > 1:
            agreement = float((ref.argmax(1) == got.argmax(1)).float().mean())
    return max_abs, max_rel, agreement, ""


def validate(
    reference: nn.Module,
    run: Callable[[Tensor], list[Tensor]],
    inputs: Sequence[Tensor],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    runtime: str,
) -> Validation:
    """Run ``inputs`` through ``reference`` (eval, no grad) and ``run`` and compare.

    An input the PyTorch model itself cannot take (a model built for one size) is
    skipped with a note; at least one input must be checked for the validation to pass.
    An error of the runtime on an input PyTorch accepts fails that check.

    Args:
        reference: The PyTorch model the file was exported from.
        run: Runs one input through the exported file, returning its outputs in order.
        inputs: ``N x C x H x W`` tensors (:func:`validation_inputs`).
        tolerance: Largest accepted relative difference (:data:`DEFAULT_TOLERANCE`).
        runtime: What ran the file, for messages (``"ONNX Runtime 1.23"``).
    """
    checks = []
    for x in inputs:
        shape = tuple(x.shape)
        with torch.no_grad():
            try:
                expected = flatten_outputs(reference(x))
            except (RuntimeError, ValueError, AssertionError) as err:  # the model's own limit, not the export's
                note = f"skipped: the PyTorch model does not run at this size ({one_line(err)})"
                logger.info("validation: input %s %s", "x".join(map(str, shape)), note)
                checks.append(Check(shape, None, None, None, True, note))
                continue
        try:
            got = run(x)
        except Exception as err:  # noqa: BLE001 - any runtime failure is a failed check, reported in one line
            checks.append(Check(shape, None, None, None, False, f"{runtime} failed: {type(err).__name__}: {one_line(err)}"))
            continue
        max_abs, max_rel, agreement, note = _compare(expected, got)
        checks.append(Check(shape, max_abs, max_rel, agreement, max_rel <= tolerance, note))
    return Validation(runtime, tolerance, tuple(checks))
