"""``export_model``: one model to one validated file, in a format from :data:`FORMATS`."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import octswap
from octswap.checkpoint import atomic_write
from octswap.errors import ConversionError, ExportValidationError, InputError, OutputExistsError, one_line
from octswap.export.onnx_file import require_onnx, run_onnx, runtime_name, write_onnx
from octswap.export.program import run_program, write_program
from octswap.export.validation import DEFAULT_TOLERANCE, Validation, validate, validation_inputs
from octswap.inference import fold_batchnorm, unwrap_compiled
from octswap.kernels import fused_kernels

__all__ = [
    "FORMATS",
    "ExportFormat",
    "ExportResult",
    "export_model",
    "plan_metadata",
    "reference_model",
]

#: The oldest ONNX opset the ``torch.onnx`` dynamo exporter writes; it silently keeps its
#: own opset when asked for an older one.
MIN_OPSET = 18

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportFormat:
    """How one file format is written, run and checked.

    Attributes:
        name: ``--format`` value.
        suffix: Default file suffix.
        write: ``write(model, example, path, dynamic_axes=, opset=, metadata=)`` -> facts.
        run: ``run(path)`` -> a function from one input to the file's outputs.
        runtime: What runs the file, for messages.
        require: ``require(validate)`` raises :class:`~octswap.errors.MissingExtraError`
            when the packages the format needs (to write, and to validate) are missing;
            called before any work.
    """

    name: str
    suffix: str
    write: Callable[..., dict[str, Any]]
    run: Callable[[Path], Callable[[Tensor], list[Tensor]]]
    runtime: Callable[[], str]
    require: Callable[[bool], None]


def _no_extra(validate: bool) -> None:
    return None


def _require_onnx(validate: bool) -> None:
    require_onnx(*(("onnx", "onnxscript", "onnxruntime") if validate else ("onnx", "onnxscript")))


#: The export formats by name.
FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", ".onnx", write_onnx, run_onnx, runtime_name, _require_onnx),
    "pt2": ExportFormat("pt2", ".pt2", write_program, run_program, lambda: f"torch.export (torch {torch.__version__})",
                        _no_extra),
}  # fmt: skip


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how it checked it."""

    path: Path
    format: str
    input_shape: tuple[int, int, int]
    dynamic_axes: dict[int, str]
    validation: Validation | None
    export_seconds: float
    validation_seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "format": self.format, "input_shape": list(self.input_shape),
            "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()},
            "export_seconds": round(self.export_seconds, 2), "validation_seconds": round(self.validation_seconds, 2),
            **self.details, "validation": None if self.validation is None else self.validation.to_dict(),
        }  # fmt: skip


