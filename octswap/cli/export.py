"""``octswap export``: a converted model as a file that runs without octswap (ONNX, or a
``torch.export`` program), validated against PyTorch before it is written."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from octswap.cli.options import (AllowImportOpt, AlphaOpt, ChannelMultipleOpt, ForceOpt, InputSizeOpt, Mode, ModeOpt,
                                 ModelArgOpt, PolicyOpt, WeightsOpt)
from octswap.cli.output import Format, Output, TableView, emit, note
from octswap.cli.resolve import choice, convert, default_output, is_checkpoint, load, refuse_with_checkpoint
from octswap.errors import InputError
from octswap.shapes import parse_input_shape

if TYPE_CHECKING:
    from octswap.export.exporting import ExportResult
    from octswap.export.validation import Validation

__all__ = ["command"]


class FileFormat(str, Enum):
    onnx = "onnx"
    pt2 = "pt2"


class ExportOutputFormat(str, Enum):
    """``--format``: how the result is printed; ``onnx``/``pt2`` are the old spelling of ``--to``."""

    table = "table"
    json = "json"
    markdown = "markdown"
    csv = "csv"
    onnx = "onnx"
    pt2 = "pt2"


def _file_format(to: FileFormat | None, fmt: ExportOutputFormat, output: Path | None) -> FileFormat:
    """``--to``, else the output's suffix, else ONNX; ``--format onnx|pt2`` still works, with a warning."""
    from octswap.export import FORMATS

    if fmt.value in FileFormat.__members__:
        note(f"warning: --format {fmt.value} is deprecated for the file format; use --to {fmt.value} "
             "(--format now chooses how the result is printed)")
        if to is not None and to.value != fmt.value:
            raise InputError(f"--format {fmt.value} and --to {to.value} disagree")
        to = FileFormat(fmt.value)
    implied = next((name for name, f in FORMATS.items() if output is not None and f.suffix == output.suffix), None)
    if to is None:
        return FileFormat(implied or "onnx")
    if implied is not None and implied != to.value:
        raise InputError(f"--to {to.value} does not match the output name {output} (a {implied} suffix)")
    return to


def validation_view(validation: Validation) -> TableView:
    rows = [["x".join(map(str, c.input_shape)),
             "" if c.max_abs is None else f"{c.max_abs:.2g}",
             "" if c.max_rel is None else f"{c.max_rel:.2g}",
             "" if c.top1_agreement is None else f"{c.top1_agreement:.0%}",
             c.note or ("ok" if c.passed else "FAILED")]
            for c in validation.checks]
    title = f"validation: {validation.runtime} vs PyTorch (tolerance {validation.tolerance:g}, relative)"
    return TableView(["input", "max abs diff", "max rel diff", "top-1 agreement", "result"], rows, title=title,
                     align="rrrrr")


def _written(result: ExportResult, file_format: FileFormat) -> str:
    size = result.path.stat().st_size / 2**20
    axes = ", ".join(result.dynamic_axes.values()) or "none"
    checked = "not validated (--no-validate)"
    if result.validation is not None:
        worst = max((c.max_rel for c in result.validation.checks if c.max_rel is not None), default=0.0)
        ran = sum(not c.skipped for c in result.validation.checks)
        checked = (f"validated with {result.validation.runtime} at {ran} input shape(s), "
                   f"max relative difference {worst:.2g}")
    return (f"wrote {result.path} ({size:.1f} MiB, {file_format.value}, dynamic axes: {axes}) in "
            f"{result.export_seconds:.0f} s; {checked}")


def command(
    target: Annotated[str, typer.Argument(
        help="A checkpoint from `octswap convert`, or a model name / import path to convert first.")],
    to: Annotated[Optional[FileFormat], typer.Option(
        "--to", help="File format: onnx (ONNX Runtime and other ONNX runtimes) or pt2 (a torch.export program) "
        "[default: from the output's suffix, else onnx].")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output file [default: the checkpoint's name, or <model>-oct<alpha>, with .onnx or "
        ".pt2].")] = None,
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    mode: ModeOpt = Mode.auto,
    model_arg: ModelArgOpt = None,
    opset: Annotated[Optional[int], typer.Option(
        "--opset", help="ONNX opset, 18 up to the newest the installed onnx package knows [default: the "
        "exporter's].")] = None,
    dynamic: Annotated[bool, typer.Option(
        "--dynamic/--static", help="Dynamic height and width, or fixed at the input size (the default: ONNX Runtime "
        "then runs the octave resampling in its fast layout in any session).")] = False,
    batch: Annotated[Optional[int], typer.Option(
        "--batch", "-b", min=1, help="Fix the batch size (ONNX Runtime runs an octave model faster with a fixed batch) "
        "[default: dynamic].")] = None,
    validate: Annotated[bool, typer.Option(
        "--validate/--no-validate", help="Run the file at two input shapes (with --dynamic, one of the other "
        "parity) and compare with PyTorch before writing it.")] = True,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, help="Largest accepted max|exported - PyTorch| / max|PyTorch|.")] = 1e-4,
    force: ForceOpt = False,
    fmt: Annotated[ExportOutputFormat, typer.Option(
        "--format", "-f", help="Output format (onnx/pt2 here: deprecated spelling of --to).")
    ] = ExportOutputFormat.table,
    json_out: Annotated[bool, typer.Option("--json", hidden=True, help="Deprecated: -f json.")] = False,
    allow_import: AllowImportOpt = False,
) -> None:
    """Export a converted model as a file that runs without octswap, validated against PyTorch."""
    import octswap
    from octswap.export import FORMATS, check_export_options, export_model
    from octswap.export.exporting import plan_metadata

    file_format = _file_format(to, fmt, output)
    check_export_options(file_format.value, batch=batch, opset=opset, tolerance=tolerance)  # before any conversion
    if json_out:
        note("warning: --json is deprecated; use -f json")
    printed = Format.json if json_out else Format(fmt.value) if fmt.value in Format.__members__ else Format.table
    suffix = FORMATS[file_format.value].suffix
    options = choice(alpha=alpha, channel_multiple=channel_multiple, policy=policy, weights=weights,
                     model_arg=model_arg, input_size=input_size, mode=mode)
    if is_checkpoint(target):
        refuse_with_checkpoint(options, keep=("input_size",))
        if output is not None and output.exists() and Path(target).exists() and output.samefile(target):
            raise InputError(f"{output} is the checkpoint being exported; choose another output name")
        ckpt = octswap.read_checkpoint(target)
        model = octswap.load(target, allow_import=allow_import, compile=False)
        shape = parse_input_shape(input_size) if input_size is not None else ckpt.plan.input_shape
        meta = plan_metadata(ckpt.plan, ckpt.source, ckpt.report)
        path = output if output is not None else Path(target).with_suffix(suffix)
    else:
        path = output or default_output(target, options.resolved_policy.alpha).with_suffix(suffix)
        if path.is_file() and not force:  # before the conversion, not after
            raise octswap.OutputExistsError(f"{path} exists; pass --force to overwrite it")
        loaded = load(target, options)
        model, plan = convert(loaded, options)
        shape, meta = loaded.shape, plan_metadata(plan, loaded.source)
    result = export_model(model, path, format=file_format.value, input_shape=shape, batch=batch, dynamic=dynamic,
                          opset=opset, metadata=meta, validate_file=validate, tolerance=tolerance,
                          force=force)
    blocks = [validation_view(result.validation)] if result.validation is not None else []
    emit(Output(result.to_dict(), blocks), printed)
    note(_written(result, file_format))
