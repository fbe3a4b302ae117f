"""Scenes of real handwritten digits for the dense benchmark: segmentation masks and boxes.

Each scene is a 128x128 RGB canvas (a tinted noisy background) holding 2-4 of
scikit-learn's real handwritten digits (``load_digits``, via :func:`digits.digits_split`),
each upscaled to 36-64 pixels, coloured, and placed at a random position (overlaps
avoided where a few tries allow). The mask holds ``digit + 1`` on the digit's stroke
(intensity >= 0.25, widened by one pixel: strokes of blurry 8x8 digits are thin), 0 on
the background; the box is the extent of that stroke, category ``digit + 1``. Training
scenes use the digits' training split, validation scenes their held-out split.

Written as a user's data: ``images/*.png``, ``masks/*.png`` (label maps) and
``instances.json`` (COCO), so the CLI reads them as it reads anyone's.

Usage:
    .venv/bin/python benchmarks/digit_scenes.py OUT [--train 600] [--val 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from digits import digits_split

SIZE = 128
CLASSES = 11  # background + ten digits
IGNORE = 255  # the mask value losses and mIoU leave out (none written here)


def _place(rng: np.random.Generator, taken: np.ndarray, side: int) -> tuple[int, int]:
    """A top-left corner for a ``side`` square, free of ``taken`` if a few tries find one."""
    best, best_overlap = (0, 0), None
    for _ in range(12):
        y, x = (int(v) for v in rng.integers(0, SIZE - side, 2))
        overlap = int(taken[y:y + side, x:x + side].sum())
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = (y, x), overlap
        if overlap == 0:
            break
    return best


def scene(rng: np.random.Generator, digits: torch.Tensor, labels: torch.Tensor
          ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int, int]]]:  # fmt: skip
    """One scene: image ``uint8[128, 128, 3]``, mask ``uint8[128, 128]``, boxes ``(x, y, w, h, category)``."""
    tint = rng.uniform(0.0, 0.35, 3)
    image = np.clip(tint + rng.normal(0.0, 0.06, (SIZE, SIZE, 3)), 0, 1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    taken = np.zeros((SIZE, SIZE), bool)
    placed = []
    for _ in range(int(rng.integers(2, 5))):
        index = int(rng.integers(0, len(digits)))
        side = int(rng.integers(36, 65))
        alpha = F.interpolate(digits[index][None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        alpha = alpha.clamp(0, 1).numpy()
        y, x = _place(rng, taken, side)
        colour = rng.uniform(0.55, 1.0, 3)
        window = image[y:y + side, x:x + side]
        image[y:y + side, x:x + side] = window * (1 - alpha[..., None]) + colour * alpha[..., None]
        stroke = F.max_pool2d(torch.from_numpy(alpha >= 0.25).float()[None], 3, stride=1, padding=1)[0].bool().numpy()
        mask[y:y + side, x:x + side][stroke] = int(labels[index]) + 1
        taken[y:y + side, x:x + side] |= stroke
        placed.append((y, x, side, stroke, int(labels[index]) + 1))
    boxes = []
    for y, x, side, stroke, category in placed:
        # What is left of this digit's stroke after later digits (its label still there).
        visible = stroke & (mask[y:y + side, x:x + side] == category)
        rows, cols = np.nonzero(visible)
        if len(rows) >= 8:
            x0, y0 = x + int(cols.min()), y + int(rows.min())
            boxes.append((x0, y0, x + int(cols.max()) + 1 - x0, y + int(rows.max()) + 1 - y0, category))
    return (image * 255).round().astype(np.uint8), mask, boxes


def write_split(folder: Path, digits: torch.Tensor, labels: torch.Tensor, count: int, *, seed: int) -> Path:
    """``count`` scenes in ``folder`` (images/, masks/, instances.json)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image, mask, boxes = scene(rng, digits, labels)
        name = f"scene{i:04d}.png"
        Image.fromarray(image).save(folder / "images" / name)
        Image.fromarray(mask).save(folder / "masks" / name)
        images.append({"id": i + 1, "file_name": name, "width": SIZE, "height": SIZE})
        for x, y, w, h, category in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "bbox": [x, y, w, h],
                                "category_id": category, "area": w * h, "iscrowd": 0})
    categories = [{"id": c, "name": str(c - 1)} for c in range(1, CLASSES)]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return folder


def prepare(out: Path, *, train: int, val: int, seed: int = 0) -> tuple[Path, Path]:
    """Training and validation scenes under ``out`` (reused when already there)."""
    if (out / "val" / "instances.json").exists() and (out / "train" / "instances.json").exists():
        return out / "train", out / "val"
    x_train, y_train, x_test, y_test = digits_split(seed)
    return (write_split(out / "train", x_train, y_train, train, seed=seed),
            write_split(out / "val", x_test, y_test, val, seed=seed + 1))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, val = prepare(args.out, train=args.train, val=args.val, seed=args.seed)
    print(f"wrote {train} and {val}")


if __name__ == "__main__":
    main()