def reference_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that computes the reference ops: eval mode, float32, BatchNorm
    folded (:func:`octswap.fold_batchnorm`), NCHW weights, outside any ``torch.compile``."""
    target = unwrap_compiled(copy.deepcopy(model)).eval().float()
    target = fold_batchnorm(target, inplace=True)
    return target.to(memory_format=torch.contiguous_format)  # type: ignore[call-arg]


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def plan_metadata(plan: Any, source: Any, report: Mapping[str, Any] | None = None) -> dict[str, str]:
    """octswap's metadata for an exported converted model: where it came from and how it
    was converted (string values: ONNX metadata properties are strings)."""
    layers = plan.layers
    converted = [d.name for d in plan.octave_layers]
    meta = {
        "octswap.source": source.name,
        "octswap.source_kind": source.kind,
        "octswap.weights": source.weights or "",
        "octswap.alpha": f"{plan.policy.alpha:g}",
        "octswap.channel_multiple": str(plan.policy.channel_multiple),
        "octswap.mode": plan.mode,
        "octswap.plan": json.dumps({"convs": len(layers), "converted": len(converted), "octave_layers": converted}),
    }
    if report:
        keys = ("flops_before", "flops_after", "params_before", "params_after", "convention")
        meta["octswap.report"] = json.dumps({k: report[k] for k in keys if k in report})
    return meta


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    format: str = "onnx",
    input_shape: tuple[int, int, int],
    batch: int | None = None,
    dynamic: bool = True,
    opset: int | None = None,
    metadata: Mapping[str, str] | None = None,
    validate_file: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    rewrite: bool = True,
    force: bool = False,
) -> ExportResult:
    """Export ``model`` (converted or not) to ``path`` and check the file before writing it.

    The file holds :func:`reference_model` of ``model``. It is written to a temporary
    file, validated (:func:`octswap.export.validation.validate` against ``model`` in eval
    mode), and only then moved into place; a file that fails validation is not written.

    Args:
        model: Any ``nn.Module`` taking one ``N x C x H x W`` tensor.
        path: Output file.
        format: A key of :data:`FORMATS` (``"onnx"``, ``"pt2"``).
        input_shape: ``(C, H, W)`` of the example input (the probe size).
        batch: Fix the batch dimension at this size; ``None`` keeps it dynamic.
        dynamic: Keep height and width dynamic; ``False`` fixes them at ``input_shape``
            (ONNX Runtime then keeps the octave resampling in its blocked layout without
            session shape overrides).
        opset: ONNX opset (ONNX only; default: the exporter's).
        metadata: Extra metadata (ONNX: ``metadata_props``; pt2: ``octswap.json``).
        validate_file: Run the checks (skip them with ``False``).
        tolerance: Largest accepted relative difference (see :mod:`~octswap.export.validation`).
        rewrite: Apply the ONNX Runtime rewrites (:mod:`octswap.export.rewrites`).
        force: Overwrite an existing file.

    Raises:
        InputError: an unknown format, a bad batch or opset, an unwritable path.
        OutputExistsError: ``path`` exists and ``force`` is false.
        MissingExtraError: the format's packages are missing (``octswap[export]``).
        ConversionError: the exporter cannot capture the model.
        ExportValidationError: the file computes something else (nothing is written).

    Example:
        >>> result = export_model(converted, "oct.onnx", input_shape=(3, 224, 224))    # doctest: +SKIP
        >>> result.validation.checks[1].input_shape                                    # doctest: +SKIP
        (1, 3, 223, 223)
    """
    fmt = FORMATS.get(format)
    if fmt is None:
        raise InputError(f"unknown export format {format!r} (known: {', '.join(FORMATS)})")
    if batch is not None and batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    if opset is not None and format != "onnx":
        raise InputError("--opset applies to ONNX files only")
    if opset is not None and opset < MIN_OPSET:
        raise InputError(f"opset {opset} is older than the dynamo exporter writes (use {MIN_OPSET} or newer)")
    if not 0 < tolerance:
        raise InputError(f"tolerance must be positive, got {tolerance}")
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target} is a directory")
    if target.exists() and not force:  # before the work, not after
        raise OutputExistsError(f"{target} exists; pass --force to overwrite it")
    fmt.require(validate_file)
    axes = {} if batch is not None else {0: "batch"}
    if dynamic:
        axes.update({2: "height", 3: "width"})
    meta = {"octswap.version": octswap.__version__, "octswap.input_shape": json.dumps(list(input_shape)),
            "octswap.dynamic_axes": json.dumps({str(k): v for k, v in axes.items()}), **(metadata or {})}  # fmt: skip
    reference = reference_model(model)
    checked = unwrap_compiled(copy.deepcopy(model)).eval()
    example = validation_inputs(input_shape, batch=batch, dynamic=False)[0]
    timings: dict[str, float] = {}
    facts: dict[str, Any] = {}
    outcome: list[Validation | None] = [None]

    def write(tmp: Path) -> None:
        start = time.perf_counter()
        extra = {"rewrite": rewrite} if format == "onnx" else {}
        try:
            with fused_kernels(False):
                facts.update(fmt.write(reference, example, tmp, dynamic_axes=axes, opset=opset, metadata=meta, **extra))
        except (RuntimeError, ValueError, TypeError, NotImplementedError, AssertionError) as err:
            # The exporters raise their own subclasses of these for code they cannot capture,
            # wrapping the cause in a generic "failed at step 1/3" error: name the cause.
            root = _root_cause(err)
            hint = " (if the model fixes its input size, --static exports it)" if dynamic else ""
            raise ConversionError(f"{fmt.name} export failed: {type(root).__name__}: {one_line(root)}{hint}") from err
        if opset is not None and facts.get("opset") not in (None, opset):
            raise ConversionError(f"the exporter wrote opset {facts['opset']}, not the {opset} asked for")
        timings["export"] = time.perf_counter() - start
        if not validate_file:
            return
        start = time.perf_counter()
        inputs = validation_inputs(input_shape, batch=batch, dynamic=dynamic)
        with fused_kernels(False):
            result = validate(checked, fmt.run(tmp), inputs, tolerance=tolerance, runtime=fmt.runtime())
        timings["validation"] = time.perf_counter() - start
        outcome[0] = result
        if not result.passed:
            raise ExportValidationError(f"validation failed: {result.failure()}; {target} was not written "
                                        "(--no-validate writes it unchecked)")  # fmt: skip

    written = atomic_write(target, write, force=force, suffix=".tmp" + fmt.suffix)
    return ExportResult(written, format, tuple(input_shape), axes, outcome[0], timings.get("export", 0.0),  # type: ignore[arg-type]
                        timings.get("validation", 0.0), facts)  # fmt: skip
