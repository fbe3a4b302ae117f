"""Healing a converted model: knowledge distillation from its original.

The original (teacher: frozen, eval mode) labels every training batch with its logits;
the converted model (student) learns to match them:

    loss = KL(softmax(t / T) || softmax(s / T)) * T^2          (Hinton et al., 2015)

plus, with labels, ``label_weight`` times the cross-entropy with the true classes
(the distillation term then weighs ``1 - label_weight``). No labels are needed.

A plain PyTorch loop in the manner of torchvision's ``references/classification/train.py``:
AdamW, linear warm-up then cosine decay per step, gradient clipping, channels-last,
autocast on CUDA, DistributedDataParallel under ``torchrun`` (``DistributedSampler``,
rank 0 alone measures, prints and saves), and a training state (optimizer, scheduler,
position in the epoch, random state) that resumes exactly where it stopped.

Example:
    >>> result = heal(converted, original, train_data, options=HealOptions(epochs=3))  # doctest: +SKIP
    >>> result.model   # the healed copy; ``converted`` itself is untouched              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from octswap.batchnorm import batchnorm_layers, recalibrate_batchnorm
from octswap.data import UNLABELLED, Data, batches, make_loader
from octswap.errors import InputError, OctswapError
from octswap.fidelity import Fidelity, measure_fidelity

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


@dataclass(frozen=True)
class HealOptions:
    """How :func:`heal` trains. Defaults are what ``octswap heal`` uses.

    Attributes:
        epochs: Passes over the training data.
        lr: Peak learning rate of AdamW (reached after the warm-up).
        weight_decay: AdamW's decoupled weight decay.
        batch_size: Samples per step *per process* (torchvision's convention under torchrun).
        temperature: Softening temperature ``T`` of both distributions.
        labels: Add cross-entropy with the data's labels.
        label_weight: Weight of the cross-entropy when ``labels`` (distillation: ``1 - w``).
        warmup: Share of all steps with a linear warm-up from 1% of ``lr``.
        clip_grad: Clip the gradients' global L2 norm to this (``None``: no clipping).
        calibrate_bn: Batches of BatchNorm re-estimation before training (0: none).
        bn: ``"train"``: BatchNorm uses batch statistics while training (per process on
            CPU; SyncBatchNorm on CUDA under torchrun); ``"frozen"``: running statistics
            stay fixed, only the affine parameters learn.
        target: Stop early once the top-1 agreement on the validation data reaches this.
        seed: Seeds the sample order (and the random state of the run).
        channels_last: Train in channels-last memory format.
        workers: DataLoader worker processes (``None``: see :func:`octswap.data.make_loader`).
    """

    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    temperature: float = 4.0
    labels: bool = False
    label_weight: float = 0.5
    warmup: float = 0.05
    clip_grad: float | None = 5.0
    calibrate_bn: int = 100
    bn: str = "train"
    target: float | None = None
    seed: int = 0
    channels_last: bool = False
    workers: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size >= 1, f"--batch-size must be positive, got {self.batch_size}"),
            (self.temperature > 0, f"--temperature must be positive, got {self.temperature}"),
            (0 <= self.label_weight <= 1, f"--label-weight must be in [0, 1], got {self.label_weight}"),
            (0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}"),
            (self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be positive, got {self.clip_grad}"),
            (self.calibrate_bn >= 0, f"--calibrate-bn must be >= 0 batches, got {self.calibrate_bn}"),
            (self.bn in ("train", "frozen"), f"--bn must be 'train' or 'frozen', got {self.bn!r}"),
            (self.target is None or 0 < self.target <= 1, f"--target must be in (0, 1], got {self.target}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class StepInfo:
    """Progress after one optimizer step (for progress bars)."""

    epoch: int
    step: int
    steps: int
    loss: float
    samples_per_s: float
    lr: float


@dataclass(frozen=True)
class EpochResult:
    """One finished epoch."""

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


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T^2``, averaged over the batch.

    The ``T^2`` keeps the gradients' scale independent of ``T`` (Hinton et al., 2015).
    """
    log_s = F.log_softmax(student.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2


# --------------------------------------------------------------- distributed
@dataclass(frozen=True)
class _World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _world(device: torch.device) -> _World:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), once."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_mean(values: Sequence[float], world: _World) -> list[float]:
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if world.size > 1:
        dist.all_reduce(tensor)
        tensor /= world.size
    return tensor.tolist()


def _broadcast_flag(flag: bool, world: _World) -> bool:
    if world.size == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


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


# ------------------------------------------------------------------ training
def _optimizer_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer state dict read back from a checkpoint (whose mapping keys are strings)."""
    return {"state": {int(k): dict(v) for k, v in state["state"].items()},
            "param_groups": [dict(g) for g in state["param_groups"]]}  # fmt: skip


def _schedule(optimizer: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from 1% of the peak, then cosine decay to 0, stepped per batch."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    warm = min(total - 1, round(warmup * total)) if warmup > 0 else 0
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
    if warm <= 0:
        return cosine
    return SequentialLR(optimizer, [LinearLR(optimizer, 0.01, 1.0, total_iters=warm), cosine], milestones=[warm])


def _dataset(data: Data | Dataset) -> Dataset:
    return data.dataset if isinstance(data, Data) else data


def _move(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


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
        InputError: labels requested but missing, no training samples, a bad option.
        HealInterrupted: ``stop`` asked to stop (exit code 130 in the CLI).
    """
    options = options or HealOptions()
    device = torch.device(device)
    joined = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    world = _world(device)
    try:
        return _train(student, teacher, train, options=options, val=val, resume=resume, device=device, world=world,
                      on_step=on_step, on_epoch=on_epoch, save=save, stop=stop, on_calibrated=on_calibrated,
                      inplace=inplace)  # fmt: skip
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    student: nn.Module,
    teacher: nn.Module,
    train: Data | Dataset,
    *,
    options: HealOptions,
    val: Data | Dataset | None,
    resume: Mapping[str, Any] | None,
    device: torch.device,
    world: _World,
    on_step: Callable[[StepInfo], None] | None,
    on_epoch: Callable[[EpochResult], None] | None,
    save: Callable[[nn.Module, dict[str, Any]], None] | None,
    stop: Callable[[], bool] | None,
    on_calibrated: Callable[[nn.Module], None] | None,
    inplace: bool,
) -> HealResult:
    """The training loop of :func:`heal`, inside the process group."""
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dataset = _dataset(train)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise InputError("no training samples")
    if options.labels and isinstance(train, Data) and not train.labelled:
        raise InputError(f"--labels: {train.path} has no labels (use --no-labels, or a folder of class sub-folders)")
    if options.target is not None and val is None:
        raise InputError("--target needs --val data to measure agreement on")
    model = student if inplace else copy.deepcopy(student)
    model.to(device)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    teacher.to(memory_format=memory_format)

    torch.manual_seed(options.seed)
    result = HealResult(model=model)
    per_batch = options.batch_size
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=options.seed)
    steps_per_epoch = math.ceil(len(sampler) / per_batch)
    total = steps_per_epoch * options.epochs

    if resume is None and options.calibrate_bn > 0 and batchnorm_layers(model):
        # Every rank re-estimates on its own shard; ranks then average the statistics.
        calib_loader = make_loader(dataset, batch_size=per_batch, workers=options.workers, sampler=sampler)
        sampler.set_epoch(-1)
        result.calibrated_batches = recalibrate_batchnorm(
            model, (x for x, _ in batches(calib_loader)), batches=options.calibrate_bn, device=device,
            channels_last=options.channels_last,
        )  # fmt: skip
        if world.size > 1:
            for bn in batchnorm_layers(model):
                for buffer in (bn.running_mean, bn.running_var):
                    dist.all_reduce(buffer)
                    buffer /= world.size
        if on_calibrated is not None:
            on_calibrated(model)

    trained = model
    if world.size > 1:
        if device.type == "cuda" and options.bn == "train":
            trained = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None,
        )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = _schedule(optimizer, total, options.warmup)
    start_epoch, start_step = 0, 0
    if resume is not None:
        optimizer.load_state_dict(_optimizer_state(resume["optimizer"]))
        scheduler.load_state_dict(dict(resume["scheduler"]))
        start_epoch, start_step = int(resume["epoch"]), int(resume["step_in_epoch"])
        if resume.get("stopped_early"):
            start_epoch, result.stopped_early = options.epochs, True
        result.history = [_epoch_from_dict(e) for e in resume.get("history", [])]
        result.calibrated_batches = int(resume.get("calibrated_batches", 0))
        torch.set_rng_state(resume["rng"])

    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    val_loader = make_loader(val, batch_size=per_batch, workers=options.workers) if val is not None else None

    def state(epoch: int, step_in_epoch: int, partial: tuple[float, int, float] = (0.0, 0, 0.0)) -> dict[str, Any]:
        return {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "steps_per_epoch": steps_per_epoch,
            # Sums of the epoch in progress, so a resumed epoch reports its whole loss and time.
            "epoch_loss_sum": partial[0], "epoch_samples": partial[1], "epoch_seconds": partial[2],
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "history": [e.to_dict() for e in result.history],
            "calibrated_batches": result.calibrated_batches, "world_size": world.size,
        }  # fmt: skip

    for epoch in range(start_epoch, options.epochs):
        sampler.set_epoch(epoch)
        skip = start_step if epoch == start_epoch else 0
        loader = make_loader(dataset, batch_size=per_batch, workers=options.workers,
                             sampler=_Skip(sampler, skip * per_batch), pin_memory=device.type == "cuda")  # fmt: skip
        trained.train()
        if options.bn == "frozen":
            for bn in batchnorm_layers(model):
                bn.eval()
        partial = resume if resume is not None and epoch == start_epoch else {}  # a resumed epoch's sums so far
        loss_sum = float(partial.get("epoch_loss_sum", 0.0))
        seen = int(partial.get("epoch_samples", 0))
        started = time.perf_counter() - float(partial.get("epoch_seconds", 0.0))
        step = skip
        for inputs, labels in batches(loader):
            inputs = _move(inputs, device, options.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                with torch.no_grad():
                    target = teacher(inputs)
                output = trained(inputs)
                loss = distillation_loss(output, target, options.temperature)
                if options.labels:
                    known = labels != UNLABELLED
                    ce = F.cross_entropy(output.float()[known], labels[known]) if bool(known.any()) else loss * 0
                    loss = (1 - options.label_weight) * loss + options.label_weight * ce
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if options.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, options.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            stop_here = bool(stop and stop())
            mean_loss, stop_votes = _all_mean([float(loss.detach()), 1.0 if stop_here else 0.0], world)
            loss_sum += mean_loss * len(inputs)
            seen += len(inputs)
            if on_step is not None and world.main:
                elapsed = time.perf_counter() - started
                on_step(StepInfo(epoch, step, steps_per_epoch, mean_loss, seen * world.size / max(elapsed, 1e-9),
                                 optimizer.param_groups[0]["lr"]))  # fmt: skip
            if stop_votes > 0:
                saved = state(epoch, step, (loss_sum, seen, time.perf_counter() - started))
                if world.main and save is not None:
                    save(model, saved)
                raise HealInterrupted(f"interrupted in epoch {epoch + 1} after step {step} of {steps_per_epoch}", saved)
        fidelity = None
        if val_loader is not None and world.main:
            fidelity = measure_fidelity(teacher, model, val_loader, stages=(), data="validation")
        done = EpochResult(epoch + 1, loss_sum / max(seen, 1), seen * world.size, time.perf_counter() - started,
                           optimizer.param_groups[0]["lr"], fidelity)  # fmt: skip
        result.history.append(done)
        reached = fidelity is not None and options.target is not None and fidelity.agreement >= options.target
        stop_early = _broadcast_flag(reached, world) and epoch + 1 < options.epochs
        saved = {**state(epoch + 1, 0), "stopped_early": stop_early}
        if world.main:
            if on_epoch is not None:
                on_epoch(done)
            if save is not None:
                save(model, saved)
        if stop_early:
            result.stopped_early = True
            logger.info("agreement %.4f reached --target %.4f after epoch %d", fidelity.agreement, options.target, epoch + 1)  # type: ignore[union-attr]
            break
    model.eval()
    return result


def _epoch_from_dict(data: Mapping[str, Any]) -> EpochResult:
    values = dict(data)
    fid = values.pop("fidelity", None)
    return EpochResult(**values, fidelity=None if fid is None else Fidelity.from_dict(fid))
