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
    for _ in range(int(rng.integers(1, objects + 1))):  # 1..objects: box lists of unequal length
        cls = int(rng.integers(1, classes + 1))
        h, w = int(rng.integers(height // 6, height // 2)), int(rng.integers(width // 6, width // 2))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        image[y:y + h, x:x + w] = COLOURS[cls - 1] + rng.normal(0, 10, size=(h, w, 3))
        mask[y:y + h, x:x + w] = cls
        boxes.append((x, y, w, h, cls))
    return np.clip(image, 0, 255).astype(np.uint8), mask, boxes


def write_scenes(folder: Path, n: int, *, height: int = 48, width: int = 64, classes: int = 3,
                 objects: int = 3, seed: int = 0) -> Path:
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


def load_scenes(folder: Path, size: tuple[int, int]):
    """The scenes as tensors for training a test model: images ``[N, 3, H, W]`` normalised with
    ImageNet's statistics (as octswap feeds 3-channel models), masks ``[N, H, W]``, both resized."""
    import torch

    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images, masks = [], []
    for path in sorted((folder / "images").iterdir()):
        image = Image.open(path).convert("RGB").resize(size[::-1], Image.BILINEAR)
        mask = Image.open(folder / "masks" / path.name).resize(size[::-1], Image.NEAREST)
        images.append(((np.asarray(image) / 255.0 - mean) / std).transpose(2, 0, 1))
        masks.append(np.asarray(mask, dtype=np.int64))
    return torch.tensor(np.stack(images), dtype=torch.float32), torch.tensor(np.stack(masks))


def train_segmenter(model, images, masks, *, steps: int = 60, seed: int = 0):
    """A few Adam steps of per-pixel cross-entropy: a segmenter that has learnt the scenes."""
    import torch

    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        batch = torch.randint(0, len(images), (16,))
        loss = torch.nn.functional.cross_entropy(model(images[batch]), masks[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
