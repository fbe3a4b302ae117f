"""Which task a model's output belongs to, and the part of it each task's figures read.

* ``classification``: ``Tensor[N, K]`` class logits;
* ``segmentation``: per-pixel class logits ``Tensor[N, K, H, W]`` at no less than a quarter of
  the input's resolution, alone, first in a tuple (smp's auxiliary head) or under ``"out"``
  (torchvision's segmentation models);
* ``detection``: torchvision-style detections, a list of dicts with ``boxes``, ``scores``
  and ``labels`` (one per image);
* ``features``: anything else; outputs are compared tensor by tensor.

Example:
    >>> guess_task(torch.zeros(2, 10), (3, 32, 32))
    'classification'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from octswap.errors import InputError
from octswap.fidelity.result import TASKS

__all__ = ["describe_output", "guess_task", "task_output"]

DETECTION_KEYS = ("boxes", "scores", "labels")


def describe_output(value: Any) -> str:
    """A short description of an output for error messages: ``Tensor[2, 10]``, ``list of 2 dict``..."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}"
    if isinstance(value, Mapping):
        return f"dict with keys {', '.join(map(str, list(value)[:5]))}"
    if isinstance(value, (list, tuple)):
        inner = type(value[0]).__name__ if value else "nothing"
        return f"{type(value).__name__} of {len(value)} {inner}"
    return type(value).__name__


def _detections(value: Any) -> list[Mapping[str, torch.Tensor]] | None:
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, Mapping) and all(k in v for k in DETECTION_KEYS) for v in value
    ):
        return list(value)
    return None


def _logit_map(value: Any) -> torch.Tensor | None:
    if isinstance(value, Mapping):
        value = value.get("out")
    elif isinstance(value, (list, tuple)) and value:
        value = value[0]
    return value if isinstance(value, torch.Tensor) and value.ndim == 4 else None


def guess_task(output: Any, input_shape: Sequence[int]) -> str:
    """The task of a model from one of its eval-mode outputs, for inputs ``(C, H, W)``."""
    if _detections(output) is not None:
        return "detection"
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        return "classification"
    logits = _logit_map(output)
    if logits is not None and logits.is_floating_point():
        height, width = input_shape[-2:]
        if logits.shape[-2] * 4 >= height and logits.shape[-1] * 4 >= width:
            return "segmentation"
    return "features"


def task_output(task: str, output: Any, *, which: str) -> Any:
    """The part of ``output`` a task's figures read: the logits tensor, the logit map, or
    the list of detections; ``features`` takes the output whole.

    Raises:
        InputError: the output is not what the task needs (``which``: "original" or
            "converted", for the message).
    """
    if task not in TASKS:
        raise InputError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "features":
        return output
    if task == "classification" and isinstance(output, torch.Tensor) and output.ndim == 2:
        return output.float()
    if task == "segmentation" and (logits := _logit_map(output)) is not None:
        return logits.float()
    if task == "detection" and (found := _detections(output)) is not None:
        return found
    need = {
        "classification": "Tensor[N, classes]",
        "segmentation": "per-pixel logits Tensor[N, classes, H, W]",
        "detection": "a list of dicts with boxes, scores and labels",
    }[task]
    raise InputError(f"--task {task} needs {need}; the {which} model returns {describe_output(output)}")


def model_task(model: Any, input_shape: Sequence[int], *, task: str | None = None) -> str:
    """The task of ``model`` from its eval-mode output on one zero input ``[1, C, H, W]``:
    ``task`` when given (checked against the output), else :func:`guess_task`.

    Raises:
        InputError: ``task`` is unknown or does not fit the output.
    """
    from octswap.eval_mode import eval_mode

    first = next(model.parameters(), None)
    probe = torch.zeros(1, *input_shape, device=first.device if first is not None else "cpu")
    with torch.no_grad(), eval_mode(model):
        output = model(probe)
    if task is None:
        return guess_task(output, input_shape)
    task_output(task, output, which="original")
    return task
