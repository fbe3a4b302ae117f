"""The training loop of healing, in the manner of torchvision's ``references/classification/train.py``.

:func:`octswap.distillation.heal` runs these pieces in order:

1. :func:`prepare_models`: the student (a copy) and the frozen teacher on the device;
2. :func:`calibrate`: BatchNorm re-estimation before training (new runs only);
3. :func:`setup_run`: DDP wrapping, AdamW, the learning-rate schedule, AMP, as one :class:`Run`;
4. :func:`resume_run`: a saved run's optimizer, schedule and random state put back;
5. per epoch :func:`train_one_epoch`, then :func:`evaluate`.

Where a run stands (epoch, step, the sums of the epoch in progress, the finished epochs)
is a :class:`TrainingState`; its :meth:`TrainingState.to_dict` is what checkpoints save
to resume from.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from octswap.augment import augment_batch
from octswap.batchnorm import batchnorm_layers, recalibrate_batchnorm
from octswap.data import Data, batches, make_loader
from octswap.distributed import World, all_mean, average_, data_parallel
from octswap.errors import InputError
from octswap.fidelity import Fidelity, measure_fidelity
from octswap.heal_options import HealOptions

logger = logging.getLogger(__name__)

__all__ = [
    "Criterion",
    "EpochResult",
    "HealOptions",
    "Run",
    "StepInfo",
    "TrainingState",
    "calibrate",
    "evaluate",
    "prepare_models",
    "resume_run",
    "setup_run",
    "train_one_epoch",
]

#: ``criterion(student_output, teacher_output, labels) -> loss`` (see :func:`octswap.losses.make_criterion`).
Criterion = Callable[[Any, Any, Any], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """Progress after one optimizer step (for progress bars); ``epoch`` counts from 0."""

    epoch: int
    step: int
    steps: int
    loss: float
    samples_per_s: float
    lr: float


@dataclass(frozen=True)
class EpochResult:
    """One finished epoch (``epoch`` counts from 1; ``samples`` over all processes)."""

    epoch: int
    loss: float
    samples: int
    seconds: float
    lr: float
    fidelity: Fidelity | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "fidelity"}
        data["fidelity"] = None if self.fidelity is None else self.fidelity.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochResult:
        values = dict(data)
        fid = values.pop("fidelity", None)
        return cls(**values, fidelity=None if fid is None else Fidelity.from_dict(fid))


# ------------------------------------------------------------------ run, state
@dataclass
class Run:
    """Everything :func:`setup_run` set up; the loop's pieces read it, none replaces a field.

    ``model`` is the student being trained; ``trained`` is what the forward pass calls:
    ``model`` itself, or its ``DistributedDataParallel`` wrapper (around a
    :class:`~octswap.feature_taps.Tapped` ``model`` with feature distillation), and
    ``teach`` the teacher's counterpart. ``task`` and ``method`` are resolved (not ``auto``).
    """

    options: HealOptions
    world: World
    device: torch.device
    model: nn.Module
    trained: nn.Module
    teacher: nn.Module
    dataset: Dataset
    sampler: DistributedSampler
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    val_loader: DataLoader | None
    teach: nn.Module
    task: str
    method: str

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch of this process's shard."""
        return math.ceil(len(self.sampler) / self.options.batch_size)

    @property
    def own_loss(self) -> bool:
        """A detector healed with its labels: the student runs in train mode on the targets and
        returns its own loss dict beside its features."""
        return self.task == "detection" and self.options.labels

    @property
    def use_amp(self) -> bool:
        """Autocast (mixed precision) on CUDA only."""
        return self.device.type == "cuda"

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return float(self.optimizer.param_groups[0]["lr"])


