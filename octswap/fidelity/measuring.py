"""The measuring loop: both models over the same batches, figures per task.

Both models run in eval mode without gradients. The task (:mod:`octswap.fidelity.tasks`)
is guessed from the original's first output unless given; its tally reads the part of the
output it needs, every task but detection also compares the outputs tensor by tensor, and
the per-stage drift compares the outputs of the named stages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from octswap.data import batches as iterate
from octswap.errors import InputError
from octswap.eval_mode import eval_mode
from octswap.fidelity.classification import ClassificationTally
from octswap.fidelity.detection import DetectionTally
from octswap.fidelity.outputs import OutputsTally
from octswap.fidelity.result import Fidelity, StageDrift
from octswap.fidelity.segmentation import SegmentationTally
from octswap.fidelity.taps import GraphTaps, RelativeError, graph_taps, hooked
from octswap.fidelity.tasks import guess_task, task_output
from octswap.stages import stage_names

__all__ = ["measure_fidelity"]

logger = logging.getLogger(__name__)


class _FeaturesTally:
    """``features``: nothing beyond the outputs compared tensor by tensor."""

    def add(self, o: Any, c: Any, labels: Any) -> None:
        pass

    def figures(self) -> dict[str, Any]:
        return {}


def _tallies(ignore_index: int, score_threshold: float) -> dict[str, Callable[[], Any]]:
    """Task -> a new tally for it (``add(original, converted, labels)``, ``figures()``)."""
    return {
        "classification": ClassificationTally,
        "segmentation": lambda: SegmentationTally(ignore_index=ignore_index),
        "detection": lambda: DetectionTally(score_threshold=score_threshold),
        "features": _FeaturesTally,
    }


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _samples(inputs: Any) -> int:
    return len(inputs) if isinstance(inputs, (torch.Tensor, list, tuple)) else 1


class _Run:
    """State of one measurement: the task's tally, the outputs and the stage drift."""

    def __init__(self, task: str | None, stages: list[str], input_shape: Sequence[int], tally: dict[str, Any]) -> None:
        self.task = task
        self.stages = stages
        self.input_shape = input_shape
        self.factories = tally
        self.tally: Any = None
        self.outputs = OutputsTally()
        self.drift = {stage: RelativeError() for stage in stages}
        self.count = 0

    def add(self, out_o: Any, out_c: Any, labels: Any, pairs: dict[str, tuple[Any, Any]]) -> None:
        if self.tally is None:
            self.task = self.task or guess_task(out_o, self.input_shape)
            logger.info("fidelity: task %s", self.task)
            self.tally = self.factories[self.task]()
        o = task_output(self.task, out_o, which="original")
        c = task_output(self.task, out_c, which="converted")
        if self.task != "detection":
            self.outputs.add(out_o, out_c)
        self.tally.add(o, c, labels)
        for stage, (conv_value, orig_value) in pairs.items():
            self.drift[stage].add_tree(conv_value, orig_value)

    def fidelity(self, data: str) -> Fidelity:
        if self.count == 0 or self.tally is None:
            raise InputError("no samples to measure fidelity on")
        figures: dict[str, Any] = {"relative_error": self.outputs.relative_error(), "kl": None}
        figures.update(self.tally.figures())
        if self.task == "features":
            cosine = self.outputs.mean_cosine()
            if cosine is None:
                raise InputError("the models' outputs hold no floating-point tensor to compare (give --task)")
            figures["agreement"] = cosine
        stages = tuple(StageDrift(s, self.drift[s].value) for s in self.stages if self.drift[s].measured)
        return Fidelity(samples=self.count, stages=stages, data=data, task=self.task or "features",
                        outputs=self.outputs.drifts(), **figures)  # fmt: skip


def _forward(original: nn.Module, converted: nn.Module, inputs: Any, taps: GraphTaps | None,
             hooks: dict[str, list[Any]] | None) -> tuple[Any, Any, dict[str, tuple[Any, Any]]]:
    """One batch through both models: their outputs and per stage ``(converted, original)``."""
    if taps is not None:
        out_c, out_o, pairs = taps.run(inputs)
    else:
        out_o, out_c = original(inputs), converted(inputs)
        pairs = {s: (v[1], v[0]) for s, v in (hooks or {}).items()}
    return out_o, out_c, pairs


@torch.no_grad()
def measure_fidelity(
    original: nn.Module,
    converted: nn.Module,
    loader: Iterable[Any],
    *,
    stages: Sequence[str] | None = None,
    batches: int | None = None,
    data: str = "",
    task: str | None = None,
    ignore_index: int = 255,
    score_threshold: float = 0.5,
) -> Fidelity:
    """Compare ``converted`` with ``original`` over every batch of ``loader``.

    Args:
        original: The unconverted model, with its trained weights.
        converted: What :func:`octswap.convert` (or ``heal``) made of it.
        loader: Yields ``(inputs, labels)`` (see :mod:`octswap.data`): labels ``Tensor[N]``
            (``-1`` when unknown), masks ``Tensor[N, H, W]``, or a list of
            ``{"boxes", "labels"}`` per image; or plain input tensors.
        stages: Module names whose outputs to compare (default: the top-level children,
            see :func:`octswap.stages.stage_names`); ``()`` skips the per-stage drift.
        batches: Stop after this many batches.
        data: A description of the data, kept in the result.
        task: ``classification``, ``segmentation``, ``detection`` or ``features``;
            ``None``: guessed from the original's first output
            (:func:`octswap.fidelity.tasks.guess_task`).
        ignore_index: Mask value left out of mIoU.
        score_threshold: Score from which a detection counts (detection).

    Returns:
        A :class:`Fidelity` (see :mod:`octswap.fidelity.result` for each task's figures);
        accuracies, mIoU and mAP against labels only when every sample has them.

    Raises:
        InputError: no samples; the output does not fit ``task``; a label out of range;
            the models' outputs differ in structure or shape.
        MissingExtraError: mIoU or mAP without torchmetrics / pycocotools.

    Example:
        >>> fid = measure_fidelity(model, converted, loader)   # doctest: +SKIP
        >>> fid.task, fid.agreement                            # doctest: +SKIP
        ('classification', 0.983)
    """
    stages = stage_names(original) if stages is None else list(stages)
    taps = graph_taps(original, converted, stages)
    device = _device(converted)
    run: _Run | None = None
    factories = _tallies(ignore_index, score_threshold)
    if task is not None and task not in factories:
        raise InputError(f"--task must be one of {', '.join(factories)}, got {task!r}")
    with eval_mode(original), eval_mode(converted), ExitStack() as stack:
        hooks = stack.enter_context(hooked(original, converted, stages)) if stages and taps is None else None
        for index, (inputs, labels) in enumerate(iterate(loader)):
            if batches is not None and index >= batches:
                break
            inputs = inputs.to(device)
            if run is None:
                if taps is not None:
                    taps.prepare(inputs)
                run = _Run(task, [s for s in stages if taps is None or s in taps.stages], inputs.shape[1:], factories)
            out_o, out_c, pairs = _forward(original, converted, inputs, taps, hooks)
            run.add(out_o, out_c, labels.to(device) if isinstance(labels, torch.Tensor) else labels, pairs)
            run.count += _samples(inputs)
            if hooks is not None:
                hooks.clear()
    if run is None:
        raise InputError("no samples to measure fidelity on")
    result = run.fidelity(data)
    logger.info("fidelity: %s", result.summary())
    return result
