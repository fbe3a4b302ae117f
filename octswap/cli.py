"""The ``octswap`` command: parse, call the library, format, map errors to exit codes.

Results go to stdout, diagnostics to stderr. Exit codes: 0 success, 1 a failed
conversion or report, 2 bad usage or input. Known errors print one line; add
``--debug`` for the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from octswap import __version__
from octswap.errors import InputError, OctswapError, one_line, printable
from octswap.shapes import parse_input_shape as parse_input_size

if TYPE_CHECKING:
    from octswap.plan import Plan
    from octswap.reporting import Report

# Library modules (torch, torchvision, fvcore) are imported inside the commands, so
# `--help` and `--version` answer at once.

app = typer.Typer(
    name="octswap",
    help="Convert the Conv2d layers of a CNN into Octave Convolutions and report what it saves.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click-style usage errors: a few lines ending in one "Error: ..." line, no boxes.
    rich_markup_mode=None,
)
# Piped output (CI logs, files) gets room for the report's columns instead of 80.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)
logger = logging.getLogger("octswap")


class Mode(str, Enum):
    auto = "auto"
    graph = "graph"
    layer = "layer"


class Runtime(str, Enum):
    pytorch = "pytorch"
    onnxruntime = "onnxruntime"


class ExportFileFormat(str, Enum):
    onnx = "onnx"
    pt2 = "pt2"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    csv = "csv"


# ------------------------------------------------------------------ options
AlphaOpt = Annotated[Optional[float], typer.Option("--alpha", "-a", help="Global low-frequency ratio in [0, 1); overrides the policy's.")]
ChannelMultipleOpt = Annotated[Optional[int], typer.Option("--channel-multiple", min=1, help="Round each split to multiples of N channels on both branches, nearest to alpha (16: ONNX Runtime's fast CPU convs); overrides the policy's.")]
PolicyOpt = Annotated[Optional[Path], typer.Option("--policy", "-p", help="YAML policy file (see configs/).")]
WeightsOpt = Annotated[Optional[str], typer.Option("--weights", "-w", help="State-dict file, or a torchvision weights name already in the local cache.")]
InputSizeOpt = Annotated[Optional[str], typer.Option("--input-size", "-s", help="Probe input: N, HxW or CxHxW [default: a timm model's own input size, else 224].")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
ModelArgOpt = Annotated[Optional[list[str]], typer.Option("--model-arg", "-m", help="Builder argument KEY=VALUE (repeatable), e.g. num_classes=10.")]
ModeOpt = Annotated[Mode, typer.Option("--mode", help="graph: pairs flow between layers (the paper's networks); layer: self-contained blocks, for models fx cannot trace; auto: graph, else layer (one warning says why).")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="A policy rule that matches no conv is an error.")]
LayersOpt = Annotated[bool, typer.Option("--layers/--no-layers", help="Include one row per conv.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
AllowImportOpt = Annotated[bool, typer.Option("--allow-import", help="Let a checkpoint import its model factory.")]
# Latency measurement (bench, report --latency): both models are prepared alike.
BatchOpt = Annotated[str, typer.Option("--batch", "-b", help="Batch sizes, comma-separated.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="Intra-op threads [default: torch's].")]
RoundsOpt = Annotated[int, typer.Option("--rounds", min=1, help="Alternating rounds per model.")]
LayoutOpt = Annotated[bool, typer.Option("--channels-last/--nchw", help="Memory format of both models and their input.")]
FoldOpt = Annotated[bool, typer.Option("--fold-bn/--no-fold-bn", help="Fold BatchNorm into the convs of both models.")]
PrepackOpt = Annotated[
    bool, typer.Option("--prepack/--no-prepack", help="Keep conv weights in oneDNN's layout, made once (both models).")
]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile both models (minutes to start).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, or cuda where a GPU is present.")]
# Real data (report/convert --data, heal): see octswap.data.
DataOpt = Annotated[Optional[Path], typer.Option("--data", "-d", help="ImageFolder-style folder, flat folder of images, or .pt file {'inputs', 'labels'}: measure fidelity on it.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per batch (per process under torchrun).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="Use this many samples (a fixed random subset).")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Normalisation mean, one value or one per channel [default: ImageNet's for 3 channels, else 0].")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Normalisation std, one value or one per channel [default: ImageNet's for 3 channels, else 1].")]
ResizeOpt = Annotated[Optional[int], typer.Option("--resize", min=1, help="Resize the shorter image side to N, then centre-crop [default: resize to the model's HxW].")]
CropOpt = Annotated[Optional[str], typer.Option("--crop", help="Centre-crop size N or HxW after --resize [default: the model's HxW].")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=0, help="DataLoader worker processes [default: 0 for .pt files, else up to 4].")]
CalibrateOpt = Annotated[int, typer.Option("--calibrate-bn", min=0, help="Re-estimate BatchNorm statistics on this many batches of --data (0: off).")]
TeacherWeightsOpt = Annotated[Optional[str], typer.Option("--teacher-weights", help="The original's weights, when not where the checkpoint recorded them.")]

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        out.print(f"octswap {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
    debug: DebugOpt = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output on stderr.")] = 0,
) -> None:
    """Convert CNNs to Octave Convolutions."""
    _state["debug"] = debug
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("octswap: %(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Map known failures to one stderr line and an exit code."""
    debug = debug or _state["debug"]
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except OctswapError as error:
        if debug:
            raise
        err.print(f"octswap: error: {printable(str(error))}", markup=False, highlight=False)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        err.print("octswap: interrupted; nothing was written", highlight=False)
        raise typer.Exit(130) from None
    except (RuntimeError, ValueError, TypeError, AttributeError, NotImplementedError, MemoryError) as error:
        # A failure inside torch or a user's model during conversion: exit 1, one line.
        if debug:
            raise
        message = one_line(error)
        err.print(f"octswap: error: conversion failed: {type(error).__name__}: {printable(message)} (--debug for details)",
                  markup=False, highlight=False)  # fmt: skip
        raise typer.Exit(1) from None


# ------------------------------------------------------------------ parsing
def _input_shape(input_size: str | None, model: Any) -> tuple[int, int, int]:
    """``--input-size`` parsed, or the model's own default (timm's ``pretrained_cfg``, else 224)."""
    if input_size is not None:
        return parse_input_size(input_size)
    from octswap.models import default_input_shape

    return default_input_shape(model)


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--model-arg: expected KEY=VALUE, got {item!r}")
        kwargs[key] = yaml.safe_load(value) if value else None
    return kwargs


