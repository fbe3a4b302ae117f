"""``octswap report``: FLOPs and parameters before and after conversion (with ``--data``
fidelity, with ``--latency`` speed); nothing is saved. Also renders the report for ``convert``."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

import typer

from octswap.cli import fidelity as data_options
from octswap.cli.bench import latency_markdown, latency_view, time_both
from octswap.cli.options import (AllowImportOpt, AlphaOpt, AnnotationsOpt, IgnoreIndexOpt, ScoreThresholdOpt, TaskOpt, BatchOpt, BatchSizeOpt, ChannelMultipleOpt, CompileOpt,
                                 CropOpt, DataOpt, DeviceOpt, FoldOpt, FormatOpt, InputSizeOpt, LayersOpt, LayoutOpt,
                                 LimitOpt, MeanOpt, Mode, ModeOpt, ModelArgOpt, PolicyOpt, PrepackOpt, ResizeOpt,
                                 RoundsOpt, StdOpt, StrictOpt, TeacherWeightsOpt, ThreadsOpt, WeightsOpt, WorkersOpt,
                                 parse_batches, preprocessing)
from octswap.cli.output import Format, Output, TableView, emit, note
from octswap.cli.resolve import choice, is_checkpoint, resolve
from octswap.errors import InputError

if TYPE_CHECKING:
    from octswap.reporting import Report

__all__ = ["command", "report_output"]


def report_view(report: Report, *, layers: bool) -> TableView:
    from octswap.reporting import human, percent

    headers = ["kind", "name", "FLOPs before", "FLOPs after", "change", "params before", "params after", "note"]
    rows, styles = [], []
    for row in report.rows(layers=layers):
        rows.append([row.kind, row.name, human(row.flops_before), human(row.flops_after), percent(row.flops_change),
                     human(row.params_before), human(row.params_after), row.note])
        styles.append("bold" if row.kind in ("total", "core") else None)
    return TableView(headers, rows, title=f"octswap report: {report.model} ({report.mode} mode)",
                     caption=report.convention, align="llrrrrrl", styles=styles)


def report_output(report: Report, *, layers: bool, extra: dict[str, Any] | None = None) -> Output:
    """The report in every format; ``extra`` joins its JSON (the checkpoint written, latency)."""
    from octswap.reporting import NOT_MEASURED

    blocks: list[Any] = [report_view(report, layers=layers)]
    if report.regions_line():
        blocks.append(report.regions_line())
    if report.memory_line():
        blocks.append(report.memory_line())
    if report.fidelity is not None:
        title = f"fidelity (converted vs original) on {report.fidelity.data}"
        blocks.append(data_options.fidelity_view(report.fidelity, title))
    else:
        blocks.append(NOT_MEASURED + ".")
    return Output({**report.to_dict(), **(extra or {})}, blocks, markdown=report.to_markdown(layers=layers),
                  csv=report.to_csv(layers=layers))


def warn_uncounted(report: Report, fmt: Format) -> None:
    if fmt is Format.table and report.uncounted:
        note("uncounted ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(report.uncounted.items())))


def _with_fidelity(rep: Report, found: Any, samples: Any, dense: Any, *, teacher_weights: str | None,
                   allow_import: bool, batch_size: int, workers: int | None) -> Report:  # fmt: skip
    """``rep`` with the fidelity of the converted model against the original's trained weights
    (for a checkpoint, the teacher it was converted from, not a random rebuild)."""
    reference = found.original
    if found.checkpoint is not None:
        from octswap.healing import load_teacher

        reference = load_teacher(found.checkpoint, weights=teacher_weights, allow_import=allow_import)
    data_options.warn_untrained(teacher_weights or found.weights, found.model_name)
    fid = data_options.measure(reference, found.converted, samples, rep, batch_size=batch_size, workers=workers,
                               dense=dense)
    return replace(rep, fidelity=fid)


def command(
    target: Annotated[str, typer.Argument(help="A model name / import path, or a checkpoint file.")],
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = Format.table,
    model_arg: ModelArgOpt = None,
    mode: ModeOpt = Mode.auto,
    strict: StrictOpt = False,
    layers: LayersOpt = True,
    allow_import: AllowImportOpt = False,
    latency: Annotated[bool, typer.Option(
        "--latency", help="Also time both models side by side (see octswap bench).")] = False,
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
    task: TaskOpt = None,
    annotations: AnnotationsOpt = None,
    ignore_index: IgnoreIndexOpt = 255,
    score_threshold: ScoreThresholdOpt = 0.5,
    teacher_weights: TeacherWeightsOpt = None,
) -> None:
    """Compare FLOPs and parameters (with --data fidelity, with --latency speed) before and after conversion;
    nothing is saved."""
    import octswap

    if latency and fmt is Format.csv:
        raise InputError("--latency needs --format table, json or markdown (CSV holds one table)")
    batches = parse_batches(batch)  # a typo fails before the conversion, not after
    prep = preprocessing(mean, std, resize, crop)
    dense = data_options.DenseOptions.of(task, annotations, ignore_index, score_threshold, data)
    options = choice(alpha=alpha, channel_multiple=channel_multiple, policy=policy, weights=weights,
                     model_arg=model_arg, input_size=input_size, mode=mode, strict=strict)
    if teacher_weights is not None and not is_checkpoint(target):
        raise InputError("--teacher-weights applies to a checkpoint; give a model's weights with --weights")
    found = resolve(target, options, allow_import=allow_import)
    weights_used = teacher_weights or found.weights
    samples = None
    if data is not None:
        samples, dense = data_options.open_samples(data, found.plan.input_shape, model=found.model_name,
                                                   weights=weights_used, prep=prep, limit=limit,
                                                   original=found.original, dense=dense)
    rep = octswap.report(found.original, found.converted, found.plan, model_name=found.name)
    if samples is not None:
        rep = _with_fidelity(rep, found, samples, dense, teacher_weights=teacher_weights, allow_import=allow_import,
                             batch_size=batch_size, workers=workers)  # fmt: skip
    if not latency:
        emit(report_output(rep, layers=layers), fmt)
        warn_uncounted(rep, fmt)
        return
    flops_ratio = rep.total.flops_after / rep.total.flops_before
    recorded = found.checkpoint.inference if found.checkpoint is not None else None
    results = time_both(found.original, found.converted, found.plan.input_shape, recorded, batches=batches,
                        threads=threads, rounds=rounds, channels_last=channels_last, fold_bn=fold_bn,
                        prepack=prepack, compile_=compile_, device=device)
    base = report_output(rep, layers=layers, extra={"latency": [r.to_dict() for r in results]})
    emit(replace(base, blocks=[*base.blocks, latency_view(results, flops_ratio)],
                 markdown=f"{base.markdown}\n{latency_markdown(results, flops_ratio)}"), fmt)
    warn_uncounted(rep, fmt)

