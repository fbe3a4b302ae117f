"""Healing a converted model: knowledge distillation from its original.

The original (teacher: frozen, eval mode) labels every training batch with its outputs;
the converted model (student) learns to match them. For a classifier:

    loss = KL(softmax(t / T) || softmax(s / T)) * T^2          (Hinton et al., 2015)

plus, with labels, ``label_weight`` times the cross-entropy with the true classes
(the distillation term then weighs ``1 - label_weight``). No labels are needed.
Segmentation models match per-pixel logits, detectors (and any other model) the
feature maps of their converted regions: :mod:`octswap.losses`.

A plain PyTorch loop in the manner of torchvision's ``references/classification/train.py``
(its pieces are in :mod:`octswap.training`): AdamW, linear warm-up then cosine decay per
step, gradient clipping, channels-last, autocast on CUDA, DistributedDataParallel under
``torchrun`` (``DistributedSampler``, rank 0 alone measures, prints and saves; see
:mod:`octswap.distributed`), and a training state (optimizer, scheduler, position in the
epoch, random state) that resumes exactly where it stopped.

Example:
    >>> result = heal(converted, original, train_data, options=HealOptions(epochs=3))  # doctest: +SKIP
    >>> result.model   # the healed copy; ``converted`` itself is untouched              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from octswap.data import Data
from octswap.distributed import World, broadcast_flag, local_device, process_group
from octswap.errors import InputError, OctswapError
from octswap.losses import distillation_loss, make_criterion, method_for
from octswap.training import (
    Criterion,
    EpochResult,
    HealOptions,
    Run,
    StepInfo,
    TrainingState,
    calibrate,
    evaluate,
    prepare_models,
    resume_run,
    setup_run,
    train_one_epoch,
)

__all__ = [
    "EpochResult",
    "HealInterrupted",
    "HealOptions",
    "HealResult",
    "StepInfo",
    "distillation_loss",
    "heal",
]

logger = logging.getLogger(__name__)


@dataclass
class HealResult:
    """What :func:`heal` returns: the healed model (eval mode) and what happened."""

    model: nn.Module
    history: list[EpochResult] = field(default_factory=list)
    stopped_early: bool = False
    calibrated_batches: int = 0


class HealInterrupted(OctswapError):
    """Training stopped on request (Ctrl-C); ``state`` holds where, to resume from."""

    exit_code = 130

    def __init__(self, message: str, state: dict[str, Any]) -> None:
        super().__init__(message)
        self.state = state


def require_labels(train: Data | Dataset, options: HealOptions) -> None:
    """Check that ``train`` has labels when ``options.labels`` asks to learn from them.

    Raises:
        InputError: ``options.labels`` but ``train`` is a :class:`Data` without labels.
    """
    if options.labels and isinstance(train, Data) and not train.labelled:
        raise InputError(
            f"learning from labels (labels=True, --labels) needs labelled data but {train.path} has none "
            "(class sub-folders, images/ + masks/, or COCO boxes with --annotations; or heal by distillation alone)"
        )


def _training_set(train: Data | Dataset, options: HealOptions, val: Data | Dataset | None) -> Dataset:
    """The dataset to train on, once the inputs of :func:`heal` are known to fit together.

    Raises:
        InputError: no training samples, labels asked for but missing, ``target`` without ``val``.
    """
    dataset = train.dataset if isinstance(train, Data) else train
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise InputError("no training samples")
    require_labels(train, options)
    if options.target is not None and val is None:
        raise InputError("target needs val data to measure agreement on")
    return dataset


@dataclass(frozen=True)
class _Hooks:
    """The callbacks of :func:`heal` (see there)."""

    on_step: Callable[[StepInfo], None] | None = None
    on_epoch: Callable[[EpochResult], None] | None = None
    save: Callable[[nn.Module, dict[str, Any]], None] | None = None
    stop: Callable[[], bool] | None = None
    on_calibrated: Callable[[nn.Module], None] | None = None


def heal(
    student: nn.Module,
    teacher: nn.Module,
    train: Data | Dataset,
    *,
    options: HealOptions | None = None,
    val: Data | Dataset | None = None,
    resume: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    save: Callable[[nn.Module, dict[str, Any]], None] | None = None,
    stop: Callable[[], bool] | None = None,
    on_calibrated: Callable[[nn.Module], None] | None = None,
    inplace: bool = False,
) -> HealResult:
    """Distil ``teacher`` (the original) into ``student`` (its conversion).

    Args:
        student: The converted model; trained on a deep copy unless ``inplace``.
        teacher: The original with its trained weights; its weights are never changed, but it is
            put in eval mode on ``device`` with ``requires_grad`` off (and channels-last if asked).
        train: Training samples ``(input, label)`` (labels only used with ``options.labels``).
        options: See :class:`HealOptions`.
        val: Validation samples: after every epoch the fidelity (agreement, accuracy) is
            measured on them (rank 0) and ``options.target`` can stop the run early.
        resume: A training state given to ``save`` earlier; ``student`` must then hold the
            weights saved with it. BatchNorm re-estimation is not repeated.
        device: ``"cpu"`` or ``"cuda"`` (under torchrun, ``cuda:LOCAL_RANK``).
        on_step, on_epoch: Progress callbacks (rank 0 only).
        save: ``save(student, state)`` after every epoch and when stopped (rank 0 only);
            ``state`` is plain data (tensors, numbers, strings) to resume from.
        stop: Polled after every step; when it returns true (on any rank) the state is
            saved and :class:`HealInterrupted` is raised.
        on_calibrated: Called with the model after BatchNorm re-estimation (all ranks).
        inplace: Train ``student`` itself.

    Returns:
        :class:`HealResult` with the healed model in eval mode.

    Raises:
        InputError: labels requested but missing, no training samples, ``options.target``
            without ``val``.
        HealInterrupted: ``stop`` asked to stop (exit code 130 in the CLI).
    """
    options = options or HealOptions()
    device = torch.device(device)
    hooks = _Hooks(on_step=on_step, on_epoch=on_epoch, save=save, stop=stop, on_calibrated=on_calibrated)
    with process_group(device) as world:
        return _heal(student, teacher, train, options=options, val=val, resume=resume,
                     device=local_device(device, world), world=world, hooks=hooks, inplace=inplace)  # fmt: skip


def _heal(
    student: nn.Module,
    teacher: nn.Module,
    train: Data | Dataset,
    *,
    options: HealOptions,
    val: Data | Dataset | None,
    resume: Mapping[str, Any] | None,
    device: torch.device,
    world: World,
    hooks: _Hooks,
    inplace: bool,
) -> HealResult:
    """:func:`heal` inside the process group: torchvision's ``main``, setup, resume, then the epochs."""
    dataset = _training_set(train, options, val)
    model = prepare_models(student, teacher, options, device, inplace=inplace)
    task, method = _task_and_method(teacher, dataset, options)
    if options.labels and task == "segmentation" and isinstance(train, Data) and train.kind != "masks":
        raise InputError(f"learning from labels (labels=True, --labels) with a segmentation model needs masks "
                         f"(a folder holding images/ and masks/); {train.path} has none")  # fmt: skip
    if options.labels and task == "detection" and isinstance(train, Data) and train.kind != "coco":
        raise InputError(f"learning from labels (labels=True, --labels) with a detector needs its boxes "
                         f"(annotations=, --annotations); {train.path} has none")  # fmt: skip
    torch.manual_seed(options.seed)
    sampler = DistributedSampler(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True,
                                 seed=options.seed)  # fmt: skip
    state = TrainingState() if resume is None else TrainingState.from_dict(resume)
    if resume is None:
        state.calibrated_batches = calibrate(model, dataset, sampler, options=options, device=device, world=world)
        if state.calibrated_batches > 0 and hooks.on_calibrated is not None:
            hooks.on_calibrated(model)
    # Feature distillation trains only the tapped modules; a detector's own loss reaches all of it.
    own_loss = task == "detection" and options.labels
    frozen = _freeze_outside(model, options.features if method == "features" and not own_loss else None)
    run = setup_run(model, teacher, dataset, sampler, options=options, val=val, device=device, world=world,
                    task=task, method=method)  # fmt: skip
    if resume is not None:
        resume_run(run, resume)
    try:
        criterion = make_criterion(task, method, temperature=options.temperature, labels=options.labels,
                                   label_weight=options.label_weight, ignore_index=options.ignore_index,
                                   feature_weight=options.feature_weight)  # fmt: skip
        _fit(run, state, criterion, hooks)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    model.eval()
    return HealResult(model=model, history=state.history, stopped_early=state.stopped_early,
                      calibrated_batches=state.calibrated_batches)  # fmt: skip