def _policy(path: Path | None, alpha: float | None, channel_multiple: int | None) -> Any:
    from octswap.policy import Policy, load_policy

    policy = load_policy(path) if path is not None else Policy()
    policy = policy.with_alpha(alpha) if alpha is not None else policy
    return policy.with_channel_multiple(channel_multiple) if channel_multiple is not None else policy


def _refuse_with_checkpoint(**given: Any) -> None:
    """A checkpoint was converted already: options that choose a model or its conversion
    make no sense with it. One line naming the ones given."""
    named = [f"--{key.replace('_', '-')}" for key, value in given.items() if value is not None and value != []]
    if named:
        verb = "applies" if len(named) == 1 else "apply"
        raise InputError(f"{', '.join(named)} {verb} to a model, not to a checkpoint (it holds its own conversion)")


def _default_output(model: str, alpha: float) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", model.rpartition(":")[2] or model).removesuffix(".py")
    return Path(f"{stem}-oct{alpha:g}.pt")


# ---------------------------------------------------------------- rendering
def _report_table(report: Report, *, layers: bool) -> Table:
    from octswap.reporting import human, percent

    table = Table(title=f"octswap report: {report.model} ({report.mode} mode)", caption=report.convention, title_justify="left")
    for column in ("kind", "name"):
        table.add_column(column)
    for column in ("FLOPs before", "FLOPs after", "change", "params before", "params after"):
        table.add_column(column, justify="right")
    table.add_column("note")
    for row in report.rows(layers=layers):
        style = "bold" if row.kind in ("total", "core") else None
        table.add_row(
            row.kind, row.name, human(row.flops_before), human(row.flops_after), percent(row.flops_change),
            human(row.params_before), human(row.params_after), row.note, style=style,
        )  # fmt: skip
    return table


def _print_report(report: Report, fmt: OutputFormat, *, layers: bool, extra: dict[str, Any] | None = None) -> None:
    if fmt is OutputFormat.json:
        out.print_json(json.dumps({**report.to_dict(), **(extra or {})}))
    elif fmt is OutputFormat.markdown:
        out.print(report.to_markdown(layers=layers), markup=False, highlight=False, end="")
    elif fmt is OutputFormat.csv:
        out.print(report.to_csv(layers=layers), markup=False, highlight=False, end="")
    else:
        out.print(_report_table(report, layers=layers))
        if report.memory_line():
            out.print(report.memory_line(), highlight=False)
        if report.uncounted:
            err.print("uncounted ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(report.uncounted.items())),
                      highlight=False)  # fmt: skip
        if report.fidelity is not None:
            out.print(_fidelity_table(report.fidelity, f"fidelity (converted vs original) on {report.fidelity.data}"))
        else:
            from octswap.reporting import NOT_MEASURED

            out.print(NOT_MEASURED + ".", highlight=False, markup=False)


