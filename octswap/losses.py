"""Distillation losses for healing, one per kind of output (``HealOptions.distill``).

* ``logits`` (classifiers, ``Tensor[N, K]``): ``KL(softmax(t / T) || softmax(s / T)) * T^2``,
  averaged over samples (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network");
* ``pixels`` (segmentation, ``N x K x H x W``): the same KL per pixel, averaged over pixels;
* ``cwd`` (segmentation): channel-wise distillation (Shu et al., ICCV 2021, "Channel-wise
  Knowledge Distillation for Dense Prediction"; mmrazor's ``ChannelWiseDivergence``): each
  channel's map softened over its ``H x W`` positions, ``KL * T^2`` summed over positions and
  averaged over channels and samples;
* ``features`` (detectors and anything else): normalised MSE of feature maps, the squared
  error of each sample's channel map divided by that map's variance in the teacher (over
  its positions): the MSE of both maps standardised with the *teacher's* statistics.
  Unlike PKD's standardising of each model by its own statistics (Cao et al., NeurIPS 2022),
  it keeps the scale the original's next layers read; unlike one global ``/ mean(t^2)``, a
  near-constant channel cannot drown the others; and per sample, it is the same loss
  whether a batch runs in one process or is split across several (DDP). Averaged over the
  tensors, each weighing as many positions as its maps have (every position of every map
  counts once): the outputs of the converted regions (or named modules;
  :mod:`octswap.feature_taps`), else of the model.

With labels (``HealOptions.labels``) the cross-entropy with the classes (classifiers) or
the masks (segmentation, ``ignore_index`` left out), or a detector's own losses on its boxes
(torchvision's loss dict in train mode, summed), is mixed in with ``label_weight``.

Example:
    >>> criterion = make_criterion("segmentation", "cwd", temperature=4.0)      # doctest: +SKIP
    >>> loss = criterion(student(x), teacher(x), masks)                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from octswap.data import UNLABELLED
from octswap.errors import InputError
from octswap.fidelity.taps import named_leaves
from octswap.fidelity.tasks import task_output

__all__ = ["DISTILL_METHODS", "channel_wise_loss", "distillation_loss", "features_loss", "make_criterion",
           "method_for", "pixel_loss"]  # fmt: skip

#: ``HealOptions.distill`` values; ``auto`` picks by task (:func:`method_for`).
DISTILL_METHODS = ("auto", "logits", "pixels", "cwd", "features")
_FOR_TASK = {"classification": "logits", "segmentation": "pixels", "detection": "features", "features": "features"}
_TASKS_OF = {"logits": ("classification",), "pixels": ("segmentation",), "cwd": ("segmentation",),
             "features": ("classification", "segmentation", "detection", "features")}  # fmt: skip


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T^2``, averaged over the batch.

    The ``T^2`` keeps the gradients' scale independent of ``T`` (Hinton et al., 2015).
    """
    log_s = F.log_softmax(student.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2


def _two_class(logits: torch.Tensor) -> torch.Tensor:
    """One binary logit per pixel as two classes (``[0, z]``: softmax = sigmoid)."""
    return torch.cat([torch.zeros_like(logits), logits], 1) if logits.shape[1] == 1 else logits


def pixel_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-pixel ``KL(softmax(t / T) || softmax(s / T)) * T^2`` of ``[N, K, H, W]`` logits, averaged over pixels."""
    s, t = _two_class(student.float()), _two_class(teacher.float())
    log_s, log_t = F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1)
    per_pixel = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(1)
    return per_pixel.mean() * temperature**2


def channel_wise_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Channel-wise distillation of ``[N, C, H, W]`` maps: softmax over ``H x W`` per channel,
    ``KL * T^2`` summed over positions, averaged over ``N x C`` (Shu et al., 2021)."""
    n, c = teacher.shape[:2]
    log_s = F.log_softmax(student.float().reshape(n, c, -1) / temperature, dim=2)
    log_t = F.log_softmax(teacher.float().reshape(n, c, -1) / temperature, dim=2)
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum") * temperature**2 / (n * c)


def _normalised_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per sample and channel ``mean((s - t)^2) / (var(t) + eps)`` over the positions (over all
    of a sample's values when there is one position or no channel dim), averaged;
    ``eps`` is 1e-3 of the sample's mean variance and of its mean square, plus 1e-8, so dead
    channels stay finite, and so do maps that are near-constant as a whole (a constant map is
    then matched to about its relative error, not to 1e8 times its absolute one)."""
    n = len(t)
    if t.ndim >= 3 and t[0, 0].numel() > 1:
        t, s = t.reshape(n, t.shape[1], -1), s.reshape(n, t.shape[1], -1)
    else:
        t, s = t.reshape(n, 1, -1), s.reshape(n, 1, -1)
    variance = t.var(2, unbiased=False)  # [N, C]
    power = t.pow(2).mean((1, 2)).unsqueeze(1)  # [N, 1]
    eps = 1e-3 * (variance.mean(1, keepdim=True) + power) + 1e-8
    return ((s - t).pow(2).mean(2) / (variance + eps)).mean()


def features_loss(student: Any, teacher: Any) -> torch.Tensor:
    """Normalised MSE (:func:`_normalised_mse`) per floating tensor ``[N, ...]`` of two outputs
    of the same structure (tensors, dicts, lists...), averaged over the tensors weighted by their
    positions (``H x W`` of a map, 1 for a vector): every position of every map counts once.

    An FPN's levels thus weigh as their sizes (a 32x32 level 64 times its 4x4 one); weighted
    equally, the coarse levels and the RPN's outputs on them took most of the loss, and a
    detector healed on the digit scenes (README) reached 95.5 mAP@0.5 instead of 97.3.

    Raises:
        InputError: the outputs hold no floating tensor in common.
    """
    leaves_s = named_leaves(student)
    terms, positions = [], []
    for name, t in named_leaves(teacher).items():
        s = leaves_s.get(name)
        if isinstance(t, torch.Tensor) and isinstance(s, torch.Tensor) and t.is_floating_point() and s.shape == t.shape:
            if t.ndim >= 1 and len(t):
                terms.append(_normalised_mse(s.float(), t.detach().float()))
                positions.append(float(t[0, 0].numel()) if t.ndim >= 3 else 1.0)
    if not terms:
        raise InputError("feature distillation found no output tensor of the same shape in both models")
    weights = torch.tensor(positions, device=terms[0].device)
    return (torch.stack(terms) * (weights / weights.sum())).sum()


def method_for(task: str, distill: str) -> str:
    """The distillation method for ``task`` (``auto``: logits, pixels or features by task).

    Raises:
        InputError: ``distill`` does not apply to ``task``.
    """
    method = _FOR_TASK[task] if distill == "auto" else distill
    if task not in _TASKS_OF[method]:
        raise InputError(f"--distill {method} needs a {' or '.join(_TASKS_OF[method])} model; this one is a {task} "
                         f"model (--distill features applies to any)")  # fmt: skip
    return method


def make_criterion(task: str, method: str, *, temperature: float = 4.0, labels: bool = False,
                   label_weight: float = 0.5, ignore_index: int = 255,
                   feature_weight: float = 0.0) -> Callable[[Any, Any, Any], torch.Tensor]:
    """``criterion(student_output, teacher_output, labels) -> loss`` for ``task`` and ``method``
    (see the module docstring); ``HealOptions`` carries the keyword arguments.

    Labels: ``Tensor[N]`` classes (``-1`` unknown) or ``Tensor[N, H, W]`` masks; read only
    with ``labels=True``, their cross-entropy then weighing ``label_weight``. A detector with
    ``labels=True`` gives ``(taps, loss dict)`` as its output (its train-mode forward on the
    targets, :class:`octswap.feature_taps.Tapped` with ``complete``): the sum of its own losses
    weighs ``label_weight``. With
    ``features`` the outputs are compared whole (for regions, the dict
    :class:`octswap.feature_taps.Tapped` returns). With ``feature_weight > 0`` (not with
    ``features``) both outputs are ``{"output", "features"}`` of
    :func:`octswap.block_features.block_features`: the loss of the outputs plus
    ``feature_weight`` times the normalised MSE of the blocks' features.
    """

    def mixed(loss: torch.Tensor, ce: Callable[[], torch.Tensor | None]) -> torch.Tensor:
        term = ce() if labels else None
        return loss if term is None else (1 - label_weight) * loss + label_weight * term

    def logits(student: Any, teacher: Any, targets: Any) -> torch.Tensor:
        s = task_output("classification", student, which="converted")
        t = task_output("classification", teacher, which="original")

        def ce() -> torch.Tensor | None:
            known = targets != UNLABELLED
            return F.cross_entropy(s.float()[known], targets[known]) if bool(known.any()) else None

        return mixed(distillation_loss(s, t, temperature), ce)

    def dense(student: Any, teacher: Any, targets: Any) -> torch.Tensor:
        s = task_output("segmentation", student, which="converted")
        t = task_output("segmentation", teacher, which="original")
        loss = (pixel_loss if method == "pixels" else channel_wise_loss)(s, t, temperature)

        def ce() -> torch.Tensor | None:
            if not (isinstance(targets, torch.Tensor) and targets.ndim == 3):
                return None
            valid = targets[targets != ignore_index]
            classes = max(2, s.shape[1])
            if valid.numel() and (int(valid.max()) >= classes or int(valid.min()) < 0):
                raise InputError(f"mask label {int(valid.max())} is beyond the model's {classes} classes "
                                 f"(labels 0..{classes - 1}, {ignore_index} ignored)")  # fmt: skip
            if s.shape[1] == 1:
                keep = targets != ignore_index
                return F.binary_cross_entropy_with_logits(s.float()[:, 0][keep], targets[keep].float())
            return F.cross_entropy(s.float(), targets, ignore_index=ignore_index)

        return mixed(loss, ce)

    def features(student: Any, teacher: Any, targets: Any) -> torch.Tensor:
        if task == "detection" and labels:  # (taps, the detector's own loss dict in train mode)
            taps, own = student
            return mixed(features_loss(taps, teacher), lambda: sum(own.values()))
        return features_loss(student, teacher)

    criterion = {"logits": logits, "pixels": dense, "cwd": dense, "features": features}[method]
    if feature_weight <= 0:
        return criterion

    def with_blocks(student: Any, teacher: Any, targets: Any) -> torch.Tensor:
        blocks = features_loss(student["features"], teacher["features"])
        return criterion(student["output"], teacher["output"], targets) + feature_weight * blocks

    return with_blocks
