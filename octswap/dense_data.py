"""Data for segmentation and detection models: images with masks, images with COCO boxes.

Two layouts beside :mod:`octswap.data`'s:

* **masks** (segmentation): a folder holding ``images/`` and ``masks/``; each image has a PNG
  label map of the same file stem in ``masks/`` (one class index per pixel, PIL mode
  ``L``, ``P`` or ``I``; the value ``ignore_index``, default 255, marks pixels to leave out).
* **COCO boxes** (detection): a folder of images and a COCO ``instances.json``
  (``--annotations``: ``images[].file_name`` relative to the folder, ``annotations[]`` with
  ``bbox`` ``[x, y, w, h]`` in pixels and ``category_id``), read with torchvision's
  ``CocoDetection`` (pycocotools, the ``dense`` extra). Category ids are the labels.

Images, masks and boxes go through one torchvision ``transforms.v2`` pipeline, so masks
(nearest) and boxes follow the image through resize and crop. Detection models take
``[0, 1]`` images without normalisation (torchvision's detectors normalise inside).

Samples are ``(image Tensor[C, H, W], mask Tensor[H, W] int64)`` or
``(image, {"boxes": Tensor[k, 4] xyxy float, "labels": Tensor[k] int64})``; batches of
the latter keep the targets as a list (one dict per image).

Example:
    >>> from octswap.data import open_data
    >>> data = open_data("scenes/val", input_shape=(3, 128, 128))          # doctest: +SKIP
    >>> data = open_data("scenes/val/images", input_shape=(3, 128, 128),
    ...                  annotations="scenes/val/instances.json")        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from octswap.errors import InputError, MissingExtraError
from octswap.images import IMAGENET_MEAN, IMAGENET_STD, image_files, open_image, per_channel

logger = logging.getLogger(__name__)

__all__ = ["CocoBoxes", "DenseSet", "MaskFolder", "coco_category_ids", "collate_detection", "is_mask_folder",
           "joint_transform", "open_dense"]


class DenseSet(NamedTuple):
    """What :func:`open_dense` opened: ``kind`` (``masks``/``coco``), the dataset, its collate function."""

    kind: str
    dataset: Dataset
    collate: Callable[[Any], Any] | None

MASK_MODES = ("L", "P", "I", "I;16")


def is_mask_folder(path: Path) -> bool:
    """Whether ``path`` holds an ``images/`` and a ``masks/`` folder (the masks layout)."""
    return path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir()


def joint_transform(
    input_shape: tuple[int, int, int],
    *,
    preprocessing: Any = None,
    normalise: bool = True,
    reference: Any = None,
) -> Callable[..., Any]:
    """One ``transforms.v2`` pipeline for an image and its mask or boxes.

    Args:
        input_shape: The model's ``(C, H, W)``: images are resized to ``H x W`` unless
            ``preprocessing`` sets ``resize``/``crop``.
        preprocessing: A :class:`~octswap.data.Preprocessing` (mean, std, resize, crop), or ``None``.
        normalise: Normalise the image (``False`` for detectors that normalise inside,
            unless ``preprocessing`` names a mean or std).
        reference: A torchvision weights transform whose ``mean``/``std`` to use.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    channels, height, width = input_shape
    resize, crop = getattr(preprocessing, "resize", None), getattr(preprocessing, "crop", None)
    given_mean, given_std = getattr(preprocessing, "mean", None), getattr(preprocessing, "std", None)
    if resize is None and crop is None:
        geometry: list[Any] = [v2.Resize((height, width), antialias=True)]
    else:
        geometry = [v2.Resize(resize, antialias=True)] if resize is not None else []
        geometry.append(v2.CenterCrop(crop or (height, width)))
    steps = [v2.ToImage(), *geometry,
             v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True)]
    if normalise or given_mean is not None or given_std is not None:
        default_mean = getattr(reference, "mean", None) or (IMAGENET_MEAN if channels == 3 else (0.0,))
        default_std = getattr(reference, "std", None) or (IMAGENET_STD if channels == 3 else (1.0,))
        mean = per_channel(given_mean, channels, default_mean, "--mean")
        std = per_channel(given_std, channels, default_std, "--std")
        if any(s <= 0 for s in std):
            raise InputError(f"--std: every value must be positive, got {','.join(map(str, std))}")
        steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def _open_mask(path: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    from torchvision import tv_tensors

    try:
        with Image.open(path) as image:
            if image.mode not in MASK_MODES:
                raise InputError(f"mask {path} is {image.mode}; masks are label maps, one class index per pixel "
                                 f"(PNG mode {', '.join(MASK_MODES)})")  # fmt: skip
            return tv_tensors.Mask(torch.from_numpy(np.array(image, dtype=np.int64)))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"cannot read mask {path}: {err}") from None


