"""Consistent views for distillation (octswap.augment): what the teacher and the student are shown."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import octswap
from octswap.augment import augment_batch
from octswap.data import Data
from octswap.distillation import HealOptions, heal


def blocks(n: int, size: int = 32, block: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first channel is a label map of ``block``-pixel squares (labels 0-9) and the map."""
    gen = torch.Generator().manual_seed(n)
    coarse = torch.randint(0, 10, (n, size // block, size // block), generator=gen)
    masks = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)
    images = torch.stack([masks.float(), torch.rand(n, size, size, generator=gen), torch.zeros(n, size, size)], 1)
    return images, masks


def test_flip_mirrors_image_and_mask_together():
    images, masks = blocks(8)
    flipped = 0
    for step in range(4):
        views, view_masks = augment_batch(images, masks, kind="flip", seed=(0, 0, step, 0))
        for i in range(len(images)):
            mirrored = torch.equal(views[i], images[i].flip(-1))
            assert mirrored or torch.equal(views[i], images[i])
            assert torch.equal(view_masks[i], masks[i].flip(-1) if mirrored else masks[i])
            flipped += mirrored
    assert 4 < flipped < 28  # about half of the 32 views


def test_crop_moves_masks_with_their_pixels():
    images, masks = blocks(6)
    views, view_masks = augment_batch(images, masks, kind="crop", seed=(3, 1, 2, 0))
    assert views.shape == images.shape and view_masks.shape == masks.shape and view_masks.dtype == torch.int64
    assert not torch.equal(view_masks, masks)
    # Where the resampled label channel is a whole number (inside a square, not on its edge), the mask
    # view (nearest) must name the same label: a mask left in place matches a fraction of a percent.
    label = views[:, 0]
    inside = (label - label.round()).abs() < 1e-3
    agree = (view_masks[inside] == label[inside].round().long()).float().mean()
    assert inside.float().mean() > 0.3 and agree > 0.97
    left_alone = (masks[inside] == label[inside].round().long()).float().mean()
    assert left_alone < 0.6


def test_boxes_follow_the_image():
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 8:16, 4:24] = 1.0  # rows 8-15, columns 4-23: box (4, 8, 24, 16) in xyxy pixels
    target = [{"boxes": torch.tensor([[4.0, 8.0, 24.0, 16.0]]), "labels": torch.tensor([3])}]
    for step in range(6):
        views, moved = augment_batch(image, target, kind="crop", seed=(0, 0, step, 0))
        lit = views[0, 0] > 0.5
        if not lit.any():
            assert len(moved[0]["boxes"]) == 0 and len(moved[0]["labels"]) == 0
            continue
        rows, cols = lit.any(1).nonzero().flatten(), lit.any(0).nonzero().flatten()
        x0, y0, x1, y1 = moved[0]["boxes"][0].tolist()
        assert abs(cols.min().item() - x0) <= 1.5 and abs(cols.max().item() + 1 - x1) <= 1.5
        assert abs(rows.min().item() - y0) <= 1.5 and abs(rows.max().item() + 1 - y1) <= 1.5
        assert moved[0]["labels"].tolist() == [3]


def test_views_are_fixed_by_the_seed_and_leave_the_random_state_alone():
    images, masks = blocks(4)
    state = torch.get_rng_state()
    first = augment_batch(images, masks, kind="crop", seed=(0, 2, 7, 0))
    assert torch.equal(torch.get_rng_state(), state)
    again = augment_batch(images, masks, kind="crop", seed=(0, 2, 7, 0))
    other = augment_batch(images, masks, kind="crop", seed=(0, 2, 8, 0))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    labels = torch.arange(4)
    assert augment_batch(images, labels, kind="crop", seed=(0,))[1] is labels  # class labels stay as they are
    assert augment_batch(images, masks, kind="none", seed=(0,))[0] is images
    with pytest.raises(ValueError, match="augment must be one of none, flip, crop"):
        augment_batch(images, masks, kind="mixup", seed=(0,))
    with pytest.raises(octswap.InputError, match="augment must be one of none, flip, crop, got 'mixup'"):
        HealOptions(augment="mixup")


class Recorder(nn.Module):
    """A 1x1-conv classifier that keeps the inputs it is given (as a student: those it trains on)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.seen = nn.Conv2d(3, 4, 1), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not torch.is_grad_enabled():
            self.seen.append(x.detach().clone())
        return self.conv(x).mean((2, 3))


def test_teacher_and_student_see_the_same_views():
    torch.manual_seed(0)
    teacher, student = Recorder().eval(), Recorder()
    images, _ = blocks(8)
    data = Data.from_tensors(images, name="blocks")
    options = HealOptions(epochs=2, batch_size=4, calibrate_bn=0, workers=0, augment="crop")
    trained = heal(student, teacher, data, options=options, inplace=True).model
    assert len(trained.seen) == 4  # 2 epochs of 2 steps
    for learnt in trained.seen:
        assert any(torch.equal(taught, learnt) for taught in teacher.seen)
        assert not any(torch.equal(learnt, images[i : i + 4]) for i in (0, 4))  # views, not the images
    assert not torch.equal(trained.seen[0], trained.seen[2])  # each epoch its own views
