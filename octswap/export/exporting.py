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
from octswap.layers import fused_kernels

__all__ = [
    "FORMATS",
    "ExportFormat",
    "ExportResult",
    "check_export_options",
    "export_model",
    "newest_opset",
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


def newest_opset() -> int:
    """The newest ONNX opset the installed ``onnx`` package knows (``onnx.defs.onnx_opset_version()``):
    the exporter silently writes its own default for any newer one asked for."""
    try:
        import onnx
    except ImportError:  # the export extra is missing: require_onnx says so, in one line, later
        return MIN_OPSET
    return int(onnx.defs.onnx_opset_version())


def check_export_options(format: str, *, batch: int | None = None, opset: int | None = None,
                         tolerance: float = DEFAULT_TOLERANCE) -> ExportFormat:
    """Check :func:`export_model`'s options before any work (a conversion, an export).

    Returns:
        The format's :class:`ExportFormat`.

    Raises:
        InputError: an unknown format, a batch below 1, an opset for a non-ONNX format or
            outside ``MIN_OPSET`` .. :func:`newest_opset`, a tolerance not above 0.
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
    if opset is not None and opset > newest_opset():
        raise InputError(f"opset {opset} is newer than the installed onnx package writes "
                         f"(use {MIN_OPSET} to {newest_opset()})")  # fmt: skip
    if not 0 < tolerance:
        raise InputError(f"tolerance must be positive, got {tolerance}")
    return fmt


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    format: str = "onnx",
    input_shape: tuple[int, int, int],
    batch: int | None = None,
    dynamic: bool = False,
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
        dynamic: Keep height and width dynamic; ``False`` (the default) fixes them at
            ``input_shape``: ONNX Runtime then keeps the octave resampling in its blocked
            layout in any session, where a dynamic file is that fast only in a session
            that fixes the free dimensions (README, "Export").
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
    fmt = check_export_options(format, batch=batch, opset=opset, tolerance=tolerance)
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
    job = _ExportJob(fmt, reference_model(model), unwrap_compiled(copy.deepcopy(model)).eval(), tuple(input_shape),
                     batch, axes, opset, meta, rewrite, validate_file, tolerance, target)  # fmt: skip
    written = atomic_write(target, job, force=force, suffix=".tmp" + fmt.suffix)
    return ExportResult(written, format, tuple(input_shape), axes, job.validation, job.seconds.get("export", 0.0),
                        job.seconds.get("validation", 0.0), job.facts)  # fmt: skip


@dataclass
class _ExportJob:
    """Writes one file (into the temporary path :func:`~octswap.checkpoint.atomic_write`
    gives it), then validates it; what it learnt stays on the job."""

    fmt: ExportFormat
    reference: nn.Module  # what the file holds
    checked: nn.Module  # what the file is compared with
    input_shape: tuple[int, int, int]
    batch: int | None
    axes: dict[int, str]
    opset: int | None
    metadata: dict[str, str]
    rewrite: bool
    validate: bool
    tolerance: float
    target: Path
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    validation: Validation | None = None

    @property
    def dynamic(self) -> bool:
        return 2 in self.axes

    def __call__(self, tmp: Path) -> None:
        self.write(tmp)
        if self.validate:
            self.check(tmp)

    def write(self, tmp: Path) -> None:
        start = time.perf_counter()
        extra = {"rewrite": self.rewrite} if self.fmt.name == "onnx" else {}
        example = validation_inputs(self.input_shape, batch=self.batch, dynamic=False)[0]
        try:
            with fused_kernels(False):
                self.facts.update(self.fmt.write(self.reference, example, tmp, dynamic_axes=self.axes,
                                                 opset=self.opset, metadata=self.metadata, **extra))  # fmt: skip
        except (RuntimeError, ValueError, TypeError, NotImplementedError, AssertionError) as err:
            # The exporters raise their own subclasses of these for code they cannot capture,
            # wrapping the cause in a generic "failed at step 1/3" error: name the cause.
            root = _root_cause(err)
            hint = " (if the model fixes its input size, --static exports it)" if self.dynamic else ""
            cause = f"{type(root).__name__}: {one_line(root)}"
            raise ConversionError(f"{self.fmt.name} export failed: {cause}{hint}") from err
        if self.opset is not None and self.facts.get("opset") not in (None, self.opset):
            raise ConversionError(f"the exporter wrote opset {self.facts['opset']}, not the {self.opset} asked for")
        self.seconds["export"] = time.perf_counter() - start

    def check(self, tmp: Path) -> None:
        start = time.perf_counter()
        inputs = validation_inputs(self.input_shape, batch=self.batch, dynamic=self.dynamic)
        with fused_kernels(False):
            result = validate(self.checked, self.fmt.run(tmp), inputs, tolerance=self.tolerance,
                              runtime=self.fmt.runtime())  # fmt: skip
        self.seconds["validation"] = time.perf_counter() - start
        self.validation = result
        if not result.passed:
            raise ExportValidationError(f"validation failed: {result.failure()}; {self.target} was not written "
                                        "(--no-validate writes it unchecked)")  # fmt: skip