def _latency_table(results: list[Any], flops_ratio: float) -> Table:
    table = Table(title="latency (median of interleaved rounds, IQR in brackets)", title_justify="left",
                  caption="ratio = converted / original; below 1 the converted model is faster")  # fmt: skip
    for column in ("batch", "threads", "prepared", "original", "converted", "latency ratio", "FLOPs ratio",
                   "peak memory ratio"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in results:
        memory = r.memory_ratio
        table.add_row(
            str(r.batch), str(r.threads), _prepared(r),
            f"{r.original.median * 1e3:.1f} ms ({r.original.iqr * 1e3:.1f})",
            f"{r.converted.median * 1e3:.1f} ms ({r.converted.iqr * 1e3:.1f})",
            f"{r.ratio:.2f}", f"{flops_ratio:.2f}", "" if memory is None else f"{memory:.2f}",
        )  # fmt: skip
    return table


def _prepared(result: Any) -> str:
    o = result.options
    if result.runtime != "pytorch":
        return f"{result.device}, {result.runtime} ({result.export}, BN folded)"
    parts = [result.device, "channels-last" if o.channels_last else "NCHW"]
    parts += ["BN folded"] * o.fold_bn + ["packed"] * o.prepack + ["compiled"] * o.compile
    return ", ".join(parts)


def _latency_text(results: list[Any], flops_ratio: float, fmt: OutputFormat) -> str:
    """CSV or Markdown rows, one per batch size."""
    rows = [{**r.to_dict(), "flops_ratio": round(flops_ratio, 6)} for r in results]
    columns = list(rows[0])
    if fmt is OutputFormat.csv:
        return ",".join(columns) + "\n" + "".join(",".join(str(r[c]) for c in columns) + "\n" for r in rows)
    text = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return text + "".join("| " + " | ".join(str(r[c]) for c in columns) + " |\n" for r in rows)


def _is_checkpoint(target: str) -> bool:
    return Path(target).is_file() or (":" not in target and Path(target).suffix in (".pt", ".pth"))


def _from_checkpoint(path: str, allow_import: bool) -> tuple[Any, Any, Any]:
    """(original, converted, checkpoint); the original is folded like the checkpoint was, for fair counts."""
    import octswap

    ckpt = octswap.read_checkpoint(path)
    converted = octswap.load(path, allow_import=allow_import, compile=False)
    original = ckpt.build_original()
    if ckpt.inference is not None and ckpt.inference.fold_bn:
        original = octswap.fold_batchnorm(original.eval())
    return original, converted, ckpt


def _measure(original: Any, converted: Any, shape: tuple[int, int, int], recorded: Any, *,
             batches: tuple[int, ...], threads: int | None, rounds: int, channels_last: bool, fold_bn: bool,
             prepack: bool, compile_: bool, device: str) -> list[Any]:  # fmt: skip
    """Time both models prepared alike; what a checkpoint was saved with also applies to the original."""
    from octswap.inference import InferenceOptions
    from octswap.latency import measure_latency

    if recorded is not None and recorded.channels_last and not channels_last:
        raise InputError("this checkpoint was saved channels-last; --nchw cannot undo that (drop --nchw)")
    # A folded checkpoint has no BatchNorm left: compare it with a folded original.
    fold = fold_bn or (recorded is not None and recorded.fold_bn)
    options = InferenceOptions(fold_bn=fold, channels_last=channels_last, prepack=prepack, compile=compile_)
    return measure_latency(original, converted, shape, batches=batches, threads=threads, options=options,
                           device=device, rounds=rounds)  # fmt: skip


def _parse_batches(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--batch: expected positive whole numbers separated by commas, got {text!r}")
    return tuple(int(p) for p in parts)


def _preprocessing(mean: str | None, std: str | None, resize: int | None, crop: str | None) -> Any:
    """A Preprocessing when any option was given, else None (the model's own transforms)."""
    from octswap.data import Preprocessing, parse_floats

    if mean is None and std is None and resize is None and crop is None:
        return None
    crop_size = None
    if crop is not None:
        parts = crop.lower().split("x")
        if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in (1, 2):
            raise InputError(f"--crop: expected N or HxW with positive numbers, got {crop!r}")
        crop_size = (int(parts[0]), int(parts[-1]))
    return Preprocessing(mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), resize=resize, crop=crop_size)


def _open(path: Path, shape: tuple[int, int, int], name: str | None, weights: str | None, prep: Any,
          limit: int | None) -> Any:  # fmt: skip
    from octswap.data import choose_transform, open_data

    transform = None
    if not path.is_file():  # images: the model's own preprocessing unless options say otherwise
        transform = choose_transform(shape, model_name=name, weights=weights, preprocessing=prep)
    return open_data(path, input_shape=shape, transform=transform, limit=limit)


def _fidelity(original: Any, converted: Any, data: Any, *, batch_size: int, workers: int | None,
              stages: list[str]) -> Any:  # fmt: skip
    from octswap.data import make_loader
    from octswap.fidelity import measure_fidelity

    loader = make_loader(data, batch_size=batch_size, workers=workers)
    return measure_fidelity(original, converted, loader, stages=stages, data=data.describe())


def _fidelity_table(fidelity: Any, title: str) -> Table:
    table = Table("metric", "value", title=title, title_justify="left")
    for metric, value in fidelity.rows():
        table.add_row(metric, value)
    return table


def _stages(report: Report) -> list[str]:
    return [r.name for r in report.stages if r.name != "(outside stages)"]


def _warn_untrained(weights: str | None, name: str) -> None:
    if weights is None:
        err.print(f"note: {name} has random weights (no --weights); the fidelity of an untrained model says little",
                  highlight=False, markup=False)  # fmt: skip


def _teacher(ckpt: Any, weights: str | None, allow_import: bool) -> Any:
    from octswap.healing import load_teacher

    return load_teacher(ckpt, weights=weights, allow_import=allow_import)


def _plan_rows(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "name": d.name, "action": d.action, "alpha_in": d.alpha_in, "alpha_out": d.alpha_out,
            "in_channels": d.site.in_channels, "out_channels": d.site.out_channels,
            "in_low": d.in_low, "out_low": d.out_low, "kind": d.site.kind,
            "kernel": "x".join(map(str, d.site.kernel_size)), "stride": d.site.stride[0],
            "output_size": "x".join(map(str, d.site.output_size)) if d.site.output_size else "",
            "reason": d.reason,
        }  # fmt: skip
        for d in plan.layers
    ]


def _print_plan(plan: Plan, fmt: OutputFormat, model: str) -> None:
    rows = _plan_rows(plan)
    if fmt is OutputFormat.json:
        out.print_json(json.dumps({"model": model, **plan.to_dict()}))
        return
    columns = ["name", "action", "kind", "kernel", "stride", "in_channels", "out_channels", "output_size",
               "alpha_in", "alpha_out", "in_low", "out_low", "reason"]  # fmt: skip
    if fmt is OutputFormat.csv:
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        out.print(buffer.getvalue(), markup=False, highlight=False, end="")
        return
    if fmt is OutputFormat.markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in columns) + " |" for r in rows]
        if plan.boundaries:
            lines += ["", "| boundary | after | before | reason |", "|---|---|---|---|"]
            lines += [f"| {b['kind']} | {b['after']} | {b['before']} | {b['reason']} |" for b in plan.boundaries]
        out.print("\n".join(lines), markup=False, highlight=False)
        return
    table = Table(title=f"octswap plan: {model} ({len(plan.octave_layers)} of {len(plan.layers)} convs converted, "
                        f"{plan.mode} mode)",
                  title_justify="left")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right" if column not in ("name", "action", "kind", "reason") else "left")
    for r in rows:
        table.add_row(*(str(r[c]) for c in columns), style=None if r["action"] == "octave" else "dim")
    out.print(table)
    if plan.boundaries:
        merges = Table("boundary", "after", "before", "reason", title="inserted merges and splits", title_justify="left")
        for b in plan.boundaries:
            merges.add_row(b["kind"], b["after"], b["before"], b["reason"])
        out.print(merges)


