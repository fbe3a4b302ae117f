"""``octswap tune``: the alpha per unit that is fastest on this machine, or reaches a latency or
FLOPs target with the least change; writes a policy ``convert --policy`` takes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from octswap.cli import fidelity as data_options
from octswap.cli.options import (BatchSizeOpt, ChannelMultipleOpt, CropOpt, DataOpt, DeviceOpt, ForceOpt, FormatOpt,
                                 InputSizeOpt, LimitOpt, MeanOpt, Mode, ModeOpt, ModelArgOpt, PolicyOpt, ResizeOpt,
                                 Runtime, StdOpt, ThreadsOpt, WeightsOpt, WorkersOpt, preprocessing)
from octswap.cli.output import Format, Output, TableView, emit, err, note
from octswap.cli.resolve import choice, load, model_stem
from octswap.cli.signals import stop_on_signal
from octswap.errors import InputError, OutputExistsError

if TYPE_CHECKING:
    from octswap.tuning import TuneResult

__all__ = ["command", "tune_output"]


def _alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--alphas takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise InputError("--alphas needs at least one alpha")
    return values


def tune_output(result: TuneResult, *, model: str, policy_file: Path, measurements: Path) -> Output:
    flops = result.objective == "flops"
    measured = result.drop_kind == "agreement points"
    headers = ["unit", "convs", "GMAC", "alpha", "saves alone (M MAC)" if flops else "saves alone (ms)"]
    headers += ["agreement lost alone (points)"] * measured
    rows = []
    for c in result.units:
        saving = f"{c.saving / 1e6:.1f}" if flops else f"{c.saving * 1e3:.2f}"
        rows.append([c.unit.name, str(len(c.unit.convs)), f"{c.unit.macs / 1e9:.3f}", f"{c.alpha:g}",
                     saving if c.alpha else "-"] + [f"{c.drop:.2f}" if c.alpha else "-"] * measured)  # fmt: skip
    target = "" if result.target is None else f" {result.target}"
    title = (f"octswap tune: {model}, {result.objective}{target} ({len(result.plan.octave_layers)} of "
             f"{len(result.plan.layers)} convs converted, {result.plan.mode} mode)")  # fmt: skip
    lines = result.summary()
    data = {"model": model, "policy_file": str(policy_file), "measurements_file": str(measurements), **result.to_dict()}
    return Output(data, [TableView(headers, rows, title=title, align="lrrrr" + "r" * measured), *lines,
                         _tradeoff_view(result)])


def _tradeoff_view(result: TuneResult) -> TableView:
    """Uniform alphas against tuned policies, as the search saw them, and the chosen one measured."""
    from octswap.tuning.plot import tradeoff_rows

    flops = result.objective == "flops"
    measured = result.drop_kind == "agreement points"
    drop = "agreement lost (points)" if measured else "change (proxy)"

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [[r["policy"], number(r["ratio"], 3), number(r["drop"], 2 if measured else 3),
             number(r["measured_ratio"], 3), number(r["measured_drop"], 2)] for r in tradeoff_rows(result)]
    cost = "FLOPs ratio" if flops else "latency ratio"
    return TableView(["policy", f"predicted {cost}", f"predicted {drop}", f"measured {cost}", "measured points lost"],
                     rows, title="trade-off: uniform alpha against tuned policies", align="lrrrr")


def _progress() -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True)  # fmt: skip
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if not progress.live.is_started:  # started by the first report: an early error leaves no blank line
            progress.start()
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total or None)
        progress.update(tasks[stage], completed=done)

    return progress, update


TargetLatencyOpt = Annotated[Optional[float], typer.Option(
    "--target-latency", help="Latency ratio to reach (converted / original), with the least change "
    "[default: the fastest policy, never slower than the original].")]
TargetFlopsOpt = Annotated[Optional[float], typer.Option(
    "--target-flops", help="FLOPs ratio to reach instead (nothing is timed: for hardware not at hand).")]
MaxDropOpt = Annotated[Optional[float], typer.Option(
    "--max-drop", help="With --data: the fastest policy losing at most this many points of agreement "
    "with the original (after BatchNorm re-estimation).")]
RuntimeOpt = Annotated[Runtime, typer.Option(
    "--runtime", help="What to time in: pytorch, or onnxruntime (convs and whole models exported to ONNX and run "
    "by ONNX Runtime sessions, as bench --runtime onnxruntime; needs octswap[export]).")]
MeasurementsOpt = Annotated[Optional[Path], typer.Option(
    "--measurements", help="Where measurements are kept as they are made [default: <output>.measurements.json].")]
PlotOpt = Annotated[Optional[list[Path]], typer.Option(
    "--plot", help="Also draw the trade-off (uniform alpha against tuned policies) to this file; the suffix "
    "gives the format (.png, .svg, ...); repeat for several [needs matplotlib: octswap[plot]].")]


def command(
    model: Annotated[str, typer.Argument(help="torchvision name (resnet50) or package.module:factory.")],
    target_latency: TargetLatencyOpt = None,
    target_flops: TargetFlopsOpt = None,
    max_drop: MaxDropOpt = None,
    data: DataOpt = None,
    calibrate_bn: Annotated[int, typer.Option(
        "--calibrate-bn", min=1, help="With --data: batches for BatchNorm re-estimation per measurement.")] = 10,
    eval_batches: Annotated[Optional[int], typer.Option(
        "--eval-batches", min=1, help="With --data: batches to measure agreement on [default: all].")] = None,
    batch_size: BatchSizeOpt = 64,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    workers: WorkersOpt = None,
    alphas: Annotated[str, typer.Option(
        "--alphas", help="Candidate alphas per unit besides 0, comma-separated.")] = "0.125,0.25,0.375,0.5,0.625,0.75",
    policy: PolicyOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    model_arg: ModelArgOpt = None,
    mode: ModeOpt = Mode.auto,
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, help="Batch size to time at.")] = 8,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = Runtime.pytorch,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Alternating rounds per measurement.")] = 5,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Policy file to write [default: <model>-tuned.yaml].")] = None,
    measurements: MeasurementsOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Reuse the measurements file of an interrupted or earlier run (same setting).")] = False,
    plot: PlotOpt = None,
    force: ForceOpt = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """Choose which convs convert, at which alpha, by what they measure on this machine."""
    from octswap.tuning import TuneInterrupted, tune

    from octswap.tuning.goal import check_goal

    options = choice(channel_multiple=channel_multiple, policy=policy, weights=weights, model_arg=model_arg,
                     input_size=input_size, mode=mode)  # fmt: skip
    target = output if output is not None else Path(f"{model_stem(model)}-tuned.yaml")
    store = measurements if measurements is not None else target.with_name(target.name + ".measurements.json")
    candidates = _alphas(alphas)
    _check_outputs(target, store, resume=resume, force=force)
    if plot:
        from octswap.tuning.plot import check_plot_paths

        check_plot_paths(plot, force=force)
    check_goal(target_latency, target_flops, max_drop, candidates, data, device, runtime.value)
    loaded = load(model, options)
    loader = _loader(data, loaded, model=model, weights=weights, prep=preprocessing(mean, std, resize, crop),
                     limit=limit, batch_size=batch_size, workers=workers)  # fmt: skip
    progress, update = _progress()
    try:
        with stop_on_signal() as stop, _stopping(progress):
            result = tune(loaded.model, policy=options.resolved_policy, input_shape=loaded.shape,
                          mode=options.mode_value, target_latency=target_latency, target_flops=target_flops,
                          max_drop=max_drop, data=loader, calibrate_batches=calibrate_bn, eval_batches=eval_batches,
                          data_key=f"{data}|{limit}|{batch_size}|{mean}|{std}|{resize}|{crop}" if data else "",
                          alphas=candidates, batch=batch, threads=threads, device=device, runtime=runtime.value,
                          rounds=rounds, cache=store,
                          resume=resume, force=force and not resume, model_key=model, progress=update, stop=stop)
    except TuneInterrupted:
        kept = f"measurements kept in {store} (continue with --resume)" if store.exists() else "nothing was measured"
        note(f"octswap: stopped; {kept}")
        raise typer.Exit(130) from None
    _write(result, target, store, model=model, fmt=fmt, force=force,
           again=_convert_line(model, input_size=input_size, model_arg=model_arg, mode=mode, weights=weights))
    if plot:
        from octswap.tuning.plot import write_tradeoff_plot

        written = write_tradeoff_plot(result, plot, title=f"octswap tune: {model}", force=force)
        note(f"wrote the trade-off plot: {', '.join(map(str, written))}")


@contextlib.contextmanager
def _stopping(progress: Any) -> Iterator[None]:
    """Stop the progress display on the way out, if it was started."""
    try:
        yield
    finally:
        if progress.live.is_started:
            progress.stop()


def _check_outputs(target: Path, store: Path, *, resume: bool, force: bool) -> None:
    """Fail before the work: an existing policy or measurements file, or a folder we cannot write."""
    import os

    if target.resolve() == store.resolve():
        raise InputError(f"the policy and the measurements would both be {target}: give --measurements another path")
    if target.exists() and not force:
        kept = " (with --resume the measurements are kept)" if resume else ""
        raise OutputExistsError(f"{target} exists; pass --force to overwrite it{kept}")
    if store.exists() and not (resume or force):
        raise OutputExistsError(f"{store} exists; pass --resume to reuse its measurements or --force to start over")
    for path in (target, store):
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise InputError(f"cannot write to {folder}: not a writable folder")


def _loader(data: Path | None, loaded: Any, *, model: str, weights: str | None, prep: Any, limit: int | None,
            batch_size: int, workers: int | None) -> Any:  # fmt: skip
    if data is None:
        return None
    from octswap.data import make_loader

    samples, _ = data_options.open_samples(data, loaded.shape, model=model, weights=weights, prep=prep, limit=limit,
                                           original=loaded.model)
    data_options.warn_untrained(loaded.source.weights, model)
    return make_loader(samples, batch_size=batch_size, workers=workers)


def _convert_line(model: str, *, input_size: str | None, model_arg: list[str] | None, mode: Mode,
                  weights: str | None) -> str:  # fmt: skip
    """The ``octswap convert`` command that builds the model as tuned."""
    import shlex

    parts = ["octswap", "convert", model]
    parts += ["-s", input_size] if input_size else []
    parts += [a for arg in model_arg or () for a in ("-m", arg)]
    parts += ["-w", weights] if weights else []
    parts += ["--mode", mode.value] if mode is not Mode.auto else []
    return shlex.join(parts)


def _write(result: TuneResult, target: Path, store: Path, *, model: str, fmt: Format, force: bool, again: str) -> None:
    import octswap
    from octswap.checkpoint import atomic_write
    from octswap.tuning.policy_file import policy_yaml

    text = policy_yaml(result, model=model)
    octswap.Policy.from_yaml(text, source=str(target))  # what convert --policy will read
    atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"), force=force)
    emit(tune_output(result, model=model, policy_file=target, measurements=store), fmt)
    import shlex

    note(f"wrote {target}; convert with: {again} --policy {shlex.quote(str(target))}")