def _task_and_method(teacher: nn.Module, dataset: Dataset, options: HealOptions) -> tuple[str, str]:
    """The task (``options.task`` or the teacher's output on one sample's shape) and the distillation method.

    Raises:
        InputError: ``options.task`` or ``options.distill`` does not fit the teacher,
            labels are asked of a model of no known task, or ``options.features`` without
            feature distillation.
    """
    from octswap.fidelity.tasks import model_task

    sample = dataset[0][0]
    task = model_task(teacher, tuple(sample.shape), task=options.task)
    method = method_for(task, options.distill)
    if options.labels and task == "features":
        raise InputError("learning from labels (labels=True, --labels) needs a classifier, a segmentation model "
                         "or a detector; heal a model of other outputs by distillation alone")  # fmt: skip
    if options.features is not None and method != "features":
        raise InputError(f"features= (--features) names the modules of feature distillation, but this run "
                         f"distils {method} (distill={options.distill!r}); drop it or distil features")
    if options.feature_weight > 0 and method == "features":
        raise InputError("feature_weight (--feature-weight) adds block features to the distillation of the outputs; "
                         "with distill='features' (--distill features) features are all it matches: drop one")
    logger.info("healing a %s model by %s distillation", task, method)
    return task, method


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _freeze_outside(model: nn.Module, names: tuple[str, ...] | None) -> list[nn.Parameter]:
    """Turn off ``requires_grad`` outside the named modules (feature distillation trains only
    what its loss reaches); returns the parameters turned off, to turn back on."""
    if not names:
        return []
    try:
        inside = {id(p) for name in names for p in model.get_submodule(name).parameters()}
    except AttributeError:
        missing = [n for n in names if not _has_submodule(model, n)]
        raise InputError(f"--features: {', '.join(map(repr, missing))} is not a submodule of the model") from None
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in inside]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def _fit(run: Run, state: TrainingState, criterion: Criterion, hooks: _Hooks) -> None:
    """The remaining epochs: train, evaluate, save; stop early at ``options.target``.

    Raises:
        HealInterrupted: ``hooks.stop`` asked to stop (the state is saved first).
    """
    options, world = run.options, run.world
    while state.epoch < options.epochs and not state.stopped_early:
        started = time.perf_counter() - state.seconds
        if train_one_epoch(run, state, criterion, on_step=hooks.on_step, stop=hooks.stop):
            _interrupt(run, state, hooks)
        fidelity = evaluate(run)
        done = EpochResult(state.epoch + 1, state.loss_sum / max(state.samples, 1), state.samples * world.world_size,
                           time.perf_counter() - started, run.lr, fidelity)  # fmt: skip
        state.finish_epoch(done)
        reached = fidelity is not None and options.target is not None and fidelity.agreement >= options.target
        # An F1 of 1 because neither model detected anything is no agreement to stop at.
        reached = reached and not (fidelity.detection is not None and not fidelity.detection.detections_original)
        state.stopped_early = broadcast_flag(reached, world) and state.epoch < options.epochs
        saved = {**state.to_dict(run), "stopped_early": state.stopped_early}
        if world.is_main:
            if hooks.on_epoch is not None:
                hooks.on_epoch(done)
            if hooks.save is not None:
                hooks.save(run.model, saved)
        if state.stopped_early:
            agreement = fidelity.agreement  # type: ignore[union-attr]
            logger.info("agreement %.4f reached target %.4f after epoch %d", agreement, options.target, state.epoch)


def _interrupt(run: Run, state: TrainingState, hooks: _Hooks) -> NoReturn:
    """Save where the run stopped (main process) and raise :class:`HealInterrupted` with it."""
    saved = state.to_dict(run)
    if run.world.is_main and hooks.save is not None:
        hooks.save(run.model, saved)
    raise HealInterrupted(
        f"interrupted in epoch {state.epoch + 1} after step {state.step_in_epoch} of {run.steps_per_epoch}", saved
    )