# ----------------------------------------------------------------- commands
@app.command()
def convert(
    model: Annotated[str, typer.Argument(help="torchvision name (resnet50) or package.module:factory.")],
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Checkpoint path [default: <model>-oct<alpha>.pt].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    fmt: FormatOpt = OutputFormat.table,
    model_arg: ModelArgOpt = None,
    mode: ModeOpt = Mode.auto,
    strict: StrictOpt = False,
    layers: LayersOpt = True,
    optimize: Annotated[bool, typer.Option("--optimize-for-inference", help="Save with BatchNorm folded into the convs, channels-last and packed weights (recorded; load rebuilds it).")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="Record that loading should torch.compile the model.")] = False,
    data: DataOpt = None,
    calibrate_bn: CalibrateOpt = 0,
    batch_size: BatchSizeOpt = 64,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    workers: WorkersOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Convert MODEL, print the cost report (and with --data its fidelity), write a checkpoint."""
    import octswap
    from octswap.reporting import percent

    with _errors(debug):
        kwargs = parse_model_args(model_arg)
        pol = _policy(policy, alpha, channel_multiple)
        target = output if output is not None else _default_output(model, pol.alpha)
        if target.exists() and not force:  # fail before the work, not after
            raise octswap.OutputExistsError(f"{target} exists; pass --force to overwrite it")
        if calibrate_bn and data is None:
            raise InputError("--calibrate-bn needs --data (the samples to re-estimate on)")
        prep = _preprocessing(mean, std, resize, crop)
        original, source = octswap.load_model(model, weights=weights, kwargs=kwargs)
        shape = _input_shape(input_size, original)
        samples = _open(data, shape, model, weights, prep, limit) if data is not None else None
        converted, plan = octswap.convert(original, pol, input_shape=shape, mode=mode.value, strict=strict)
        if samples is not None and calibrate_bn:
            from octswap.data import batches, make_loader

            loader = make_loader(samples, batch_size=batch_size, workers=workers)
            used = octswap.recalibrate_batchnorm(converted, batches(loader), batches=calibrate_bn)
            err.print(f"re-estimated BatchNorm statistics on {used} batches of {samples.describe()}", highlight=False)
        report = octswap.report(original, converted, plan, model_name=model)
        if samples is not None:
            _warn_untrained(source.weights, model)
            report = replace(report, fidelity=_fidelity(original, converted, samples, batch_size=batch_size,
                                                        workers=workers, stages=_stages(report)))  # fmt: skip
        if optimize or compile_:
            options = octswap.InferenceOptions(fold_bn=optimize, channels_last=optimize, prepack=optimize,
                                               compile=compile_)  # fmt: skip
            converted = octswap.optimize_for_inference(converted, options)
        path = octswap.save(target, converted, plan, source=source, report=report.summary(), force=force)
        _print_report(report, fmt, layers=layers, extra={"checkpoint": str(path)})
        if not report.converted:
            err.print(f"nothing converted: every conv of {model} was kept (reasons: octswap plan {model})",
                      highlight=False, markup=False)  # fmt: skip
        size = path.stat().st_size / 2**20
        err.print(f"wrote {path} ({size:.1f} MiB): {report.converted} convs converted, FLOPs "
                  f"{percent(report.total.flops_change)}, params {percent(report.total.params_change)}",
                  highlight=False, markup=False)  # fmt: skip


@app.command()
def report(
    target: Annotated[str, typer.Argument(help="A model name / import path, or a checkpoint file.")],
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    model_arg: ModelArgOpt = None,
    mode: ModeOpt = Mode.auto,
    strict: StrictOpt = False,
    layers: LayersOpt = True,
    allow_import: AllowImportOpt = False,
    latency: Annotated[bool, typer.Option("--latency", help="Also time both models side by side (see octswap bench).")] = False,
    batch: BatchOpt = "1,8",
    threads: ThreadsOpt = None,
    rounds: RoundsOpt = 7,
    channels_last: LayoutOpt = True,
    fold_bn: FoldOpt = True,
    prepack: PrepackOpt = True,
    compile_: CompileOpt = False,
    device: DeviceOpt = "cpu",
    data: DataOpt = None,
    batch_size: BatchSizeOpt = 64,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    workers: WorkersOpt = None,
    teacher_weights: TeacherWeightsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Compare FLOPs and parameters (with --data fidelity, with --latency speed) before and after conversion; nothing is saved."""
    import octswap

    with _errors(debug):
        if latency and fmt is OutputFormat.csv:
            raise InputError("--latency needs --format table, json or markdown (CSV holds one table)")
        batches = _parse_batches(batch)  # a typo fails before the conversion, not after
        prep = _preprocessing(mean, std, resize, crop)
        recorded = None
        if _is_checkpoint(target):
            _refuse_with_checkpoint(alpha=alpha, channel_multiple=channel_multiple, policy=policy, weights=weights,
                                    model_arg=model_arg, input_size=input_size,
                                    mode=None if mode is Mode.auto else mode, strict=strict or None)  # fmt: skip
            original, converted, ckpt = _from_checkpoint(target, allow_import)
            recorded, the_plan, name = ckpt.inference, ckpt.plan, f"{ckpt.source.name} ({target})"
            model_name, model_weights = ckpt.source.name, teacher_weights or ckpt.source.weights
            # Fidelity compares with the original's trained weights, not a random rebuild.
            trained = (lambda: _teacher(ckpt, teacher_weights, allow_import)) if data is not None else None
        else:
            if teacher_weights is not None:
                raise InputError("--teacher-weights applies to a checkpoint; give a model's weights with --weights")
            original, source = octswap.load_model(target, weights=weights, kwargs=parse_model_args(model_arg))
            shape = _input_shape(input_size, original)
            converted, the_plan = octswap.convert(
                original, _policy(policy, alpha, channel_multiple), input_shape=shape, mode=mode.value, strict=strict
            )
            name, model_name, model_weights = target, target, source.weights
            trained = (lambda: original) if data is not None else None
        samples = _open(data, the_plan.input_shape, model_name, model_weights, prep, limit) if data is not None else None
        rep = octswap.report(original, converted, the_plan, model_name=name)
        if samples is not None and trained is not None:
            reference = trained()
            _warn_untrained(model_weights, model_name)
            rep = replace(rep, fidelity=_fidelity(reference, converted, samples, batch_size=batch_size,
                                                  workers=workers, stages=_stages(rep)))  # fmt: skip
        if not latency:
            _print_report(rep, fmt, layers=layers)
            return
        flops_ratio = rep.total.flops_after / rep.total.flops_before
        results = _measure(original, converted, the_plan.input_shape, recorded, batches=batches, threads=threads,
                           rounds=rounds, channels_last=channels_last, fold_bn=fold_bn, prepack=prepack,
                           compile_=compile_, device=device)  # fmt: skip
        if fmt is OutputFormat.json:
            _print_report(rep, fmt, layers=layers, extra={"latency": [r.to_dict() for r in results]})
        elif fmt is OutputFormat.markdown:
            _print_report(rep, fmt, layers=layers)
            out.print("\n" + _latency_text(results, flops_ratio, fmt), markup=False, highlight=False, end="")
        else:
            _print_report(rep, fmt, layers=layers)
            out.print(_latency_table(results, flops_ratio))


