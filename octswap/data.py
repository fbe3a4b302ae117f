"""Data in: real samples for fidelity, BatchNorm re-estimation and healing.

Five layouts, told apart by what ``path`` is (the last two in :mod:`octswap.dense_data`):

* a folder of class sub-folders (torchvision's ``ImageFolder`` layout): labels known,
  classes numbered in sorted order, as torchvision numbers them;
* a flat folder of images: no labels;
* a ``.pt`` file holding ``{"inputs": Tensor[N, C, H, W], "labels": Tensor[N]}``
  (``labels`` optional), read with ``torch.load(weights_only=True)``; the inputs are
  used as they are (already preprocessed);
* a folder holding ``images/`` and ``masks/`` (segmentation masks, PNG label maps);
* a folder of images with a COCO ``annotations`` file (detection boxes).

Images are read with PIL through torchvision, converted to the model's input channels
(1 -> grayscale ``L``, 3 -> ``RGB``), resized to its ``H x W``, scaled to [0, 1] and
normalised: with torchvision weights their own ``weights.transforms()``, otherwise
:class:`Preprocessing` (``--mean``/``--std``/``--resize``/``--crop``).

Every sample is an ``(input, label)`` pair; unlabelled samples carry label ``-1``; masks and
boxes take the label's place.

Example:
    >>> data = open_data("val/", input_shape=(3, 224, 224))      # doctest: +SKIP
    >>> loader = make_loader(data, batch_size=64)                 # doctest: +SKIP
    >>> for x, y in batches(loader): ...                           # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from octswap.errors import InputError, path_argument
from octswap.images import IMAGENET_MEAN, IMAGENET_STD, check_headers, image_files, open_image
from octswap.serialization import load_tensors

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Data",
    "Preprocessing",
    "batches",
    "choose_transform",
    "make_loader",
    "open_data",
    "parse_floats",
    "weights_transform",
]

logger = logging.getLogger(__name__)

UNLABELLED = -1


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs when no torchvision weights say so.

    Attributes:
        mean, std: Per-channel normalisation after scaling to [0, 1]; one value is used
            for every channel. ``None``: ImageNet's for 3 channels, 0 / 1 otherwise.
        resize: Resize the shorter side to this many pixels (torchvision's ``Resize(int)``),
            then centre-crop; ``None``: resize straight to the model's ``H x W``.
        crop: Centre-crop size ``(H, W)`` after ``resize``; ``None``: the model's ``H x W``.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    crop: tuple[int, int] | None = None

    def transform(self, input_shape: tuple[int, int, int]) -> Callable[[Any], torch.Tensor]:
        """The torchvision transform for a model taking ``input_shape = (C, H, W)`` (the
        image-only use of :func:`octswap.dense_data.joint_transform`, which also carries masks)."""
        from octswap.dense_data import joint_transform

        return joint_transform(input_shape, preprocessing=self)


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """``"0.5"`` -> ``(0.5,)``; ``"0.485,0.456,0.406"`` -> three values; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"{option}: expected a number or a comma-separated list of numbers, got {text!r}") from None
    return values


def weights_transform(name: str, weights: str | None) -> Callable[[Any], torch.Tensor] | None:
    """``weights.transforms()`` of a torchvision weights name (``IMAGENET1K_V2``...), else ``None``."""
    if not weights or Path(weights).suffix in {".pt", ".pth", ".bin", ".ckpt"} or Path(weights).exists():
        return None
    from torchvision import models

    try:
        enum = models.get_model_weights(name)
        member = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
        chosen = enum.DEFAULT if member == "DEFAULT" else enum[member]
    except (ValueError, KeyError):
        return None
    return chosen.transforms()


def choose_transform(
    input_shape: tuple[int, int, int],
    *,
    model_name: str | None = None,
    weights: str | None = None,
    preprocessing: Preprocessing | None = None,
) -> Callable[[Any], torch.Tensor]:
    """The image transform for a model: ``preprocessing`` when given, else the torchvision
    weights' own ``transforms()`` when the model came with torchvision weights, else
    :class:`Preprocessing`'s defaults for ``input_shape``."""
    if preprocessing is None and model_name is not None:
        own = weights_transform(model_name, weights)
        if own is not None:
            return own
    return (preprocessing or Preprocessing()).transform(input_shape)


# ------------------------------------------------------------------ datasets
def _loader(channels: int) -> Callable[[str], Any]:
    return functools.partial(open_image, mode={1: "L", 3: "RGB"}[channels])


