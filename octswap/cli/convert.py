"""``octswap convert``: convert a model, print the cost report (with ``--data`` its fidelity),
write a checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from octswap.cli import fidelity as data_options
from octswap.cli.options import (AlphaOpt, AnnotationsOpt, BatchSizeOpt, IgnoreIndexOpt, ScoreThresholdOpt, TaskOpt, CalibrateOpt, ChannelMultipleOpt, CropOpt, DataOpt, ForceOpt,
                                 FormatOpt, InputSizeOpt, LayersOpt, LimitOpt, MeanOpt, Mode, ModelArgOpt, ModeOpt,
                                 PolicyOpt, ResizeOpt, StdOpt, StrictOpt, Transfer, TransferOpt, WeightsOpt, WorkersOpt,
                                 preprocessing)
from octswap.cli.output import Format, emit, note
from octswap.cli.report import report_output, warn_uncounted
from octswap.cli.resolve import choice, convert, default_output, load
from octswap.errors import InputError

__all__ = ["command"]


def command(
    model: Annotated[str, typer.Argument(help="torchvision name (resnet50) or package.module:factory.")],
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Checkpoint path [default: <model>-oct<alpha>.pt].")] = None,
    force: ForceOpt = False,
    fmt: FormatOpt = Format.table,
    model_arg: ModelArgOpt = None,
    mode: ModeOpt = Mode.auto,
    strict: StrictOpt = False,
    transfer: TransferOpt = Transfer.resampled,
    layers: LayersOpt = True,
    optimize: Annotated[bool, typer.Option(
        "--optimize-for-inference", help="Save with BatchNorm folded into the convs, channels-last and packed "
        "weights (recorded; load rebuilds it).")] = False,
    compile_: Annotated[bool, typer.Option(
        "--compile", help="Record that loading should torch.compile the model.")] = False,
    data: DataOpt = None,
    calibrate_bn: CalibrateOpt = 0,
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
) -> None:
    """Convert MODEL, print the cost report (and with --data its fidelity), write a checkpoint."""
    import octswap
    from octswap.reporting import percent

    options = choice(alpha=alpha, channel_multiple=channel_multiple, policy=policy, weights=weights,
                     model_arg=model_arg, input_size=input_size, mode=mode, strict=strict, transfer=transfer)
    target = output if output is not None else default_output(model, options.resolved_policy.alpha)
    if target.exists() and not force:  # fail before the work, not after
        raise octswap.OutputExistsError(f"{target} exists; pass --force to overwrite it")
    if calibrate_bn and data is None:
        raise InputError("--calibrate-bn needs --data (the samples to re-estimate on)")
    prep = preprocessing(mean, std, resize, crop)
    dense = data_options.DenseOptions.of(task, annotations, ignore_index, score_threshold, data)
    loaded = load(model, options)
    samples = None
    if data is not None:
        samples, dense = data_options.open_samples(data, loaded.shape, model=model, weights=weights, prep=prep,
                                                   limit=limit, original=loaded.model, dense=dense)
    converted, plan = convert(loaded, options)
    if samples is not None and calibrate_bn:
        from octswap.data import batches, make_loader

        loader = make_loader(samples, batch_size=batch_size, workers=workers)
        used = octswap.recalibrate_batchnorm(converted, batches(loader), batches=calibrate_bn)
        note(f"re-estimated BatchNorm statistics on {used} batches of {samples.describe()}")
    report = octswap.report(loaded.model, converted, plan, model_name=model)
    if samples is not None:
        data_options.warn_untrained(loaded.source.weights, model)
        fid = data_options.measure(loaded.model, converted, samples, report, batch_size=batch_size, workers=workers,
                                   dense=dense)
        report = replace(report, fidelity=fid)
    if optimize or compile_:
        inference = octswap.InferenceOptions(fold_bn=optimize, channels_last=optimize, prepack=optimize,
                                             compile=compile_)
        converted = octswap.optimize_for_inference(converted, inference)
    path = octswap.save(target, converted, plan, source=loaded.source, report=report.summary(), force=force)
    emit(report_output(report, layers=layers, extra={"checkpoint": str(path)}), fmt)
    warn_uncounted(report, fmt)
    if not report.converted:
        note(f"nothing converted: every conv of {model} was kept (reasons: octswap plan {model})")
    _note_no_original(loaded.source.weights, model)
    size = path.stat().st_size / 2**20
    note(f"wrote {path} ({size:.1f} MiB): {report.converted} convs converted, FLOPs "
         f"{percent(report.total.flops_change)}, params {percent(report.total.params_change)}")


def _note_no_original(weights: str | None, model: str) -> None:
    """A checkpoint converted from random weights records no original to compare with or distil from."""
    if weights is None:
        note(f"note: {model} was converted from random weights (no --weights), so the checkpoint records no "
             "original to compare with or distil from: `report --data` and `heal` will ask for --teacher-weights")