class MaskFolder(Dataset):
    """Images and their label maps, paired by file stem, sorted by name."""

    def __init__(self, files: Sequence[str], masks: Sequence[str], mode: str, transform: Callable[..., Any]) -> None:
        self.files = list(files)
        self.masks = list(masks)
        self.mode = mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = open_image(self.files[index], self.mode)
        mask = _open_mask(self.masks[index])
        if mask.shape != (image.height, image.width):
            raise InputError(f"mask {self.masks[index]} is {tuple(mask.shape)} (height, width), its image "
                             f"{(image.height, image.width)}")  # fmt: skip
        image, mask = self.transform(image, mask)
        return image, mask.as_subclass(torch.Tensor)


class CocoBoxes(Dataset):
    """torchvision's ``CocoDetection`` wrapped for ``transforms.v2``: ``(image, {"boxes", "labels"})``."""

    def __init__(self, root: Path, annotations: Path, mode: str, transform: Callable[..., Any]) -> None:
        try:
            from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
            chatter = io.StringIO()
            with contextlib.redirect_stdout(chatter):  # pycocotools prints its progress on stdout: a debug log
                coco = CocoDetection(str(root), str(annotations))
            logger.debug("pycocotools: %s", " ".join(chatter.getvalue().split()))
        except ModuleNotFoundError as err:
            raise MissingExtraError(f"COCO annotations need pycocotools ({err}): pip install 'octswap[dense]'") from None
        coco._load_image = lambda id_: open_image(str(root / coco.coco.loadImgs(id_)[0]["file_name"]), mode)  # type: ignore[method-assign]
        self.files = [str(root / coco.coco.loadImgs(i)[0]["file_name"]) for i in coco.ids]
        self.wrapped = wrap_dataset_for_transforms_v2(coco, target_keys={"boxes", "labels"})
        self.transform = transform
        self.collate = collate_detection  # read by make_loader when given the bare dataset

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision import tv_tensors

        image, target = self.wrapped[index]
        size = (image.height, image.width)
        boxes = target.get("boxes")
        boxes = tv_tensors.BoundingBoxes(  # float before any resize (COCO files often hold whole pixels)
            boxes.as_subclass(torch.Tensor).float() if boxes is not None else torch.zeros(0, 4),
            format="XYXY", canvas_size=size)  # fmt: skip
        image, boxes = self.transform(image, boxes)
        return image, {"boxes": boxes.as_subclass(torch.Tensor),
                       "labels": target.get("labels", torch.zeros(0, dtype=torch.int64)).long()}  # fmt: skip


