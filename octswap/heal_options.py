"""How :func:`octswap.distillation.heal` trains: :class:`HealOptions`, checked when made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from octswap.errors import InputError

__all__ = ["HealOptions"]


@dataclass(frozen=True)
class HealOptions:
    """How :func:`~octswap.distillation.heal` trains. Defaults are what ``octswap heal`` uses.

    Attributes:
        epochs: Passes over the training data.
        lr: Peak learning rate of AdamW (reached after the warm-up).
        weight_decay: AdamW's decoupled weight decay.
        batch_size: Samples per step *per process* (torchvision's convention under torchrun).
        temperature: Softening temperature ``T`` of both distributions.
        labels: Also learn from the data's labels: cross-entropy with classes or masks; a
            detector's own loss dict in train mode with its boxes (COCO annotations).
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
        distill: What to match (:mod:`octswap.losses`): ``auto`` (by task: ``logits`` for
            classifiers, ``pixels`` for segmentation, ``features`` otherwise), ``logits``,
            ``pixels``, ``cwd`` (channel-wise) or ``features``.
        features: With ``features``, the submodules whose outputs to match (default: the
            converted regions, see :func:`octswap.healing.default_features`); ``None``
            and no regions: the model's outputs.
        task: ``classification``, ``segmentation``, ``detection`` or ``features``
            (``None``: guessed from the teacher's output).
        ignore_index: Mask value left out of the cross-entropy with masks.
        feature_weight: Adds this times the normalised MSE of the converted blocks' outputs to the
            outputs' distillation (:mod:`octswap.block_features`; not with ``features``); 0: none.
        augment: The views both models are given while training (:mod:`octswap.augment`):
            ``none``, ``flip`` or ``crop`` (a random resized crop, then the flip).

    Raises:
        InputError: a value out of range (the message names the attribute).
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
    distill: str = "auto"
    features: tuple[str, ...] | None = None
    task: str | None = None
    ignore_index: int = 255
    feature_weight: float = 0.0
    augment: str = "none"

    def __post_init__(self) -> None:
        from octswap.augment import AUGMENTATIONS
        from octswap.fidelity.result import TASKS
        from octswap.losses import DISTILL_METHODS

        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.feature_weight >= 0, f"feature_weight must be >= 0, got {self.feature_weight}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size >= 1, f"batch_size must be positive, got {self.batch_size}"),
            (self.temperature > 0, f"temperature must be positive, got {self.temperature}"),
            (0 <= self.label_weight <= 1, f"label_weight must be in [0, 1], got {self.label_weight}"),
            (0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}"),
            (self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be positive, got {self.clip_grad}"),
            (self.calibrate_bn >= 0, f"calibrate_bn must be >= 0 batches, got {self.calibrate_bn}"),
            (self.bn in ("train", "frozen"), f"bn must be 'train' or 'frozen', got {self.bn!r}"),
            (self.target is None or 0 < self.target <= 1, f"target must be in (0, 1], got {self.target}"),
            (self.distill in DISTILL_METHODS, f"distill must be one of {', '.join(DISTILL_METHODS)}, got {self.distill!r}"),
            (self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"),
            (self.task is None or self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (self.features is None or (isinstance(self.features, tuple) and all(self.features)),
             f"features must be a tuple of module names, got {self.features!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = None if self.features is None else list(self.features)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealOptions:
        """The options saved by :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("features") is not None:
            values["features"] = tuple(values["features"])
        return cls(**values)
