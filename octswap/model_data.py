"""Data opened for one model: its task decides the transform, and the data's labels must fit it.

A classifier's images get its own preprocessing (:func:`octswap.data.choose_transform`); a
detector's get ``[0, 1]`` images (it normalises inside); images with masks or COCO boxes get a
joint transform (:func:`octswap.dense_data.joint_transform`) so the labels follow their images.

Example:
    >>> data, task = open_for_model("scenes/val", model=unet, input_shape=(3, 128, 128))  # doctest: +SKIP
    >>> task, data.kind                                                                     # doctest: +SKIP
    ('segmentation', 'masks')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from octswap.data import Data, Preprocessing, choose_transform, open_data, weights_transform
from octswap.dense_data import coco_category_ids, is_mask_folder, joint_transform
from octswap.errors import InputError
from octswap.fidelity.tasks import model_task

__all__ = ["detector_classes", "layout_task", "open_for_model"]


def layout_task(path: Path, annotations: Path | None) -> str | None:
    """The task a data layout carries labels for: ``detection`` (annotations), ``segmentation``
    (``images/`` and ``masks/``), else ``None``."""
    if annotations is not None:
        return "detection"
    return "segmentation" if is_mask_folder(path) else None


def open_for_model(
    path: str | Path,
    *,
    model: nn.Module,
    input_shape: tuple[int, int, int],
    model_name: str | None = None,
    weights: str | None = None,
    preprocessing: Preprocessing | None = None,
    limit: int | None = None,
    seed: int = 0,
    annotations: str | Path | None = None,
    task: str | None = None,
) -> tuple[Data, str]:
    """Open ``path`` (any :func:`octswap.data.open_data` layout) for ``model``.

    Args:
        model: The model the data feeds (the original); its output on one probe input
            tells its task unless ``task`` is given.
        input_shape: Its ``(C, H, W)``.
        model_name, weights: For a torchvision model, its weights' own preprocessing.
        preprocessing, limit, seed, annotations: As :func:`octswap.data.open_data`.
        task: ``classification``, ``segmentation``, ``detection`` or ``features``.

    Returns:
        The data and the task.

    Raises:
        InputError: ``task`` does not fit the model's output; the data's labels (masks,
            boxes, classes) are for another task; the data cannot be read.
    """
    path = Path(path)
    annotations = Path(annotations) if annotations is not None else None
    given = task
    task = model_task(model, input_shape, task=task)
    carried = layout_task(path, annotations)
    if carried is not None and carried != task:
        what = f"COCO boxes ({annotations.name})" if annotations is not None else "masks (images/ and masks/)"
        name = model_name or type(model).__name__
        raise InputError(f"{path} comes with {what}, for a {carried} model, but {name} is a {task} model"
                         f"{' (guessed from its output; --task to say otherwise)' if given is None else ''}")
    transform: Any = None
    if task == "detection" and not path.is_file():
        transform = joint_transform(input_shape, preprocessing=preprocessing, normalise=False)
    elif carried is not None:
        reference = weights_transform(model_name, weights) if model_name is not None else None
        transform = joint_transform(input_shape, preprocessing=preprocessing, reference=reference)
    elif not path.is_file():
        transform = choose_transform(input_shape, model_name=model_name, weights=weights, preprocessing=preprocessing)
    data = open_data(path, input_shape=input_shape, transform=transform, limit=limit, seed=seed,
                     annotations=annotations)  # fmt: skip
    if task == "detection" and annotations is not None:
        _check_categories(annotations, model, model_name or type(model).__name__)
    if task in ("segmentation", "detection") and data.kind in ("imagefolder", "tensors") and data.labelled:
        where = "class sub-folders" if data.kind == "imagefolder" else "a 'labels' tensor"
        need = "a folder holding images/ and masks/" if task == "segmentation" else "--annotations"
        raise InputError(f"{path} holds class labels ({where}), for a classifier, but "
                         f"{model_name or type(model).__name__} is a {task} model: give {need}, or unlabelled images")
    return data, task


def detector_classes(model: nn.Module) -> int | None:
    """The number of labels a detector predicts (background included, torchvision's
    ``num_classes``), read from its box predictor or classification head; ``None``: unknown."""
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    scores = getattr(predictor, "cls_score", None)
    if isinstance(scores, nn.Linear):  # Faster/Mask R-CNN
        return scores.out_features
    for module in model.modules():
        classes = getattr(module, "num_classes", None)  # RetinaNet, FCOS, a user's own
        if classes is None and type(module).__name__.endswith("ClassificationHead"):
            classes = getattr(module, "num_columns", None)  # SSD, SSDlite
        if isinstance(classes, int) and classes > 0:
            return classes
    return None


def _check_categories(annotations: Path, model: nn.Module, name: str) -> None:
    """Category ids the detector cannot predict would count as missed in every mAP.

    Raises:
        InputError: an annotation's ``category_id`` is beyond the model's labels.
    """
    classes = detector_classes(model)
    if classes is None:
        return
    used = coco_category_ids(annotations)
    if 0 in used and predictor_has_background(model):
        raise InputError(f"{annotations.name} uses category id 0, which {name} keeps for the background: "
                         "number the categories from 1")
    if used and max(used) >= classes:
        raise InputError(f"{annotations.name} uses category ids up to {max(used)} but {name} predicts labels "
                         f"0..{classes - 1} (num_classes={classes}): re-number the categories, or give the model "
                         f"num_classes={max(used) + 1}")


def predictor_has_background(model: nn.Module) -> bool:
    """Whether label 0 is the background class (torchvision's two-stage and SSD detectors)."""
    return hasattr(getattr(model, "roi_heads", None), "box_predictor") or type(model).__name__ in ("SSD",)