class ImageFiles(Dataset):
    """A flat folder of images, sorted by name, without labels."""

    def __init__(self, files: Sequence[str], loader: Callable[[str], Any], transform: Callable[[Any], torch.Tensor]):
        self.files = list(files)
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.loader(self.files[index])), UNLABELLED


class _Labelled(Dataset):
    """``TensorDataset``-like view that yields ``(input, label)`` with -1 for no label."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.inputs = inputs
        self.labels = labels

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.inputs[index], UNLABELLED if self.labels is None else int(self.labels[index])


@dataclass(frozen=True)
class Data:
    """A data set opened by :func:`open_data`.

    Attributes:
        path: Where it came from.
        kind: ``"imagefolder"``, ``"images"`` or ``"tensors"``.
        dataset: Yields ``(input Tensor[C, H, W], label int)``; label -1 when unknown.
        labelled: Whether labels are known.
        classes: Class names in label order (ImageFolder), or ``None``.
        num_labels: 1 + the largest label (0 without labels, masks or boxes).
        collate: The ``DataLoader``'s ``collate_fn`` (detection targets stay a list).
    """

    path: Path
    kind: str
    dataset: Dataset
    labelled: bool
    classes: tuple[str, ...] | None
    num_labels: int
    collate: Callable[[Any], Any] | None = None

    @classmethod
    def from_tensors(cls, inputs: torch.Tensor, labels: torch.Tensor | None = None, *, name: str = "tensors") -> Data:
        """Samples already in memory: ``inputs`` ``Tensor[N, C, H, W]``, ``labels`` ``Tensor[N]``."""
        num_labels = int(labels.max()) + 1 if labels is not None and len(labels) else 0
        return cls(Path(name), "tensors", _Labelled(inputs, labels), labels is not None, None, num_labels)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def describe(self) -> str:
        labels = {"masks": "masks", "coco": "boxes"}.get(self.kind) or (
            f"{self.num_labels} classes" if self.labelled else "no labels")
        return f"{self.path} ({len(self)} samples, {labels})"


def open_data(
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    transform: Callable[[Any], torch.Tensor] | None = None,
    preprocessing: Preprocessing | None = None,
    limit: int | None = None,
    seed: int = 0,
    annotations: str | Path | None = None,
) -> Data:
    """Open a data set for a model taking ``input_shape = (C, H, W)``.

    Args:
        path: An ``ImageFolder``-style folder, a flat folder of images, or a ``.pt`` file.
        input_shape: The model's input shape; images are converted to ``C`` channels
            (1 or 3) and resized to ``H x W``.
        transform: Replaces the preprocessing (e.g. torchvision ``weights.transforms()``);
            it receives a PIL image already converted to ``C`` channels.
        preprocessing: Normalisation and geometry when ``transform`` is not given.
        limit: Keep this many samples, a fixed random subset (seeded with ``seed``) so
            that every class of an ``ImageFolder`` is represented.
        seed: Seed of that subset.
        annotations: A COCO instances JSON for the images in ``path`` (detection).
            With it, or with ``path`` holding ``images/`` and ``masks/``, ``transform`` is a
            joint one (:func:`octswap.dense_data.joint_transform`, the default).

    Raises:
        InputError: the path is missing, holds no images, holds an unreadable file, or
            its channel count does not fit the model; masks or annotations that do not
            fit their images.
        TypeError: ``path`` is not a path (``None``...).
    """
    path = path_argument(path, function="open_data", expected="a data folder or .pt file")
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape)):  # fmt: skip
        raise TypeError(f"open_data() takes input_shape=(C, H, W) of positive ints, got {input_shape!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        raise TypeError(f"open_data() takes limit as an int or None, got {limit!r}")
    channels = input_shape[0]
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a positive number of samples, got {limit}")
    from octswap.dense_data import is_mask_folder, joint_transform, open_dense

    if annotations is not None or is_mask_folder(path):
        joint = transform or joint_transform(input_shape, preprocessing=preprocessing, normalise=annotations is None)
        dense = open_dense(path, input_shape=input_shape, annotations=annotations, transform=joint)
        data = Data(path, dense.kind, dense.dataset, True, None, 0, collate=dense.collate)
    elif path.is_file():
        data = _open_tensors(path, channels)
    elif path.is_dir():
        if channels not in (1, 3):
            raise InputError(
                f"images feed models with 1 or 3 input channels, this one takes {channels}; "
                "give a .pt file with inputs of that shape instead"
            )
        transform = transform or (preprocessing or Preprocessing()).transform(input_shape)
        data = _open_folder(path, channels, transform)
    else:
        raise InputError(f"data not found: {path}")
    if limit is not None and limit < len(data):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit]
        data = replace(data, dataset=Subset(data.dataset, sorted(order.tolist())))
    if data.kind != "tensors":
        dataset = data.dataset
        indices = dataset.indices if isinstance(dataset, Subset) else range(len(dataset))  # type: ignore[arg-type]
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        files = base.files if hasattr(base, "files") else [s[0] for s in base.samples]  # type: ignore[attr-defined]
        check_headers(files[i] for i in indices)
    logger.info("data: %s", data.describe())
    return data


def _open_folder(path: Path, channels: int, transform: Callable[[Any], torch.Tensor]) -> Data:
    from torchvision.datasets import ImageFolder

    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = image_files(path)
    if subfolders and files:
        raise InputError(
            f"{path} holds both images and sub-folders; use class sub-folders (ImageFolder) or a flat folder of images"
        )
    if files:
        return Data(path, "images", ImageFiles(files, _loader(channels), transform), False, None, 0)
    if not subfolders:
        raise InputError(f"{path} holds no images (expected class sub-folders or image files)")
    for sub in subfolders:
        if not image_files(sub) and any(p.is_dir() for p in sub.iterdir()):
            # ImageFolder would take sub-folders' images as this class: --data one level too high.
            raise InputError(
                f"{sub} holds sub-folders but no images of its own: give the folder whose sub-folders are "
                "the classes (one folder per class)"
            )
    folder = ImageFolder(str(path), transform=transform, loader=_loader(channels), allow_empty=True)
    if not folder.samples:
        raise InputError(f"{path} holds no images in its sub-folders ({', '.join(folder.classes[:5])}...)")
    return Data(path, "imagefolder", folder, True, tuple(folder.classes), len(folder.classes))


def _open_tensors(path: Path, channels: int) -> Data:
    if path.suffix not in (".pt", ".pth"):
        raise InputError(f"--data: {path} is neither a folder of images nor a .pt file")
    content = load_tensors(path, what="data file", error=InputError,
                           instead="save torch.save({'inputs': Tensor[N, C, H, W], 'labels': Tensor[N]}, PATH)")  # fmt: skip
    if not isinstance(content, dict) or not isinstance(content.get("inputs"), torch.Tensor):
        raise InputError(f"{path}: expected a dict with 'inputs' (Tensor[N, C, H, W]) and optional 'labels'")
    inputs, labels = content["inputs"], content.get("labels")
    if inputs.ndim != 4 or not inputs.is_floating_point() or len(inputs) == 0:
        raise InputError(f"{path}: 'inputs' must be a non-empty float Tensor[N, C, H, W], got {inputs.dtype} {tuple(inputs.shape)}")
    if inputs.shape[1] != channels:
        raise InputError(f"{path}: inputs have {inputs.shape[1]} channels, the model takes {channels}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != (len(inputs),) or labels.is_floating_point():
            raise InputError(f"{path}: 'labels' must be an integer Tensor[{len(inputs)}]")
        if len(labels) and int(labels.min()) < 0:
            raise InputError(f"{path}: labels must be class indices >= 0")
    return Data.from_tensors(inputs.float(), labels, name=str(path))


# ------------------------------------------------------------------- loading
def make_loader(
    data: Data | Dataset,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    sampler: Any = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` in the data's order (or ``sampler``'s), keeping the last partial batch.

    ``workers=None``: no worker processes for tensors (nothing to decode), otherwise
    up to 4, at most the machine's cores.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    dataset = data.dataset if isinstance(data, Data) else data
    if workers is None:
        workers = 0 if isinstance(data, Data) and data.kind == "tensors" else min(4, os.cpu_count() or 1)
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    collate = data.collate if isinstance(data, Data) else getattr(base, "collate", None)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=False, collate_fn=collate)  # fmt: skip


def batches(loader: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``(inputs, labels)`` batches; an unreadable image in a worker process becomes
    one clear :class:`InputError` line instead of the worker's traceback."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except InputError as err:
            # DataLoader re-raises a worker's error with the worker traceback in the message.
            last = str(err).strip().splitlines()[-1]
            raise InputError(last.split(": ", 1)[1] if last.startswith("octswap.errors.") else last) from None
        if isinstance(batch, (list, tuple)):
            inputs, labels = batch[0], batch[1] if len(batch) > 1 else None
        else:
            inputs, labels = batch, None
        if labels is None:
            labels = torch.full((len(inputs),), UNLABELLED, dtype=torch.long)
        yield inputs, labels
