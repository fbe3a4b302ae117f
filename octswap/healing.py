"""Checkpoint in, healed checkpoint out: what ``octswap heal`` runs.

Reads a converted checkpoint, rebuilds its original with the trained weights it was
converted from (the teacher), opens the data with the model's own preprocessing,
measures the fidelity of the converted model, distils (:mod:`octswap.distillation`)
and writes an ordinary octswap checkpoint after every epoch (atomically) whose
``healing`` record says how it was healed and what the fidelity was before and after,
and whose ``training`` state lets ``--resume`` carry on; the finished file drops it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from octswap import __version__
from octswap.checkpoint import Checkpoint, load, read, save
from octswap.data import Data, Preprocessing, choose_transform, make_loader, open_data
from octswap.distillation import EpochResult, HealOptions, HealResult, StepInfo, heal
from octswap.errors import CheckpointError, InputError, OutputExistsError
from octswap.fidelity import Fidelity, measure_fidelity
from octswap.plan import example_input

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
            f"{ckpt.path} builds its model with {ckpt.source.name!r}; pass --allow-import if you trust it"
        )
    return ckpt.source.load(weights=weights).eval()


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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
        allow_import: Let the checkpoint import its model factory.
        resume: Continue the unfinished run saved in ``output``.
        force: Overwrite an existing ``output`` (a new run).
        device: ``cpu`` or ``cuda``.
        on_step, on_epoch, stop: See :func:`octswap.distillation.heal`.

    Raises:
        OutputExistsError: ``output`` exists and neither ``force`` nor ``resume``.
        CheckpointError, WeightsError, InputError: bad checkpoint, teacher or data.
        HealInterrupted: ``stop`` asked to stop; progress is in ``output``.
    """
    output = Path(output)
    ckpt = read(checkpoint)
    if ckpt.inference is not None and ckpt.inference.fold_bn:
        raise InputError(
            f"{ckpt.path} was saved for inference (BatchNorm folded into the convs); heal the checkpoint "
            "written without --optimize-for-inference"
        )
    previous: Checkpoint | None = None
    if output.exists():
        if resume:
            previous = read(output)
            if previous.healing is None:
                raise InputError(f"--resume: {output} is not a healing run (no healing record)")
            if previous.plan.to_dict() != ckpt.plan.to_dict():
                raise InputError(f"--resume: {output} was healed from a different conversion than {ckpt.path}")
            if previous.training is None:
                logger.info("%s already holds a finished healing run", output)
                return HealOutcome(output, previous.healing, already_complete=True)
        elif not force:
            raise OutputExistsError(f"{output} exists; pass --force to overwrite it, or --resume to continue it")
    elif resume:
        logger.warning("--resume: %s does not exist yet; starting a new run", output)

    options = options or HealOptions()
    if previous is not None:
        saved = HealOptions.from_dict(previous.healing["options"])  # type: ignore[index]
        if replace(saved, workers=options.workers) != options:
            logger.warning("resuming with the options the run started with, not the ones given")
        options = replace(saved, workers=options.workers)
    teacher = load_teacher(ckpt, weights=teacher_weights, allow_import=allow_import)
    student = load(previous.path if previous is not None else ckpt.path, allow_import=allow_import, compile=False)
    shape = ckpt.plan.input_shape
    transform = choose_transform(shape, model_name=ckpt.source.name, weights=teacher_weights or ckpt.source.weights,
                                 preprocessing=preprocessing)  # fmt: skip
    train = open_data(data, input_shape=shape, transform=transform, limit=limit)
    if options.labels and not train.labelled:
        raise InputError(f"--labels: {train.path} has no labels (use --no-labels, or a folder of class sub-folders)")
    val_data = open_data(val, input_shape=shape, transform=transform) if val is not None else None
    # Without --val: a fixed subset of the training data, no larger than --limit asks.
    sample = min(TRAIN_SAMPLE, limit) if limit is not None else TRAIN_SAMPLE
    check: Data = val_data or open_data(data, input_shape=shape, transform=transform, limit=sample, seed=1)
    check_loader = make_loader(check, batch_size=options.batch_size, workers=options.workers)
    where = "validation data" if val_data is not None else f"training data ({len(check)} samples)"
    main = _is_main()
    stages = None
    if main:
        from octswap.flops import count_cost
        from octswap.stages import stage_names

        stages = stage_names(teacher, count_cost(teacher, example_input(shape)).by_module)

    def measure(model: nn.Module) -> dict[str, Any]:
        return measure_fidelity(teacher, model, check_loader, stages=stages, data=where).to_dict()

    if previous is not None:
        record = dict(previous.healing)  # type: ignore[arg-type]
    else:
        record = {
            "method": "distillation",
            "octswap_version": __version__,
            "from_checkpoint": str(ckpt.path.resolve()),
            "teacher": {"name": ckpt.source.name, "weights": teacher_weights or ckpt.source.weights},
            "options": options.to_dict(),
            "data": train.describe(),
            "val": None if val_data is None else val_data.describe(),
            "device": device,
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "fidelity": {"data": where, "converted": measure(student) if main else None,
                         "calibrated": None, "healed": None},  # fmt: skip
        }
    overwrite = force or resume

    def write(model: nn.Module, training: dict[str, Any] | None) -> None:
        nonlocal overwrite
        save(output, model, ckpt.plan, source=ckpt.source, report=ckpt.report, healing=record, training=training,
             force=overwrite)  # fmt: skip
        overwrite = True  # from now on the file is this run's own

    def calibrated(model: nn.Module) -> None:
        if main:
            record["fidelity"]["calibrated"] = measure(model)

    def saved(model: nn.Module, state: dict[str, Any]) -> None:
        record.update(epochs_done=int(state["epoch"]), complete=False, history=state["history"],
                      calibrated_batches=state["calibrated_batches"])  # fmt: skip
        write(model, state)

    result = heal(
        student, teacher, train, options=options, val=val_data, device=device,
        resume=previous.training if previous is not None else None,
        on_step=on_step, on_epoch=on_epoch, save=saved, stop=stop, on_calibrated=calibrated,
    )  # fmt: skip
    if main:
        record["fidelity"]["healed"] = measure(result.model)
        record.update(epochs_done=len(result.history), complete=True, stopped_early=result.stopped_early,
                      calibrated_batches=result.calibrated_batches, history=[e.to_dict() for e in result.history])  # fmt: skip
        write(result.model, None)
    return HealOutcome(output, record, result=result)
