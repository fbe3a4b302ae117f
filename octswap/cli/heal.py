"""``octswap heal``: distillation from the original brings a converted model back (runs under torchrun too)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from octswap.cli.options import (AllowImportOpt, AnnotationsOpt, BatchSizeOpt, CropOpt, DeviceOpt, ForceOpt, FormatOpt,
                                 IgnoreIndexOpt, LimitOpt, MeanOpt, ResizeOpt, StdOpt, TaskOpt, TeacherWeightsOpt,
                                 WorkersOpt, preprocessing)
from octswap.cli.output import Format, Output, TableView, emit, err, note
from octswap.cli.signals import stop_on_signal

if TYPE_CHECKING:
    from rich.progress import Progress

    from octswap.healing import HealOutcome

__all__ = ["command"]


class BNMode(str, Enum):
    train = "train"
    frozen = "frozen"


class Augment(str, Enum):
    none = "none"
    flip = "flip"
    crop = "crop"


class Distill(str, Enum):
    auto = "auto"
    logits = "logits"
    pixels = "pixels"
    cwd = "cwd"
    features = "features"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


#: Per task: the columns of the before/after table (header, fidelity field).
_COLUMNS = {
    "classification": [("agreement", "agreement"), ("top-1 original", "accuracy_original"),
                       ("top-1 this model", "accuracy_converted"), ("KL", "kl")],
    "segmentation": [("pixel agreement", "agreement"), ("mIoU original", "miou_original"),
                     ("mIoU this model", "miou_converted"), ("KL per pixel", "kl")],
    "detection": [("F1 vs original", "agreement"), ("mAP@0.5 vs original", "map50_vs_original"),
                  ("mAP@0.5 original", "map50_original"), ("mAP@0.5 this model", "map50_converted")],
    "features": [("cosine similarity", "agreement"), ("relative error", "relative_error")],
}  # fmt: skip


#: The column every task gets when stages were measured: the mean relative error of the converted
#: stages' outputs (what feature distillation lowers; a detector's F1 and mAP move only as far as it does).
_STAGE_DRIFT = ("stage drift (mean rel. error)", "stage_drift")


def _value(fidelity: dict[str, Any], field: str) -> float | None:
    if field == "stage_drift":
        errors = [s["relative_error"] for s in fidelity.get("stages") or ()]
        return sum(errors) / len(errors) if errors else None
    return fidelity.get(field)


def _cell(field: str, value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if field in ("kl", "relative_error", "stage_drift") else _percent(value)


def _columns(fidelity: dict[str, Any]) -> list[tuple[str, str]]:
    """The before/after columns for the task of the first fidelity measured, and the stages' drift."""
    first = next((f for key in ("converted", "calibrated", "healed") if (f := fidelity.get(key)) is not None), {})
    columns = _COLUMNS.get(first.get("task", "classification"), _COLUMNS["classification"])
    return [*columns, _STAGE_DRIFT] if first.get("stages") else columns


def healing_view(healing: dict[str, Any]) -> TableView:
    fidelity = healing.get("fidelity") or {}
    labels = {"converted": "converted", "calibrated": "BatchNorm re-estimated", "healed": "healed"}
    measured = [(label, f) for key, label in labels.items() if (f := fidelity.get(key)) is not None]
    columns = _columns(fidelity)
    rows = [[label, *(_cell(name, _value(f, name)) for _, name in columns)] for label, f in measured]
    return TableView(["model", *(header for header, _ in columns)], rows,
                     title=f"fidelity on {fidelity.get('data', 'the data')} (vs the original)")


def healing_csv(healing: dict[str, Any]) -> str:
    """The before/after table as CSV with plain numbers (fractions, not percent strings; empty: not measured)."""
    from octswap.tables import csv_text

    fidelity = healing.get("fidelity") or {}
    fields = ["model", *(name for _, name in _columns(fidelity))]
    rows = [{"model": key, **{name: _value(f, name) for name in fields[1:]}}
            for key in ("converted", "calibrated", "healed") if (f := fidelity.get(key)) is not None]
    return csv_text(fields, rows)


def _rate(per_second: float) -> str:
    """Samples per second for people: three significant figures under 100 (0.25, 4.12, 31.4)."""
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.3g}"


