"""Image files: listing them, opening them with one clear error, and normalisation defaults.

Shared by :mod:`octswap.data` (classification layouts) and :mod:`octswap.dense_data`
(masks and boxes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from octswap.errors import InputError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "check_headers", "image_files", "open_image", "per_channel"]

#: ImageNet's channel statistics (torchvision's classification weights use them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_files(folder: Path) -> list[str]:
    """The image files directly in ``folder`` (torchvision's extensions), sorted by name."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return sorted(
        str(p) for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS)
    )


def open_image(path: str, mode: str) -> Any:
    """A PIL image converted to ``mode`` (``L``, ``RGB``).

    Raises:
        InputError: the file cannot be read as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None


def check_headers(files: Iterable[str]) -> None:
    """Open each file's header (no decoding): a non-image fails here, before any work.

    Raises:
        InputError: a file is not an image.
    """
    from PIL import Image, UnidentifiedImageError

    for path in files:
        try:
            with Image.open(path):
                pass
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"cannot read image {path}: {err}") from None


def per_channel(values: Sequence[float] | None, channels: int, default: Sequence[float], option: str) -> tuple[float, ...]:
    """``values`` (or ``default``) as one value per channel; one value is repeated.

    Raises:
        InputError: neither one value nor one per channel (``option`` names the flag).
    """
    values = tuple(values) if values is not None else tuple(default)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise InputError(f"{option}: give one value or {channels} (one per input channel), got {len(values)}")
    return values
