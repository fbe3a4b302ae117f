"""Consistent views for distillation: the teacher and the student see the same random flip and crop.

Distillation matches the student to the teacher *on whatever input both are given*; it needs no
labels, so each training image can be shown as a different view every epoch, provided both models
see the same one ("consistent teaching", Beyer et al., "Knowledge distillation: A good teacher is
patient and consistent", CVPR 2022). :func:`augment_batch` makes those views from a batch before
either model runs, with torchvision's ``transforms.v2`` (masks follow the image with nearest
resampling, boxes are moved, clipped and dropped when nothing of them is left).

Kinds (``HealOptions.augment``, ``octswap heal --augment``):

* ``none``: the images as loaded.
* ``flip``: each image mirrored left-right with probability 1/2.
* ``crop``: a random crop of 35-100% of the image's area (aspect 3/4-4/3) resized back to the
  image's size (``RandomResizedCrop``), then the flip.

Every view is drawn from a seed made of the run's seed, the epoch, the step, the process rank and
the sample's place in the batch, so a resumed run makes the same views as an uninterrupted one and
the global random state is left as it was.

Example:
    >>> import torch
    >>> images, masks = torch.rand(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.int64)
    >>> views, view_masks = augment_batch(images, masks, kind="crop", seed=(0, 1, 5, 0))
    >>> views.shape, view_masks.shape
    (torch.Size([2, 3, 32, 32]), torch.Size([2, 32, 32]))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["AUGMENTATIONS", "CROP_SCALE", "augment_batch"]

AUGMENTATIONS = ("none", "flip", "crop")
CROP_SCALE = (0.35, 1.0)  # share of the image's area a crop keeps (torchvision's default starts at 0.08)
CROP_RATIO = (3 / 4, 4 / 3)


def augment_batch(inputs: torch.Tensor, labels: Any, *, kind: str, seed: tuple[int, ...]) -> tuple[torch.Tensor, Any]:
    """The batch ``inputs`` (``Tensor[N, C, H, W]``) and its ``labels`` as one random view per sample.

    Args:
        inputs: Images (any normalisation: flips and crops are linear in the pixel values).
        labels: What came with them: ``None``; class indices ``Tensor[N]`` (unchanged); masks
            ``Tensor[N, H, W]`` (moved with the image, nearest); or detection targets, a list of
            ``{"boxes": Tensor[k, 4] xyxy pixels, "labels": Tensor[k]}`` (moved, clipped, empty
            boxes dropped with their labels).
        kind: One of :data:`AUGMENTATIONS`.
        seed: Integers that fix the views (the run's seed, epoch, step, rank).

    Returns:
        ``(views, labels)``, the views of the input's size, dtype and memory format.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {kind!r}")
    if kind == "none":
        return inputs, labels
    masks = isinstance(labels, torch.Tensor) and labels.ndim == 3
    boxes = isinstance(labels, (list, tuple)) and all(isinstance(t, Mapping) and "boxes" in t for t in labels)
    transform = _transform(kind, tuple(inputs.shape[-2:]), boxes=boxes)
    views, moved = [], []
    for position, image in enumerate(inputs):
        label = labels[position] if masks or boxes else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((*seed, position)) & 0x7FFF_FFFF_FFFF_FFFF)
            view, label = _apply(transform, image, label, masks=masks, boxes=boxes)
        views.append(view)
        moved.append(label)
    out = torch.stack(views)
    if inputs.is_contiguous(memory_format=torch.channels_last) and not inputs.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    if masks:
        return out, torch.stack(moved)
    return out, moved if boxes else labels


def _transform(kind: str, size: tuple[int, ...], *, boxes: bool) -> Any:
    from torchvision.transforms import v2

    steps: list[Any] = []
    if kind == "crop":
        steps.append(v2.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True))
    steps.append(v2.RandomHorizontalFlip())
    if boxes:
        steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(steps)


def _apply(transform: Any, image: torch.Tensor, label: Any, *, masks: bool, boxes: bool) -> tuple[torch.Tensor, Any]:
    from torchvision import tv_tensors

    image = tv_tensors.Image(image)
    if masks:
        view, mask = transform(image, tv_tensors.Mask(label))
        return view.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
    if boxes:
        target = dict(label)
        target["boxes"] = tv_tensors.BoundingBoxes(label["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
        view, target = transform(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        return view.as_subclass(torch.Tensor), target
    return transform(image).as_subclass(torch.Tensor), None