def collate_detection(batch: Sequence[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, list[Any]]:
    """Stack the images (one size after the transform), keep one target dict per image."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def _stems(folder: Path) -> dict[str, str]:
    return {Path(f).stem: f for f in image_files(folder)}


def _some(names: list[str], shown: int = 3) -> str:
    """The first few names, and an ellipsis only where more were left out."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _count(names: list[str], noun: str) -> str:
    return f"{len(names)} {noun}s have" if len(names) != 1 else f"1 {noun} has"


def _mask_folder(path: Path, mode: str, transform: Callable[..., Any]) -> MaskFolder:
    images, masks = _stems(path / "images"), _stems(path / "masks")
    if not images:
        raise InputError(f"{path / 'images'} holds no images")
    unmatched = sorted(set(images) - set(masks))
    extra = sorted(set(masks) - set(images))
    if unmatched or extra:
        which = [f"{_count(unmatched, 'image')} no mask of the same stem ({_some(unmatched)})" if unmatched else "",
                 f"{_count(extra, 'mask')} no image of the same stem ({_some(extra)})" if extra else ""]  # fmt: skip
        raise InputError(f"{path}: images/ and masks/ must pair by file stem; {'; '.join(w for w in which if w)}")
    stems = sorted(images)
    return MaskFolder([images[s] for s in stems], [masks[s] for s in stems], mode, transform)


def _check_annotations(root: Path, annotations: Path) -> None:
    if not annotations.is_file():
        raise InputError(f"annotations not found: {annotations}")
    try:
        content = json.loads(annotations.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read annotations {annotations}: {err}") from None
    if not isinstance(content, dict) or not isinstance(content.get("images"), list) \
            or not isinstance(content.get("annotations"), list):
        raise InputError(f"{annotations}: expected COCO instances JSON with 'images' and 'annotations' lists")
    try:
        names = [str(image["file_name"]) for image in content["images"]]
        [(float(a["bbox"][2]), float(a["bbox"][3]), int(a["category_id"]), a["image_id"]) for a in content["annotations"]]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"{annotations}: an image lacks file_name or an annotation bbox/category_id/image_id "
                         f"({err!r})") from None  # fmt: skip
    flat = [a for a in content["annotations"] if not (float(a["bbox"][2]) > 0 and float(a["bbox"][3]) > 0)]
    if flat:
        raise InputError(f"{annotations}: {len(flat)} box(es) without area (annotation id {flat[0].get('id')}: bbox "
                         f"{flat[0]['bbox']}); width and height must be positive")  # fmt: skip
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise InputError(f"{annotations} names {len(missing)} image{'s' * (len(missing) != 1)} missing from {root} "
                         f"({_some(missing)})")
    if not names:
        raise InputError(f"{annotations} lists no images")


def coco_category_ids(annotations: Path) -> set[int]:
    """The ``category_id`` values the annotations use (a file :func:`open_dense` has checked)."""
    return {int(a["category_id"]) for a in json.loads(annotations.read_text())["annotations"]}


def open_dense(
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    annotations: str | Path | None = None,
    transform: Callable[..., Any] | None = None,
) -> DenseSet:
    """Open images with masks (``path`` holding ``images/`` and ``masks/``) or with COCO
    boxes (``annotations``); :func:`octswap.data.open_data` wraps it in a ``Data``.

    Args:
        path: The data folder (masks layout) or the images' folder (COCO).
        input_shape: The model's ``(C, H, W)``, ``C`` 1 or 3.
        annotations: A COCO instances JSON file.
        transform: A joint transform (default :func:`joint_transform`, normalising for
            masks and not for boxes).

    Raises:
        InputError: the layout is not one of these; images and masks do not pair by stem;
            the annotations are unreadable or name missing images.
        MissingExtraError: COCO annotations without pycocotools.
    """
    path = Path(path)
    channels = input_shape[0]
    if channels not in (1, 3):
        raise InputError(f"images feed models with 1 or 3 input channels, this one takes {channels}")
    mode = {1: "L", 3: "RGB"}[channels]
    if annotations is not None:
        annotations = Path(annotations)
        if not path.is_dir():
            raise InputError(f"{path} is not a folder: COCO annotations ({annotations.name}) go with the folder "
                             "of the images they annotate")
        _check_annotations(path, annotations)
        boxes = CocoBoxes(path, annotations, mode, transform or joint_transform(input_shape, normalise=False))
        return DenseSet("coco", boxes, collate_detection)
    if not is_mask_folder(path):
        raise InputError(f"{path}: masks need a folder holding images/ and masks/ (same file stems)")
    folder = _mask_folder(path, mode, transform or joint_transform(input_shape))
    return DenseSet("masks", folder, None)
