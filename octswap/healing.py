"""Checkpoint in, healed checkpoint out: what ``octswap heal`` runs.

Reads a converted checkpoint, rebuilds its original with the trained weights it was
converted from (the teacher), opens the data with the model's own preprocessing,
measures the fidelity of the converted model, distils (:mod:`octswap.distillation`)
and writes an ordinary octswap checkpoint after every epoch (atomically) whose
``healing`` record says how it was healed and what the fidelity was before and after,
and whose ``training`` state lets ``resume=True`` carry on; the finished file drops it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from octswap import __version__
from octswap.checkpoint import Checkpoint, load, read, save
from octswap.data import Data, Preprocessing, make_loader
from octswap.distillation import EpochResult, HealOptions, HealResult, StepInfo, heal, require_labels
from octswap.distributed import current_world
from octswap.errors import CheckpointError, InputError, OutputExistsError
from octswap.fidelity import Fidelity, measure_fidelity
from octswap.plan import Plan, example_input

__all__ = ["HealOutcome", "heal_checkpoint", "load_teacher"]

logger = logging.getLogger(__name__)

#: Fidelity before/after is measured on the validation data, or on at most this many training samples.
TRAIN_SAMPLE = 1000


@dataclass
class HealOutcome:
    """What :func:`heal_checkpoint` did."""

    output: Path
    healing: dict[str, Any]
    result: HealResult | None = None
    already_complete: bool = False

    def fidelity(self, stage: str) -> Fidelity | None:
        """``"converted"``, ``"calibrated"`` or ``"healed"``."""
        data = self.healing.get("fidelity", {}).get(stage)
        return None if data is None else Fidelity.from_dict(data)


def load_teacher(ckpt: Checkpoint, *, weights: str | None = None, allow_import: bool = False) -> nn.Module:
    """The original of a checkpoint with its trained weights, eval mode.

    Raises:
        CheckpointError: the factory may not be imported, or the model cannot be rebuilt.
        WeightsError: no trained weights recorded or given, or they cannot be read.
    """
    if ckpt.source.kind == "import" and not allow_import:
        raise CheckpointError(
            f"{ckpt.path} builds its model with {ckpt.source.name!r}; pass allow_import=True "
            "(CLI: --allow-import) if you trust it"
        )
    return ckpt.source.load(weights=weights).eval()


def heal_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    output: str | Path,
    *,
    options: HealOptions | None = None,
    val: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    limit: int | None = None,
    teacher_weights: str | None = None,
    annotations: str | Path | None = None,
    val_annotations: str | Path | None = None,
    allow_import: bool = False,
    resume: bool = False,
    force: bool = False,
    device: str = "cpu",
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> HealOutcome:
    """Heal the converted model in ``checkpoint`` by distillation and write ``output``.

    Args:
        checkpoint: A checkpoint written by ``octswap convert`` (not one prepared for
            inference: its BatchNorms are folded away).
        data: Training data (:func:`octswap.data.open_data`); labels used only with
            ``options.labels``.
        output: The healed checkpoint, written after every epoch.
        options: Training options (:class:`HealOptions`); on ``resume`` the saved ones.
        val: Validation data for the per-epoch fidelity and the before/after record.
        preprocessing: Image preprocessing; default: the torchvision weights' own, else
            :class:`Preprocessing`'s defaults.
        limit: Use this many training samples (a fixed random subset).
        teacher_weights: The original's weights file, when it is no longer where the
            checkpoint recorded it.
        annotations, val_annotations: COCO instances JSON for the images of ``data`` and
            ``val`` (detectors: mAP against them in the fidelity record).
        allow_import: Let the checkpoint import its model factory.
        resume: Continue the run saved in ``output``, which must exist (a finished run
            there is returned as it is, with ``already_complete``).
        force: Overwrite an existing ``output`` (a new run).
        device: ``cpu`` or ``cuda``.
        on_step, on_epoch, stop: See :func:`octswap.distillation.heal`.

    Raises:
        OutputExistsError: ``output`` exists and neither ``force`` nor ``resume``.
        InputError: ``resume`` but ``output`` does not exist, is no healing run, or was
            healed from another conversion; a checkpoint saved for inference; bad data.
        CheckpointError, WeightsError: bad checkpoint or teacher.
        HealInterrupted: ``stop`` asked to stop; progress is in ``output``.
    """
    output = Path(output)
    ckpt = _read_converted(checkpoint)
    previous = _previous_run(output, ckpt, resume=resume, force=force)
    if previous is not None and previous.training is None:
        logger.info("%s already holds a finished healing run", output)
        return HealOutcome(output, previous.healing, already_complete=True)  # type: ignore[arg-type]
    options = _run_options(options or HealOptions(), previous)
    teacher = load_teacher(ckpt, weights=teacher_weights, allow_import=allow_import)
    student = load(previous.path if previous is not None else ckpt.path, allow_import=allow_import, compile=False)
    inputs = _open_inputs(ckpt, teacher, data, val, options, preprocessing=preprocessing, limit=limit,
                          teacher_weights=teacher_weights, annotations=annotations,
                          val_annotations=val_annotations)  # fmt: skip
    options = _dense_options(options, inputs.task, ckpt.plan)
    check = _FidelityCheck.make(teacher, ckpt, inputs, options)
    if previous is not None:
        record = dict(previous.healing)  # type: ignore[arg-type]
    else:
        record = _new_record(ckpt, options, inputs, check.measure(student) if check.main else None,
                             teacher_weights=teacher_weights, device=device)  # fmt: skip
    writer = _Writer(output, ckpt, record, check, overwrite=force or resume)
    result = heal(
        student, teacher, inputs.train, options=options, val=inputs.val, device=device,
        resume=previous.training if previous is not None else None,
        on_step=on_step, on_epoch=on_epoch, save=writer.epoch_saved, stop=stop, on_calibrated=writer.calibrated,
    )  # fmt: skip
    writer.finished(result)
    return HealOutcome(output, record, result=result)


# ------------------------------------------------------------------ the steps
def _read_converted(checkpoint: str | Path) -> Checkpoint:
    """The checkpoint to heal.

    Raises:
        InputError: it was saved for inference (BatchNorm folded away: nothing to heal).
        CheckpointError: it cannot be read.
    """
    ckpt = read(checkpoint)
    if ckpt.inference is not None and ckpt.inference.fold_bn:
        raise InputError(
            f"{ckpt.path} was saved for inference (BatchNorm folded into the convs); heal the checkpoint "
            "saved before optimize_for_inference"
        )
    return ckpt


def _previous_run(output: Path, ckpt: Checkpoint, *, resume: bool, force: bool) -> Checkpoint | None:
    """The run saved in ``output`` to continue (unfinished, or finished: nothing to do); ``None`` for a new run.

    Raises:
        InputError: ``resume`` but ``output`` does not exist, holds no healing record, or was
            healed from another conversion than ``ckpt``.
        OutputExistsError: ``output`` exists and neither ``resume`` nor ``force``.
    """
    if not output.exists():
        if resume:
            raise InputError(f"resume=True but {output} does not exist: there is no run to continue")
        return None
    if not resume:
        if not force:
            raise OutputExistsError(f"{output} exists; pass force=True to overwrite it, or resume=True to continue it")
        return None
    previous = read(output)
    if previous.healing is None:
        raise InputError(f"resume=True but {output} is not a healing run (no healing record)")
    if previous.plan.to_dict() != ckpt.plan.to_dict():
        raise InputError(f"resume=True but {output} was healed from a different conversion than {ckpt.path}")
    return previous


def _run_options(given: HealOptions, previous: Checkpoint | None) -> HealOptions:
    """``given`` for a new run; a resumed run keeps the options it started with (``workers`` aside)."""
    if previous is None:
        return given
    saved = HealOptions.from_dict(previous.healing["options"])  # type: ignore[index]
    # The saved run recorded what it resolved (task, method, feature modules); None/"auto" means "as resolved".
    resolved = replace(given, task=given.task or saved.task,
                       distill=saved.distill if given.distill == "auto" else given.distill,
                       features=given.features if given.features is not None else saved.features)
    if replace(saved, workers=given.workers) != resolved:
        logger.warning("resuming with the options the run started with, not the ones given")
    return replace(saved, workers=given.workers)


@dataclass(frozen=True)
class _Inputs:
    """The data of a run: ``check`` is what the fidelity before and after is measured on (``where``)."""

    train: Data
    val: Data | None
    check: Data
    where: str
    task: str


def _open_inputs(
    ckpt: Checkpoint, teacher: nn.Module, data: str | Path, val: str | Path | None, options: HealOptions, *,
    preprocessing: Preprocessing | None, limit: int | None, teacher_weights: str | None,
    annotations: str | Path | None, val_annotations: str | Path | None,
) -> _Inputs:  # fmt: skip
    """Open the training and validation data for the teacher's task (see :func:`heal_checkpoint`).

    Raises:
        InputError: data not found or unreadable, labels asked for but missing, or labels
            (masks, boxes) for another task than the model's.
    """
    from octswap.model_data import open_for_model

    opened = functools.partial(open_for_model, model=teacher, input_shape=ckpt.plan.input_shape,
                               model_name=ckpt.source.name, weights=teacher_weights or ckpt.source.weights,
                               preprocessing=preprocessing, task=options.task)  # fmt: skip
    train, task = opened(data, limit=limit, annotations=annotations)
    require_labels(train, options)
    val_data = opened(val, annotations=val_annotations)[0] if val is not None else None
    if val_data is not None:
        return _Inputs(train, val_data, val_data, "validation data", task)
    # Without validation data: a fixed subset of the training data, no larger than ``limit`` asks.
    sample = min(TRAIN_SAMPLE, limit) if limit is not None else TRAIN_SAMPLE
    check = opened(data, limit=sample, seed=1, annotations=annotations)[0]
    return _Inputs(train, None, check, f"training data ({len(check)} samples)", task)


def default_features(plan: Plan) -> tuple[str, ...]:
    """The modules whose outputs feature distillation matches by default: the regions a
    conversion in regions mode converted in graph mode, else the top-level modules holding
    converted convs (``()``: none, the model's outputs are matched)."""
    if plan.regions:
        return tuple(str(r["path"]) for r in plan.regions if r.get("path"))
    converted = [d.name for d in plan.octave_layers]
    tops = dict.fromkeys(name.split(".", 1)[0] for name in converted if "." in name)
    return tuple(tops) if plan.mode != "graph" else ()


def _dense_options(options: HealOptions, task: str, plan: Plan) -> HealOptions:
    """``options`` with the task and the distillation method resolved (``auto`` -> what it means for
    the task) and, for feature distillation, the modules to match."""
    from octswap.losses import method_for

    method = method_for(task, options.distill)
    features = options.features
    if method == "features" and features is None:
        features = default_features(plan) or None
        logger.info("feature distillation on %s", ", ".join(features) if features else "the model's outputs")
    return replace(options, task=task, distill=method, features=features)


@dataclass(frozen=True)
class _FidelityCheck:
    """The fidelity of a model to the teacher on the run's check data, per stage (main process only)."""

    teacher: nn.Module
    loader: DataLoader
    where: str
    stages: list[str] | None
    main: bool
    task: str | None = None
    ignore_index: int = 255

    @classmethod
    def make(cls, teacher: nn.Module, ckpt: Checkpoint, inputs: _Inputs, options: HealOptions) -> _FidelityCheck:
        loader = make_loader(inputs.check, batch_size=options.batch_size, workers=options.workers)
        main = current_world().is_main
        stages = None
        if main:
            from octswap.flops import count_cost
            from octswap.stages import stage_names

            stages = stage_names(teacher, count_cost(teacher, example_input(ckpt.plan.input_shape)).by_module)
        return cls(teacher, loader, inputs.where, stages, main, inputs.task, options.ignore_index)

    def measure(self, model: nn.Module) -> dict[str, Any]:
        """:meth:`Fidelity.to_dict` of ``model`` against the teacher."""
        return measure_fidelity(self.teacher, model, self.loader, stages=self.stages, data=self.where,
                                task=self.task, ignore_index=self.ignore_index).to_dict()  # fmt: skip


def _new_record(
    ckpt: Checkpoint, options: HealOptions, inputs: _Inputs, converted: dict[str, Any] | None, *,
    teacher_weights: str | None, device: str,
) -> dict[str, Any]:  # fmt: skip
    """The ``healing`` record of a new run, with the fidelity of the converted model (``None`` off rank 0)."""
    return {
        "method": "distillation",
        "octswap_version": __version__,
        "from_checkpoint": str(ckpt.path.resolve()),
        "teacher": {"name": ckpt.source.name, "weights": teacher_weights or ckpt.source.weights},
        "options": options.to_dict(),
        "data": inputs.train.describe(),
        "val": None if inputs.val is None else inputs.val.describe(),
        "device": device,
        "world_size": current_world().world_size,
        "fidelity": {"data": inputs.where, "converted": converted, "calibrated": None, "healed": None},
    }


@dataclass
class _Writer:
    """Writes ``output`` with the run's ``healing`` record: after every epoch, and the finished model.

    ``overwrite``: whether an existing file may be replaced (after the first write the file is this run's own).
    """

    output: Path
    ckpt: Checkpoint
    record: dict[str, Any]
    check: _FidelityCheck
    overwrite: bool

    def write(self, model: nn.Module, training: dict[str, Any] | None) -> None:
        save(self.output, model, self.ckpt.plan, source=self.ckpt.source, report=self.ckpt.report,
             healing=self.record, training=training, force=self.overwrite)  # fmt: skip
        self.overwrite = True

    def calibrated(self, model: nn.Module) -> None:
        """After BatchNorm re-estimation: record the fidelity (main process)."""
        if self.check.main:
            self.record["fidelity"]["calibrated"] = self.check.measure(model)

    def epoch_saved(self, model: nn.Module, state: dict[str, Any]) -> None:
        """After an epoch or an interruption (main process): the model with its training state."""
        self.record.update(epochs_done=int(state["epoch"]), complete=False, history=state["history"],
                           calibrated_batches=state["calibrated_batches"])  # fmt: skip
        self.write(model, state)

    def finished(self, result: HealResult) -> None:
        """The healed model with its fidelity, without training state (main process)."""
        if not self.check.main:
            return
        self.record["fidelity"]["healed"] = self.check.measure(result.model)
        self.record.update(epochs_done=len(result.history), complete=True, stopped_early=result.stopped_early,
                           calibrated_batches=result.calibrated_batches,
                           history=[e.to_dict() for e in result.history])  # fmt: skip
        self.write(result.model, None)