@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="torchvision name (resnet50) or package.module:factory.")],
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    model_arg: ModelArgOpt = None,
    mode: ModeOpt = Mode.auto,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Dry run: show what would be converted, and why each conv is kept or converted."""
    import octswap

    with _errors(debug):
        original, _ = octswap.load_model(model, kwargs=parse_model_args(model_arg))
        shape = _input_shape(input_size, original)
        the_plan = octswap.make_plan(original, _policy(policy, alpha, channel_multiple), input_shape=shape, mode=mode.value, strict=strict)
        _print_plan(the_plan, fmt, model)


@app.command()
def zoo(
    manifest: Annotated[Optional[list[str]], typer.Argument(
        metavar="[MANIFEST | merge DIR...]",
        help="Zoo manifest (YAML), or use --models; `merge DIR...` joins the outputs of --shard runs into --out.",
    )] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for results.json/.csv, summary.md, junit.xml.")] = Path("zoo-results"),
    models: Annotated[Optional[str], typer.Option("--models", help="Without a manifest: names or globs, comma-separated.")] = None,
    alpha: Annotated[str, typer.Option("--alpha", "-a", help="With --models: alphas, comma-separated.")] = "0.25",
    policy: PolicyOpt = None,
    input_size: InputSizeOpt = None,
    mode: ModeOpt = Mode.auto,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Worker processes.")] = 1,
    save: Annotated[bool, typer.Option("--save", help="Also write each converted checkpoint into --out.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip tasks already done with this manifest entry and version.")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Seconds before a task's worker is killed.")] = None,
    max_flops_ratio: Annotated[Optional[float], typer.Option("--max-flops-ratio", help="Fail when a converted model keeps more than this share of FLOPs.")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="A previous results.json: fail on regressions.")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Run shard K/N only: every N-th task from the K-th (for CI matrices; join with `zoo merge`).")] = None,
    debug: DebugOpt = False,
) -> None:
    """Convert a whole model zoo (each model in its own process) and write CI-friendly results.

    `octswap zoo merge DIR... --out DIR` joins the outputs of `--shard K/N` runs of one
    manifest into one results.json/csv, summary.md and junit.xml.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from octswap import zoo as zoo_lib

    with _errors(debug):
        _check_out_dir(out_dir)
        if manifest and manifest[0] == "merge":
            given = [name for name, value in (
                ("--models", models), ("--shard", shard), ("--resume", resume), ("--save", save),
                ("--timeout", timeout), ("--alpha", alpha != "0.25"), ("--policy", policy),
                ("--input-size", input_size), ("--mode", mode is not Mode.auto), ("--jobs", jobs != 1),
            ) if value]  # fmt: skip
            if given:
                verb = "does" if len(given) == 1 else "do"
                raise InputError(f"zoo merge joins finished runs: {', '.join(given)} {verb} not apply")
            _zoo_merge(manifest[1:], out_dir, max_flops_ratio=max_flops_ratio, baseline=baseline)
            return
        if manifest is not None and len(manifest) > 1:
            raise InputError(f"give one manifest file, got {len(manifest)} arguments (to join shards: octswap zoo merge DIR...)")
        if (manifest is None) == (models is None):
            raise InputError("give a manifest file or --models, not both")
        if manifest is not None:
            spec = zoo_lib.load_manifest(Path(manifest[0]))
        else:
            spec = zoo_lib.manifest_from_cli(models or "", alpha, policy=str(policy) if policy else None,
                                             input_size=input_size, mode=mode.value)  # fmt: skip
        selected = spec.tasks
        if shard is not None:
            index, count = zoo_lib.parse_shard(shard)
            shard = f"{index}/{count}"
            selected = spec.shard(index, count)
            err.print(f"shard {shard}: {len(selected)} of {len(spec.tasks)} tasks", highlight=False)
        old = zoo_lib.read_results(baseline) if baseline is not None else None
        done: dict[str, dict[str, Any]] = {}
        if resume and (out_dir / "results.json").is_file():
            for row in zoo_lib.read_results(out_dir / "results.json"):
                if row.get("status") == "ok" and row.get("octswap_version") == __version__:
                    done[row["entry_hash"]] = row
        tasks = [t for t in selected if t.entry_hash not in done]
        kept = [done[t.entry_hash] for t in selected if t.entry_hash in done]
        if kept:
            err.print(f"resuming: {len(kept)} of {len(selected)} tasks already done", highlight=False)
        save_dir = out_dir / "checkpoints" if save else None
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=err, transient=True)  # fmt: skip
        interrupted = False
        with progress:
            bar = progress.add_task("zoo", total=len(tasks))
            current: list[str] = []

            def started(task: Any) -> None:
                current.append(task.key)
                progress.update(bar, description=", ".join(current[-2:]))

            def finished(task: Any, record: dict[str, Any]) -> None:
                current.remove(task.key)
                progress.advance(bar)
                if record["status"] != "ok":
                    err.print(f"failed: {task.key}: {record.get('error')}", highlight=False, markup=False)

            try:
                records = zoo_lib.run_zoo(tasks, jobs=jobs, save_dir=save_dir, timeout=timeout,
                                          on_start=started, on_done=finished)  # fmt: skip
            except KeyboardInterrupt as interrupt:
                records = getattr(interrupt, "records", [])
                interrupted = True
        by_hash = {r["entry_hash"]: r for r in [*kept, *records]}
        rows = [by_hash[t.entry_hash] for t in selected if t.entry_hash in by_hash]
        wall = time.perf_counter() - start
        paths = zoo_lib.write_results(rows, out_dir, source=spec.source, wall_time_s=round(wall, 1), interrupted=interrupted,
                                      manifest_hash=spec.manifest_hash, task_hashes=spec.task_hashes, shard=shard)  # fmt: skip
        _zoo_outcome(rows, paths, wall, interrupted=interrupted, max_flops_ratio=max_flops_ratio, baseline=old)


