"""``octswap bench``: latency and peak activation memory of the original vs the converted
model, side by side. Also times both models for ``report --latency``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from octswap.cli.options import (AllowImportOpt, AlphaOpt, BatchOpt, ChannelMultipleOpt, CompileOpt, DeviceOpt,
                                 FoldOpt, FormatOpt, LayoutOpt, Mode, ModeOpt, ModelArgOpt, PolicyOpt,
                                 PrepackOpt, RoundsOpt, Runtime, ThreadsOpt, parse_batches)
from octswap.cli.output import Format, Output, TableView, emit, note
from octswap.cli.resolve import Target, choice, resolve
from octswap.errors import InputError
from octswap.tables import csv_text, markdown_table

if TYPE_CHECKING:
    import torch
    from torch import nn

    from octswap.inference import InferenceOptions
    from octswap.latency import LatencyResult

__all__ = ["command", "latency_markdown", "latency_view", "time_both"]


def time_both(original: nn.Module, converted: nn.Module, shape: tuple[int, int, int],
              recorded: InferenceOptions | None, *, batches: tuple[int, ...], threads: int | None, rounds: int,
              channels_last: bool, fold_bn: bool, prepack: bool, compile_: bool, device: str) -> list[LatencyResult]:
    """Time both models prepared alike; what a checkpoint was saved with also applies to the original."""
    from octswap.inference import InferenceOptions
    from octswap.latency import measure_latency

    if recorded is not None and recorded.channels_last and not channels_last:
        raise InputError("this checkpoint was saved channels-last; --nchw cannot undo that (drop --nchw)")
    # A folded checkpoint has no BatchNorm left: compare it with a folded original.
    fold = fold_bn or (recorded is not None and recorded.fold_bn)
    options = InferenceOptions(fold_bn=fold, channels_last=channels_last, prepack=prepack, compile=compile_)
    return measure_latency(original, converted, shape, batches=batches, threads=threads, options=options,
                           device=device, rounds=rounds)


def _prepared(result: LatencyResult) -> str:
    o = result.options
    if result.runtime != "pytorch":
        return f"{result.device}, {result.runtime} ({result.export}, BN folded)"
    parts = [result.device, "channels-last" if o.channels_last else "NCHW"]
    parts += ["BN folded"] * o.fold_bn + ["packed"] * o.prepack + ["compiled"] * o.compile
    return ", ".join(parts)


def latency_view(results: list[LatencyResult], flops_ratio: float) -> TableView:
    headers = ["batch", "threads", "prepared", "original", "converted", "latency ratio", "FLOPs ratio",
               "peak memory ratio"]
    rows = [[str(r.batch), str(r.threads), _prepared(r),
             f"{r.original.median * 1e3:.1f} ms ({r.original.iqr * 1e3:.1f})",
             f"{r.converted.median * 1e3:.1f} ms ({r.converted.iqr * 1e3:.1f})",
             f"{r.ratio:.2f}", f"{flops_ratio:.2f}", "" if r.memory_ratio is None else f"{r.memory_ratio:.2f}"]
            for r in results]
    return TableView(headers, rows, title="latency (median of interleaved rounds, IQR in brackets)",
                     caption="ratio = converted / original; below 1 the converted model is faster",
                     align="r" * len(headers))


def _latency_rows(results: list[LatencyResult], flops_ratio: float) -> list[dict[str, Any]]:
    return [{**r.to_dict(), "flops_ratio": round(flops_ratio, 6)} for r in results]


def latency_markdown(results: list[LatencyResult], flops_ratio: float) -> str:
    """One Markdown row per batch size, every measured field."""
    rows = _latency_rows(results, flops_ratio)
    return markdown_table(list(rows[0]), [list(r.values()) for r in rows]) + "\n"


def unequal_work(original: nn.Module, converted: nn.Module, x: torch.Tensor) -> str | None:
    """Why the two models' ratios compare unlike work, or None: their outputs differ in size on the
    timing input (a detector's post-processing keeps a weight-dependent number of boxes)."""
    import torch

    from octswap.eval_mode import eval_mode
    from octswap.plan import output_tensors

    with eval_mode(original), eval_mode(converted), torch.no_grad():
        shapes = [[tuple(t.shape) for t in output_tensors(m(x))] for m in (original, converted)]
    if shapes[0] == shapes[1]:
        return None
    differ = next(((a, b) for a, b in zip(*shapes) if a != b), (len(shapes[0]), len(shapes[1])))
    return (f"the two models' outputs differ in size on the timing input ({differ[1]} against the original's "
            f"{differ[0]}): their post-processing kept different numbers of proposals or detections, so the "
            "ratios compare unlike work; time torchvision's R-CNNs on equal work by converting with -m "
            "rpn_nms_thresh=1.0 -m box_score_thresh=0 -m box_nms_thresh=1.0")


def _measure(found: Target, shape: tuple[int, int, int], *, runtime: Runtime, dynamic: bool,
             **timing: Any) -> list[LatencyResult]:
    """Time both models at ``shape`` on ``runtime``; ``timing`` holds :func:`time_both`'s options."""
    if runtime is Runtime.onnxruntime:
        from octswap.latency import measure_onnxruntime_latency

        pytorch_only = {"--nchw": not timing["channels_last"], "--no-fold-bn": not timing["fold_bn"],
                        "--no-prepack": not timing["prepack"], "--compile": timing["compile_"]}
        ignored = [flag for flag, used in pytorch_only.items() if used]
        if ignored:
            raise InputError(f"{', '.join(ignored)} applies to --runtime pytorch (ONNX Runtime runs the exported "
                             "files, BatchNorm folded, in its own layout)")
        return measure_onnxruntime_latency(found.original, found.converted, shape, batches=timing["batches"],
                                           threads=timing["threads"], device=timing["device"], dynamic=dynamic,
                                           rounds=timing["rounds"])
    if dynamic:
        raise InputError("--dynamic applies to --runtime onnxruntime only")
    recorded = found.checkpoint.inference if found.checkpoint is not None else None
    compile_ = timing.pop("compile_") or bool(recorded is not None and recorded.compile)
    return time_both(found.original, found.converted, shape, recorded, compile_=compile_, **timing)


def command(
    target: Annotated[str, typer.Argument(help="A model name / import path, or a checkpoint file.")],
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    input_size: Annotated[Optional[str], typer.Option(
        "--input-size", "-s", help="Input: N, HxW or CxHxW; a model is converted and timed at it, a checkpoint "
        "timed at it [default: a timm model's own input size, else 224; a checkpoint's plan size].")] = None,
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
    runtime: Annotated[Runtime, typer.Option(
        "--runtime", help="pytorch, or onnxruntime: both models exported alike (BatchNorm folded, HxW fixed unless "
        "--dynamic) and run by ONNX Runtime sessions with the same options (needs octswap[export]).")
    ] = Runtime.pytorch,
    dynamic: Annotated[bool, typer.Option(
        "--dynamic", help="With --runtime onnxruntime: export with dynamic height and width.")] = False,
    fmt: FormatOpt = Format.table,
    allow_import: AllowImportOpt = False,
) -> None:
    """Latency and peak activation memory of the original vs the converted model, side by side."""
    from octswap.flops import count_cost
    from octswap.latency import timing_input
    from octswap.plan import run_once
    from octswap.shapes import parse_input_shape

    batches = parse_batches(batch)
    options = choice(alpha=alpha, channel_multiple=channel_multiple, policy=policy, model_arg=model_arg,
                     input_size=input_size, mode=mode)
    # A checkpoint is timed at its plan's size, or at --input-size: a converted model runs at every size its
    # original runs at (the plan's size only chose the conversion).
    found = resolve(target, options, allow_import=allow_import, keep=("input_size",))
    shape = found.plan.input_shape
    if input_size is not None and found.checkpoint is not None:
        shape = parse_input_shape(input_size)
        run_once(found.original, shape)  # InputError, naming the shape, where the original does not run
    x = timing_input(1, shape)  # FLOPs of the work timed
    flops_ratio = count_cost(found.converted, x).flops / count_cost(found.original, x).flops
    unequal = unequal_work(found.original, found.converted, x)
    if unequal:
        note(f"octswap: WARNING: {unequal}")
    results = _measure(found, shape, runtime=runtime, dynamic=dynamic, batches=batches, threads=threads,
                       rounds=rounds, channels_last=channels_last, fold_bn=fold_bn, prepack=prepack,
                       compile_=compile_, device=device)
    rows = _latency_rows(results, flops_ratio)
    data = {"model": target, "mode": found.plan.mode, "convs_converted": len(found.plan.octave_layers),
            "convs": len(found.plan.layers), "input_shape": list(shape), "flops_ratio": round(flops_ratio, 6),
            "unequal_work": unequal, "latency": [r.to_dict() for r in results]}
    emit(Output(data, [latency_view(results, flops_ratio)], markdown=latency_markdown(results, flops_ratio),
                csv=csv_text(list(rows[0]), rows)), fmt)