@dataclass
class TrainingState:
    """Where a run stands. ``epoch`` and ``step_in_epoch`` are the next to run (from 0).

    ``loss_sum`` (mean loss over processes times samples), ``samples`` (this process's)
    and ``seconds`` are the sums of the epoch in progress, so that a resumed epoch reports
    its whole loss and time. ``history`` holds the finished epochs.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0
    history: list[EpochResult] = field(default_factory=list)
    calibrated_batches: int = 0
    stopped_early: bool = False

    def finish_epoch(self, done: EpochResult) -> None:
        """Record ``done`` and move to the start of the next epoch."""
        self.history.append(done)
        self.epoch += 1
        self.step_in_epoch, self.loss_sum, self.samples, self.seconds = 0, 0.0, 0, 0.0

    def to_dict(self, run: Run) -> dict[str, Any]:
        """Plain data (tensors, numbers, strings) to resume from: the ``training`` record of checkpoints.

        At the end of an epoch the caller adds ``"stopped_early"``.
        """
        return {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "steps_per_epoch": run.steps_per_epoch,
            "epoch_loss_sum": self.loss_sum, "epoch_samples": self.samples, "epoch_seconds": self.seconds,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "rng": torch.get_rng_state(), "history": [e.to_dict() for e in self.history],
            "calibrated_batches": self.calibrated_batches, "world_size": run.world.world_size,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> TrainingState:
        """The state :meth:`to_dict` saved (see :func:`resume_run` for the rest of it)."""
        return cls(
            epoch=int(saved["epoch"]), step_in_epoch=int(saved["step_in_epoch"]),
            loss_sum=float(saved.get("epoch_loss_sum", 0.0)), samples=int(saved.get("epoch_samples", 0)),
            seconds=float(saved.get("epoch_seconds", 0.0)),
            history=[EpochResult.from_dict(e) for e in saved.get("history", [])],
            calibrated_batches=int(saved.get("calibrated_batches", 0)), stopped_early=bool(saved.get("stopped_early")),
        )  # fmt: skip


# ------------------------------------------------------------------ setup
def prepare_models(
    student: nn.Module, teacher: nn.Module, options: HealOptions, device: torch.device, *, inplace: bool
) -> nn.Module:
    """The model to train (``student``, or a deep copy unless ``inplace``) on ``device``.

    ``teacher`` is moved there too, in eval mode with ``requires_grad`` off; both take
    the memory format of ``options.channels_last``.
    """
    model = student if inplace else copy.deepcopy(student)
    model.to(device)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    teacher.to(memory_format=memory_format)
    return model


def calibrate(
    model: nn.Module, dataset: Dataset, sampler: DistributedSampler, *, options: HealOptions, device: torch.device,
    world: World,
) -> int:  # fmt: skip
    """Re-estimate the BatchNorm statistics of ``model`` before training (``options.calibrate_bn`` batches).

    Every process re-estimates on its own shard; the processes then average the statistics.

    Returns:
        The batches used; 0 when ``options.calibrate_bn`` is 0 or ``model`` has no BatchNorm.
    """
    if options.calibrate_bn <= 0 or not batchnorm_layers(model):
        return 0
    loader = make_loader(dataset, batch_size=options.batch_size, workers=options.workers, sampler=sampler)
    sampler.set_epoch(-1)
    used = recalibrate_batchnorm(model, (x for x, _ in batches(loader)), batches=options.calibrate_bn, device=device,
                                 channels_last=options.channels_last)  # fmt: skip
    average_((buffer for bn in batchnorm_layers(model) for buffer in (bn.running_mean, bn.running_var)), world)
    return used


def setup_run(
    model: nn.Module, teacher: nn.Module, dataset: Dataset, sampler: DistributedSampler, *, options: HealOptions,
    val: Data | Dataset | None, device: torch.device, world: World, task: str, method: str,
) -> Run:  # fmt: skip
    """DDP wrapping (SyncBatchNorm on CUDA with ``bn="train"``), AdamW, the schedule and AMP.

    With feature distillation of named modules both models are :class:`~octswap.feature_taps.Tapped`
    and only those modules' parameters train (the caller froze the rest). Mixed precision
    on CUDA: bfloat16 where supported, else float16 with a gradient scaler.
    """
    from octswap.block_features import training_views

    tapped = options.features if method == "features" else None
    own_loss = task == "detection" and options.labels
    if own_loss and not tapped:
        raise InputError("a detector healed with its labels needs the modules whose features to distil (features=, "
                         "--features)")  # fmt: skip
    forward_model, teach = training_views(model, teacher, features=tapped, own_loss=own_loss,
                                          feature_weight=options.feature_weight,
                                          probe=lambda: _move(dataset[0][0].unsqueeze(0), device, options.channels_last))
    trained = data_parallel(forward_model, device, world,
                            sync_batchnorm=device.type == "cuda" and options.bn == "train")  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    steps = math.ceil(len(sampler) / options.batch_size) * options.epochs
    if world.is_main:
        _warn_few_updates(task, len(sampler), options)
    scheduler = _schedule(optimizer, steps, options.warmup)
    cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
    val_loader = make_loader(val, batch_size=options.batch_size, workers=options.workers) if val is not None else None
    return Run(options, world, device, model, trained, teacher, dataset, sampler, params, optimizer, scheduler,
               scaler, amp_dtype, val_loader, teach, task, method)  # fmt: skip


#: Fewer updates than this make a dense model's heal warn: on the digit scenes (README) a
#: segmentation model converted at alpha 0.5 healed to -8.5 mIoU points in 114 updates
#: (batch 16), -3.2 in 450 (batch 4, sliced kernels) and -0.3 in 900 (batch 2).
DENSE_MIN_UPDATES = 300


def _warn_few_updates(task: str, samples: int, options: HealOptions) -> None:
    """Warn when a segmentation model or detector gets fewer than :data:`DENSE_MIN_UPDATES`
    optimizer updates from ``samples`` per epoch, with a batch size that would give enough."""
    epochs, batch = options.epochs, options.batch_size
    steps = math.ceil(samples / batch) * epochs
    if task not in ("segmentation", "detection") or steps >= DENSE_MIN_UPDATES:
        return
    smaller = max(1, samples * epochs // DENSE_MIN_UPDATES)
    if smaller < batch:
        advice = f"batch size {smaller} gives {math.ceil(samples / smaller) * epochs}"
    else:
        advice = "more epochs or more data give more"
    logger.warning("%d epoch%s of %d samples at batch size %d: only %d updates; dense models heal much "
                   "further with several hundred (%s)", epochs, "" if epochs == 1 else "s", samples, batch, steps,
                   advice)  # fmt: skip


def resume_run(run: Run, saved: Mapping[str, Any]) -> None:
    """Put back the optimizer, schedule and random state of a saved :meth:`TrainingState.to_dict`."""
    run.optimizer.load_state_dict(_optimizer_state(saved["optimizer"]))
    run.scheduler.load_state_dict(dict(saved["scheduler"]))
    torch.set_rng_state(saved["rng"])


def _optimizer_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer state dict read back from a checkpoint (whose mapping keys are strings)."""
    return {"state": {int(k): dict(v) for k, v in state["state"].items()},
            "param_groups": [dict(g) for g in state["param_groups"]]}  # fmt: skip