def _progress(epochs: int, *, main: bool) -> tuple[Progress, Any, Any]:
    """A progress bar per epoch on stderr, and the callbacks that feed it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]} samples/s"),
                        TimeRemainingColumn(), console=err, transient=True, disable=not main)
    bars: dict[int, Any] = {}

    def on_step(info: Any) -> None:
        if not progress.live.is_started:  # started by the first step: an error before training leaves no line
            progress.start()
        if info.epoch not in bars:
            bars[info.epoch] = progress.add_task(f"epoch {info.epoch + 1}/{epochs}", total=info.steps, loss=0.0,
                                                 speed=_rate(0.0))
        progress.update(bars[info.epoch], completed=info.step, loss=info.loss, speed=_rate(info.samples_per_s))

    def on_epoch(done: Any) -> None:
        line = (f"epoch {done.epoch}/{epochs}: loss {done.loss:.4f}, {done.seconds:.1f} s, "
                f"{_rate(done.samples / max(done.seconds, 1e-9))} samples/s")
        if done.fidelity is not None:
            line += f"; validation {done.fidelity.summary()}"
        progress.console.print(line, highlight=False, markup=False)

    return progress, on_step, on_epoch


def _report_written(outcome: HealOutcome, path: Path, *, measured_on: str) -> None:
    size = path.stat().st_size / 2**20
    epochs_done = outcome.healing["epochs_done"]
    note(f"wrote {path} ({size:.1f} MiB): {epochs_done} epoch{'s' * (epochs_done != 1)} of distillation")
    history, target = outcome.healing.get("history") or [], outcome.healing["options"].get("target")
    if outcome.healing.get("stopped_early") and history and target is not None:
        reached = (history[-1].get("fidelity") or {}).get("agreement")
        note(f"stopped early: agreement {_percent(reached)} on --val reached --target {_percent(target)} after "
             f"epoch {epochs_done} of {outcome.healing['options']['epochs']}")
    healed = outcome.fidelity("healed")
    # Worse than the checkpoint it was given, else worse than where training started (after re-estimation).
    for key, before in (("converted", "the input checkpoint"), ("calibrated", "BatchNorm re-estimation alone")):
        start = outcome.fidelity(key)
        if start is not None and healed is not None and healed.agreement < start.agreement:
            note(f"warning: {path} agrees less with the original than {before} "
                 f"({healed.agreement * 100:.2f}% < {start.agreement * 100:.2f}% on {measured_on}): train longer (more "
                 "--epochs or data) or with a lower --lr")
            break


def _is_main() -> bool:
    from octswap.distributed import is_main_process

    return is_main_process()


def _names(text: str | None) -> tuple[str, ...] | None:
    """``--features "backbone,rpn.head"`` -> ``("backbone", "rpn.head")``."""
    if text is None:
        return None
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        from octswap.errors import InputError

        raise InputError(f"--features: expected comma-separated module names, got {text!r}")
    return names


def _check_flags(output: Path, *, resume: bool, force: bool, target: float | None, val: Path | None,
                 val_annotations: Path | None, distill: Distill, features: str | None) -> None:
    """What the library checks too (naming its parameters), checked first here to name the flags."""
    from octswap.errors import InputError, OutputExistsError

    if resume and not output.exists():
        raise InputError(f"--resume: {output} does not exist, so there is no run to continue "
                         "(check --output, or drop --resume to start a new run)")
    if output.exists() and not (resume or force):
        raise OutputExistsError(f"{output} exists; pass --force to overwrite it, or --resume to continue it")
    if target is not None and val is None:
        raise InputError("--target needs --val data to measure agreement on")
    if val_annotations is not None and val is None:
        raise InputError("--val-annotations needs --val")
    if features is not None and distill not in (Distill.auto, Distill.features):
        raise InputError(f"--features names the modules of feature distillation; it does not go with "
                         f"--distill {distill.value}")


def _heal(checkpoint: Path, data: Path, output: Path, *, main: bool, options: Any, **given: Any) -> HealOutcome:
    """:func:`octswap.healing.heal_checkpoint` with a progress bar, and Ctrl-C: the first stops
    after the step in progress and saves, a second aborts (earlier epochs stay on disk)."""
    from octswap.distillation import HealInterrupted
    from octswap.healing import heal_checkpoint

    progress, on_step, on_epoch = _progress(options.epochs, main=main)
    try:
        with stop_on_signal() as stop:
            try:
                return heal_checkpoint(checkpoint, data, output, options=options, on_step=on_step, on_epoch=on_epoch,
                                       stop=stop, **given)
            finally:
                if progress.live.is_started:
                    progress.stop()
    except HealInterrupted as stopped:
        if main:
            note(f"octswap: {stopped}; progress saved to {output} (continue with --resume)")
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        if main:
            saved = (f"the last finished epoch is in {output} (continue with --resume)"
                     if output.exists() else "nothing was written")
            note(f"octswap: aborted; {saved}")
        raise typer.Exit(130) from None


LabelsOpt = Annotated[bool, typer.Option(
    "--labels/--no-labels", help="Also learn from the data's labels: cross-entropy with classes or masks; "
    "a detector's own losses on its --annotations boxes (train mode).")]
DistillOpt = Annotated[Distill, typer.Option(
    "--distill", help="What to match: auto (logits for classifiers, pixels for segmentation, features "
    "otherwise; --features: features), logits, pixels (KL per pixel), cwd (channel-wise) or features "
    "(MSE of the converted modules' outputs, per channel over the original's variance).")]
FeaturesOpt = Annotated[Optional[str], typer.Option(
    "--features", help="Feature distillation on these modules' outputs (comma-separated names; implies "
    "--distill features) [default: the converted regions].")]
AugmentOpt = Annotated[Augment, typer.Option(
    "--augment", help="Views both models see while training: none, a random left-right flip, or a random resized "
    "crop then the flip (masks and boxes follow).")]
ValAnnotationsOpt = Annotated[Optional[Path], typer.Option(
    "--val-annotations", help="COCO instances JSON for the images in --val (detection mAP).")]


def command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by octswap convert.")],
    data: Annotated[Path, typer.Option(
        "--data", "-d", help="Training data: ImageFolder-style folder, flat folder of images, a folder holding "
        "images/ and masks/, or .pt file.")],
    val: Annotated[Optional[Path], typer.Option(
        "--val", help="Validation data: fidelity after every epoch, before/after record.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Healed checkpoint [default: <checkpoint>-healed.pt].")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training data.")] = 3,
    lr: Annotated[float, typer.Option(
        "--lr", min=0.0, help="Peak learning rate (AdamW, warm-up then cosine decay).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="AdamW weight decay.")] = 1e-4,
    batch_size: BatchSizeOpt = 64,
    labels: LabelsOpt = False,
    distill: DistillOpt = Distill.auto,
    features: FeaturesOpt = None,
    task: TaskOpt = None,
    annotations: AnnotationsOpt = None,
    val_annotations: ValAnnotationsOpt = None,
    ignore_index: IgnoreIndexOpt = 255,
    label_weight: Annotated[float, typer.Option(
        "--label-weight", min=0.0, max=1.0, help="Weight of the labels' loss with --labels.")] = 0.5,
    temperature: Annotated[float, typer.Option(
        "--temperature", min=0.0, help="Distillation temperature T.")] = 4.0,
    feature_weight: Annotated[float, typer.Option(
        "--feature-weight", min=0.0, help="Also match the converted blocks' outputs (normalised MSE), weighted "
        "this much beside the outputs' distillation (0: outputs only).")] = 0.0,
    augment: AugmentOpt = Augment.none,
    calibrate_bn: Annotated[int, typer.Option(
        "--calibrate-bn", min=0, help="Batches of BatchNorm re-estimation before training (0: off).")] = 100,
    bn: Annotated[BNMode, typer.Option(
        "--bn", help="BatchNorm while training: batch statistics (train) or fixed running statistics (frozen).")
    ] = BNMode.train,
    target: Annotated[Optional[float], typer.Option(
        "--target", min=0.0, max=1.0,
        help="Stop once agreement on --val reaches this (0-1; pixel agreement for segmentation, F1 vs the "
        "original's detections for detectors).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample order.")] = 0,
    channels_last: Annotated[bool, typer.Option(
        "--channels-last/--nchw", help="Memory format while training.")] = False,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    workers: WorkersOpt = None,
    teacher_weights: TeacherWeightsOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the unfinished run saved in --output.")] = False,
    force: ForceOpt = False,
    allow_import: AllowImportOpt = False,
    device: DeviceOpt = "cpu",
    fmt: FormatOpt = Format.table,
) -> None:
    """Heal a converted model by distillation from its original (no labels needed); runs under torchrun too."""
    from octswap.distillation import HealOptions
    main = _is_main()
    target_path = output if output is not None else checkpoint.with_name(f"{checkpoint.stem}-healed.pt")
    _check_flags(target_path, resume=resume, force=force, target=target, val=val, val_annotations=val_annotations,
                 distill=distill, features=features)
    if features is not None:
        distill = Distill.features
    options = HealOptions(
        epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, temperature=temperature,
        labels=labels, label_weight=label_weight, calibrate_bn=calibrate_bn, bn=bn.value, target=target, seed=seed,
        channels_last=channels_last, workers=workers, distill=distill.value, features=_names(features),
        task=task.value if task is not None else None, ignore_index=ignore_index,
        feature_weight=feature_weight, augment=augment.value)  # fmt: skip
    outcome = _heal(checkpoint, data, target_path, main=main, options=options, val=val,
                    preprocessing=preprocessing(mean, std, resize, crop),
                    limit=limit, teacher_weights=teacher_weights, allow_import=allow_import, resume=resume,
                    force=force, device=device, annotations=annotations, val_annotations=val_annotations)
    if not main:
        return
    if outcome.already_complete:
        note(f"{target_path} already holds a finished healing run; nothing to do")
    emit(Output({"checkpoint": str(target_path), "healing": outcome.healing}, [healing_view(outcome.healing)],
                csv=healing_csv(outcome.healing)), fmt)
    if not outcome.already_complete:
        _report_written(outcome, target_path, measured_on="--val" if val is not None else "the training data")