def _check_out_dir(out_dir: Path) -> None:
    """Fail before any work when --out cannot be a folder we write into."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out_dir}: cannot write there ({existing} is not a writable folder)")


def _zoo_merge(folders: list[str], out_dir: Path, *, max_flops_ratio: float | None, baseline: Path | None) -> None:
    from octswap import zoo as zoo_lib

    # A folder, or its results.json: either way the folder must not be overwritten.
    resolved = {(Path(f) if not Path(f).is_file() else Path(f).parent).resolve() for f in folders}
    if out_dir.resolve() in resolved:
        raise InputError(f"--out {out_dir} is one of the folders to merge; write the merged run elsewhere")
    old = zoo_lib.read_results(baseline) if baseline is not None else None
    merged = zoo_lib.merge_results(folders)
    paths = zoo_lib.write_results(merged.rows, out_dir, source=merged.source, wall_time_s=merged.wall_time_s,
                                  manifest_hash=merged.manifest_hash, task_hashes=merged.task_hashes)  # fmt: skip
    err.print(f"merged {len(folders)} folders: {len(merged.rows)} tasks", highlight=False)
    _zoo_outcome(list(merged.rows), paths, merged.wall_time_s, interrupted=False, max_flops_ratio=max_flops_ratio, baseline=old)


def _zoo_outcome(rows: list[dict[str, Any]], paths: dict[str, Path], wall: float | None, *, interrupted: bool,
                 max_flops_ratio: float | None, baseline: list[dict[str, Any]] | None) -> None:  # fmt: skip
    """Print the summary and the files written; exit 130 when interrupted, 1 when a gate fails."""
    from octswap import zoo as zoo_lib

    out.print(zoo_lib.summary_markdown(rows, wall_time_s=wall, interrupted=interrupted), markup=False,
              highlight=False, end="")  # fmt: skip
    err.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False, markup=False)
    if interrupted:
        err.print("octswap: interrupted; results so far were written", highlight=False)
        raise typer.Exit(130)
    problems = zoo_lib.check_gates(rows, max_flops_ratio=max_flops_ratio, baseline=baseline)
    for problem in problems:
        err.print(f"octswap: gate: {problem}", highlight=False, markup=False)
    if problems:
        raise typer.Exit(1)


@app.command()
def bench(
    target: Annotated[str, typer.Argument(help="A model name / import path, or a checkpoint file.")],
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    input_size: InputSizeOpt = None,
    mode: ModeOpt = Mode.auto,
    model_arg: ModelArgOpt = None,
    batch: BatchOpt = "1,8",
    threads: ThreadsOpt = None,
    rounds: RoundsOpt = 7,
    channels_last: LayoutOpt = True,
    fold_bn: FoldOpt = True,
    prepack: PrepackOpt = True,
    compile_: CompileOpt = False,
    device: DeviceOpt = "cpu",
    runtime: Annotated[Runtime, typer.Option("--runtime", help="pytorch, or onnxruntime: both models exported alike (BatchNorm folded, HxW fixed unless --dynamic) and run by ONNX Runtime sessions with the same options (needs octswap[export]).")] = Runtime.pytorch,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="With --runtime onnxruntime: export with dynamic height and width.")] = False,
    fmt: FormatOpt = OutputFormat.table,
    allow_import: AllowImportOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Latency and peak activation memory of the original vs the converted model, side by side."""
    import octswap
    from octswap.flops import count_cost
    from octswap.plan import example_input

    asked_compile = compile_  # before a checkpoint's recorded options apply
    with _errors(debug):
        batches = _parse_batches(batch)
        recorded = None
        if _is_checkpoint(target):
            _refuse_with_checkpoint(alpha=alpha, channel_multiple=channel_multiple, policy=policy, model_arg=model_arg,
                                    input_size=input_size, mode=None if mode is Mode.auto else mode)  # fmt: skip
            original, converted, ckpt = _from_checkpoint(target, allow_import)
            shape, recorded = ckpt.plan.input_shape, ckpt.inference
            compile_ = compile_ or bool(recorded and recorded.compile)
        else:
            original, _ = octswap.load_model(target, kwargs=parse_model_args(model_arg))
            shape = _input_shape(input_size, original)
            converted, _ = octswap.convert(original, _policy(policy, alpha, channel_multiple), input_shape=shape, mode=mode.value)
        x = example_input(shape)
        flops_ratio = count_cost(converted, x).flops / count_cost(original, x).flops
        if runtime is Runtime.onnxruntime:
            from octswap.latency import measure_onnxruntime_latency

            ignored = [flag for flag, used in (("--nchw", not channels_last), ("--no-fold-bn", not fold_bn),
                                               ("--no-prepack", not prepack), ("--compile", asked_compile)) if used]
            if ignored:
                raise InputError(f"{', '.join(ignored)} applies to --runtime pytorch (ONNX Runtime runs the exported "
                                 "files, BatchNorm folded, in its own layout)")  # fmt: skip
            results = measure_onnxruntime_latency(original, converted, shape, batches=batches, threads=threads,
                                                  device=device, dynamic=dynamic, rounds=rounds)  # fmt: skip
        else:
            if dynamic:
                raise InputError("--dynamic applies to --runtime onnxruntime only")
            results = _measure(original, converted, shape, recorded, batches=batches, threads=threads, rounds=rounds,
                               channels_last=channels_last, fold_bn=fold_bn, prepack=prepack, compile_=compile_,
                               device=device)  # fmt: skip
        if fmt is OutputFormat.json:
            out.print_json(json.dumps({"model": target, "flops_ratio": round(flops_ratio, 6),
                                       "latency": [r.to_dict() for r in results]}))  # fmt: skip
        elif fmt in (OutputFormat.csv, OutputFormat.markdown):
            out.print(_latency_text(results, flops_ratio, fmt), markup=False, highlight=False, end="")
        else:
            out.print(_latency_table(results, flops_ratio))


class BNMode(str, Enum):
    train = "train"
    frozen = "frozen"


