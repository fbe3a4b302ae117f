"""Scenes for dense-task tests: coloured rectangles on noise, written as a user's data.

``write_scenes(folder, n)`` makes ``folder/images/*.png``, ``folder/masks/*.png`` (class
index per pixel: 0 background, ``1..classes`` a rectangle's class) and
``folder/instances.json`` (COCO: one box per rectangle, ``category_id`` = its class).
Each class has its own colour, so a small net can learn the task.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230], [220, 200, 30]], dtype=np.float64)


def scene(rng: np.random.Generator, height: int, width: int, classes: int, objects: int):
    """One scene: image ``uint8[H, W, 3]``, mask ``uint8[H, W]``, boxes ``[(x, y, w, h, class)]``."""
    image = rng.normal(110, 25, size=(height, width, 3))
    mask = np.zeros((height, width), np.uint8)
    boxes = []
    for _ in range(objects):
        cls = int(rng.integers(1, classes + 1))
        h, w = int(rng.integers(height // 6, height // 2)), int(rng.integers(width // 6, width // 2))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        image[y:y + h, x:x + w] = COLOURS[cls - 1] + rng.normal(0, 10, size=(h, w, 3))
        mask[y:y + h, x:x + w] = cls
        boxes.append((x, y, w, h, cls))
    return np.clip(image, 0, 255).astype(np.uint8), mask, boxes


def write_scenes(folder: Path, n: int, *, height: int = 48, width: int = 64, classes: int = 3,
                 objects: int = 2, seed: int = 0) -> Path:
    """Write ``n`` scenes under ``folder`` (see the module docstring); returns ``folder``."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        image, mask, boxes = scene(rng, height, width, classes, objects)
        name = f"scene{i:03d}.png"
        Image.fromarray(image).save(folder / "images" / name)
        Image.fromarray(mask).save(folder / "masks" / name)
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for x, y, w, h, cls in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "bbox": [x, y, w, h],
                                "category_id": cls, "area": w * h, "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, classes + 1)]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return folder