def _schedule(optimizer: torch.optim.Optimizer, total: int, warmup: float) -> LRScheduler:
    """Linear warm-up from 1% of the peak, then cosine decay to 0, stepped per batch."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    warm = min(total - 1, round(warmup * total)) if warmup > 0 else 0
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
    if warm <= 0:
        return cosine
    return SequentialLR(optimizer, [LinearLR(optimizer, 0.01, 1.0, total_iters=warm), cosine], milestones=[warm])


# ------------------------------------------------------------------ the loop
def train_one_epoch(
    run: Run,
    state: TrainingState,
    criterion: Criterion,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> bool:
    """Train the rest of epoch ``state.epoch``, from step ``state.step_in_epoch``, updating ``state``.

    Args:
        run: What :func:`setup_run` made.
        state: Advanced after every step (step, loss and sample sums, seconds).
        criterion: The loss of a batch, computed under autocast.
        on_step: Called after every step (main process only).
        stop: Polled after every step; true on any process stops all of them there.

    Returns:
        True when ``stop`` asked to stop (``state`` is then just after that step), else
        False (the epoch is done; ``state`` still holds its sums).
    """
    options, world, device = run.options, run.world, run.device
    run.sampler.set_epoch(state.epoch)
    loader = make_loader(run.dataset, batch_size=options.batch_size, workers=options.workers,
                         sampler=_Skip(run.sampler, state.step_in_epoch * options.batch_size),
                         pin_memory=device.type == "cuda")  # fmt: skip
    _train_mode(run)
    started = time.perf_counter() - state.seconds
    for inputs, labels in batches(loader):
        inputs = _move(inputs, device, options.channels_last)
        labels = _labels_to(labels, device)
        if options.augment != "none":  # one view per sample, seen by both models
            inputs, labels = augment_batch(inputs, labels, kind=options.augment,
                                           seed=(options.seed, state.epoch, state.step_in_epoch, world.rank))
        with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.use_amp):
            with torch.no_grad():
                target = run.teach(inputs)
            output = run.trained(inputs, labels) if run.own_loss else run.trained(inputs)
            loss = criterion(output, target, labels)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if options.clip_grad is not None:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.params, options.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        state.step_in_epoch += 1
        asked = bool(stop and stop())
        mean_loss, stop_votes = all_mean([float(loss.detach()), 1.0 if asked else 0.0], world)
        state.loss_sum += mean_loss * len(inputs)
        state.samples += len(inputs)
        state.seconds = time.perf_counter() - started
        if on_step is not None and world.is_main:
            speed = state.samples * world.world_size / max(state.seconds, 1e-9)
            on_step(StepInfo(state.epoch, state.step_in_epoch, run.steps_per_epoch, mean_loss, speed, run.lr))
        if stop_votes > 0:
            return True
    return False


def evaluate(run: Run) -> Fidelity | None:
    """The student's fidelity to the teacher on the validation data (main process; ``None`` elsewhere or without)."""
    if run.val_loader is None or not run.world.is_main:
        return None
    return measure_fidelity(run.teacher, run.model, run.val_loader, stages=(), data="validation", task=run.task,
                            ignore_index=run.options.ignore_index)  # fmt: skip


def _train_mode(run: Run) -> None:
    """Train mode, but with ``bn="frozen"`` every BatchNorm keeps its running statistics (eval).

    Feature distillation of named modules: the model in eval mode (a detector takes its
    inference path, without targets) and only those modules in train mode; a detector healed
    with its labels stays in train mode whole (its own loss needs it)."""
    run.trained.train()
    if run.method == "features" and run.options.features and not run.own_loss:
        run.model.eval()
        for name in run.options.features:
            run.model.get_submodule(name).train()
    if run.options.bn == "frozen":
        for bn in batchnorm_layers(run.model):
            bn.eval()


def _labels_to(labels: Any, device: torch.device) -> Any:
    """Class labels or masks (a tensor), or detection targets (a list of dicts of tensors), on ``device``."""
    if isinstance(labels, torch.Tensor):
        return labels.to(device, non_blocking=True)
    if isinstance(labels, (list, tuple)) and all(isinstance(t, Mapping) for t in labels):
        return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in labels]
    return labels


def _move(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


class _Skip(Sampler[int]):
    """The indices of ``sampler`` from position ``skip`` on (resuming inside an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]