@contextmanager
def _stop_on_signal() -> Iterator[Any]:
    """First Ctrl-C (or SIGTERM): finish the step, save, stop. A second Ctrl-C aborts at once."""
    import os
    import signal
    import threading

    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    owner = os.getpid()

    def ask(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked DataLoader worker: the main process decides
            return
        if requested.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        requested.set()
        err.print("octswap: stopping after this step and saving (Ctrl-C again to abort)", highlight=False)

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _healing_table(healing: dict[str, Any]) -> Table:
    fidelity = healing.get("fidelity") or {}
    table = Table("model", "agreement", "top-1 original", "top-1 this model", "KL", title_justify="left",
                  title=f"fidelity on {fidelity.get('data', 'the data')} (vs the original)")  # fmt: skip
    labels = {"converted": "converted", "calibrated": "BatchNorm re-estimated", "healed": "healed"}
    for key, label in labels.items():
        f = fidelity.get(key)
        if f is None:
            continue
        def pct(v: Any) -> str:
            return "n/a" if v is None else f"{v * 100:.2f}%"
        table.add_row(label, pct(f["agreement"]), pct(f["accuracy_original"]), pct(f["accuracy_converted"]),
                      f"{f['kl']:.4f}")  # fmt: skip
    return table


@app.command()
def heal(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by octswap convert.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Training data: ImageFolder-style folder, flat folder of images, or .pt file.")],
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation data: fidelity after every epoch, before/after record.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Healed checkpoint [default: <checkpoint>-healed.pt].")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training data.")] = 3,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine decay).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 1e-4,
    batch_size: BatchSizeOpt = 64,
    labels: Annotated[bool, typer.Option("--labels/--no-labels", help="Also learn from the data's labels (cross-entropy).")] = False,
    label_weight: Annotated[float, typer.Option("--label-weight", help="Weight of the cross-entropy with --labels.")] = 0.5,
    temperature: Annotated[float, typer.Option("--temperature", help="Distillation temperature T.")] = 4.0,
    calibrate_bn: Annotated[int, typer.Option("--calibrate-bn", min=0, help="Batches of BatchNorm re-estimation before training (0: off).")] = 100,
    bn: Annotated[BNMode, typer.Option("--bn", help="BatchNorm while training: batch statistics (train) or fixed running statistics (frozen).")] = BNMode.train,
    target: Annotated[Optional[float], typer.Option("--target", help="Stop once top-1 agreement on --val reaches this (0-1).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample order.")] = 0,
    channels_last: Annotated[bool, typer.Option("--channels-last/--nchw", help="Memory format while training.")] = False,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    workers: WorkersOpt = None,
    teacher_weights: TeacherWeightsOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the unfinished run saved in --output.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    allow_import: AllowImportOpt = False,
    device: DeviceOpt = "cpu",
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format of the summary (table or json).")] = OutputFormat.table,
    debug: DebugOpt = False,
) -> None:
    """Heal a converted model by distillation from its original (no labels needed); runs under torchrun too."""
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from octswap.distillation import HealInterrupted, HealOptions
    from octswap.healing import heal_checkpoint

    main = int(os.environ.get("RANK", "0")) == 0
    with _errors(debug):
        if fmt in (OutputFormat.csv, OutputFormat.markdown):
            raise InputError("--format: heal prints a table or json")
        options = HealOptions(
            epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, temperature=temperature,
            labels=labels, label_weight=label_weight, calibrate_bn=calibrate_bn, bn=bn.value, target=target,
            seed=seed, channels_last=channels_last, workers=workers,
        )  # fmt: skip
        target_path = output if output is not None else checkpoint.with_name(f"{checkpoint.stem}-healed.pt")
        prep = _preprocessing(mean, std, resize, crop)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.0f} samples/s"),
                            TimeRemainingColumn(), console=err, transient=True, disable=not main)  # fmt: skip
        bars: dict[int, Any] = {}

        def on_step(info: Any) -> None:
            if info.epoch not in bars:
                bars[info.epoch] = progress.add_task(f"epoch {info.epoch + 1}/{options.epochs}", total=info.steps,
                                                     loss=0.0, speed=0.0)  # fmt: skip
            progress.update(bars[info.epoch], completed=info.step, loss=info.loss, speed=info.samples_per_s)

        def on_epoch(done: Any) -> None:
            line = f"epoch {done.epoch}/{options.epochs}: loss {done.loss:.4f}, {done.seconds:.1f} s, " \
                   f"{done.samples / max(done.seconds, 1e-9):.0f} samples/s"  # fmt: skip
            if done.fidelity is not None:
                line += f"; validation {done.fidelity.summary()}"
            progress.console.print(line, highlight=False, markup=False)

        try:
            with _stop_on_signal() as stop, progress:
                outcome = heal_checkpoint(
                    checkpoint, data, target_path, options=options, val=val, preprocessing=prep, limit=limit,
                    teacher_weights=teacher_weights, allow_import=allow_import, resume=resume, force=force,
                    device=device, on_step=on_step, on_epoch=on_epoch, stop=stop,
                )  # fmt: skip
        except HealInterrupted as stopped:
            if main:
                err.print(f"octswap: {stopped}; progress saved to {target_path} (continue with --resume)",
                          highlight=False, markup=False)  # fmt: skip
            raise typer.Exit(130) from None
        except KeyboardInterrupt:  # Ctrl-C twice: no save now, but earlier epochs are on disk
            if main:
                saved = f"the last finished epoch is in {target_path} (continue with --resume)" \
                    if target_path.exists() else "nothing was written"  # fmt: skip
                err.print(f"octswap: aborted; {saved}", highlight=False, markup=False)
            raise typer.Exit(130) from None
        if not main:
            return
        if outcome.already_complete:
            err.print(f"{target_path} already holds a finished healing run; nothing to do", highlight=False)
        if fmt is OutputFormat.json:
            out.print_json(json.dumps({"checkpoint": str(target_path), "healing": outcome.healing}))
        else:
            out.print(_healing_table(outcome.healing))
        if not outcome.already_complete:
            size = target_path.stat().st_size / 2**20
            epochs_done = outcome.healing["epochs_done"]
            err.print(f"wrote {target_path} ({size:.1f} MiB): {epochs_done} epoch{'s' * (epochs_done != 1)} of "
                      "distillation", highlight=False, markup=False)  # fmt: skip
            calibrated, healed = outcome.fidelity("calibrated"), outcome.fidelity("healed")
            if calibrated is not None and healed is not None and healed.agreement < calibrated.agreement:
                err.print(f"warning: the healed model agrees less with the original than after BatchNorm "
                          f"re-estimation alone ({healed.agreement * 100:.2f}% < {calibrated.agreement * 100:.2f}%): "
                          "train longer (more --epochs or data) or with a lower --lr", highlight=False, markup=False)  # fmt: skip


_TASKS = {"segmentation": "segmentation", "detection": "detection", "video": "video",
          "optical_flow": "optical flow", "quantization": "quantized"}  # fmt: skip


@app.command()
def export(
    target: Annotated[str, typer.Argument(help="A checkpoint from `octswap convert`, or a model name / import path to convert first.")],
    file_format: Annotated[Optional[ExportFileFormat], typer.Option("--format", help="onnx (ONNX Runtime and other ONNX runtimes) or pt2 (a torch.export program) [default: from the output's suffix, else onnx].")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file [default: the checkpoint's name, or <model>-oct<alpha>, with .onnx or .pt2].")] = None,
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    mode: ModeOpt = Mode.auto,
    model_arg: ModelArgOpt = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset, 18 or newer [default: the exporter's].")] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="Dynamic height and width, or fixed at the input size (ONNX Runtime then runs the octave resampling in its fast layout without session shape overrides).")] = True,
    batch: Annotated[Optional[int], typer.Option("--batch", "-b", min=1, help="Fix the batch size [default: dynamic].")] = None,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Run the file at the probe size and a size of the other parity and compare with PyTorch before writing it.")] = True,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="Largest accepted max|exported - PyTorch| / max|PyTorch|.")] = 1e-4,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    allow_import: AllowImportOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a converted model as a file that runs without octswap, validated against PyTorch."""
    import octswap
    from octswap.export import FORMATS, export_model
    from octswap.export.exporting import plan_metadata

    with _errors(debug):
        by_suffix = {f.suffix: name for name, f in FORMATS.items()}
        implied = by_suffix.get(output.suffix) if output is not None else None
        if file_format is None:
            file_format = ExportFileFormat(implied or "onnx")
        elif implied is not None and implied != file_format.value:
            raise InputError(f"--format {file_format.value} does not match the output name {output} (a {implied} suffix)")
        suffix = FORMATS[file_format.value].suffix
        if _is_checkpoint(target):
            _refuse_with_checkpoint(alpha=alpha, channel_multiple=channel_multiple, policy=policy, weights=weights,
                                    model_arg=model_arg, mode=None if mode is Mode.auto else mode)  # fmt: skip
            if output is not None and output.exists() and Path(target).exists() and output.samefile(target):
                raise InputError(f"{output} is the checkpoint being exported; choose another output name")
            ckpt = octswap.read_checkpoint(target)
            model = octswap.load(target, allow_import=allow_import, compile=False)
            shape = parse_input_size(input_size) if input_size is not None else ckpt.plan.input_shape
            meta = plan_metadata(ckpt.plan, ckpt.source, ckpt.report)
            default = Path(target).with_suffix(suffix)
        else:
            pol = _policy(policy, alpha, channel_multiple)
            default = _default_output(target, pol.alpha).with_suffix(suffix)
            early = output if output is not None else default
            if early.is_file() and not force:  # before the conversion, not after
                raise octswap.OutputExistsError(f"{early} exists; pass --force to overwrite it")
            original, source = octswap.load_model(target, weights=weights, kwargs=parse_model_args(model_arg))
            shape = _input_shape(input_size, original)
            model, plan_ = octswap.convert(original, pol, input_shape=shape, mode=mode.value)
            meta = plan_metadata(plan_, source)
        path = output if output is not None else default
        result = export_model(model, path, format=file_format.value, input_shape=shape, batch=batch, dynamic=dynamic,
                              opset=opset, metadata=meta, validate_file=validate, tolerance=tolerance,
                              force=force)  # fmt: skip
        if json_out:
            out.print_json(json.dumps(result.to_dict()))
        elif result.validation is not None:
            out.print(_validation_table(result.validation))
        size = result.path.stat().st_size / 2**20
        axes = ", ".join(result.dynamic_axes.values()) or "none"
        checked = "not validated (--no-validate)"
        if result.validation is not None:
            worst = max((c.max_rel for c in result.validation.checks if c.max_rel is not None), default=0.0)
            ran = sum(not c.skipped for c in result.validation.checks)
            checked = (f"validated with {result.validation.runtime} at {ran} input shape(s), "
                       f"max relative difference {worst:.2g}")  # fmt: skip
        err.print(f"wrote {result.path} ({size:.1f} MiB, {file_format.value}, dynamic axes: {axes}) in "
                  f"{result.export_seconds:.0f} s; {checked}", highlight=False, markup=False)  # fmt: skip


def _validation_table(validation: Any) -> Table:
    table = Table(title=f"validation: {validation.runtime} vs PyTorch (tolerance {validation.tolerance:g}, relative)",
                  title_justify="left")  # fmt: skip
    for column in ("input", "max abs diff", "max rel diff", "top-1 agreement", "result"):
        table.add_column(column, justify="right")
    for c in validation.checks:
        table.add_row(
            "x".join(map(str, c.input_shape)),
            "" if c.max_abs is None else f"{c.max_abs:.2g}",
            "" if c.max_rel is None else f"{c.max_rel:.2g}",
            "" if c.top1_agreement is None else f"{c.top1_agreement:.0%}",
            c.note or ("ok" if c.passed else "FAILED"),
        )  # fmt: skip
    return table


@app.command()
def models(
    pattern: Annotated[Optional[str], typer.Argument(help="Glob filter, e.g. 'resnet*'; 'timm:*net*' lists timm's models.")] = None,
    fmt: FormatOpt = OutputFormat.table,
    debug: DebugOpt = False,
) -> None:
    """List the models octswap can load by name: torchvision's, or timm's with a 'timm:' pattern."""
    import fnmatch

    from torchvision.models import get_model_builder

    from octswap.models import convertible_models
    from octswap.timm_models import PREFIX, is_timm_name, list_timm_models

    with _errors(debug):
        rows = []
        if pattern is not None and is_timm_name(pattern):
            rows = [{"name": name, "task": "timm"} for name in list_timm_models(pattern.removeprefix(PREFIX))]
        else:
            for name in convertible_models():
                if pattern and not fnmatch.fnmatch(name, pattern):
                    continue
                module = get_model_builder(name).__module__
                task = next((label for key, label in _TASKS.items() if f".{key}" in module), "classification")
                rows.append({"name": name, "task": task})
        if fmt is OutputFormat.json:
            out.print_json(json.dumps(rows))
        elif fmt is OutputFormat.csv:
            out.print("name,task\n" + "".join(f"{r['name']},{r['task']}\n" for r in rows), end="", markup=False)
        elif fmt is OutputFormat.markdown:
            out.print("| name | task |\n|---|---|\n" + "".join(f"| {r['name']} | {r['task']} |\n" for r in rows),
                      end="", markup=False)  # fmt: skip
        else:
            table = Table("name", "task", title=f"{len(rows)} models", title_justify="left")
            for r in rows:
                table.add_row(r["name"], r["task"])
            out.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
