"""Data in: ImageFolder, flat folders and .pt files; channels, sizes, normalisation, bad input."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from octswap.data import Preprocessing, batches, make_loader, open_data
from octswap.errors import InputError


def write_png(path, value: int, size=(10, 12), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value // 2, 0)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for cls, value in (("b_class", 255), ("a_class", 0)):
        for i in range(3):
            write_png(root / cls / f"{i}.png", value)
    return root


def test_imagefolder_labels_sorted_resized_normalised(folder):
    data = open_data(folder, input_shape=(1, 8, 8), preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)))
    assert data.kind == "imagefolder" and data.labelled and data.classes == ("a_class", "b_class")
    assert len(data) == 6 and data.num_labels == 2
    x, label = data.dataset[0]
    assert label == 0 and x.shape == (1, 8, 8)
    assert torch.allclose(x, torch.full_like(x, (0.0 - 0.5) / 0.25))  # black, scaled to [0, 1], normalised
    x, label = data.dataset[5]
    assert label == 1 and torch.allclose(x, torch.full_like(x, (1.0 - 0.5) / 0.25))


def test_grayscale_images_feed_rgb_models_with_imagenet_defaults(folder):
    data = open_data(folder, input_shape=(3, 8, 8))
    x, _ = data.dataset[5]  # white
    expected = torch.tensor([(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    assert x.shape == (3, 8, 8) and torch.allclose(x[:, 0, 0], expected, atol=1e-5)


def test_resize_then_crop(tmp_path):
    write_png(tmp_path / "flat" / "a.png", 128, size=(40, 20))
    data = open_data(tmp_path / "flat", input_shape=(1, 8, 8), preprocessing=Preprocessing(resize=10, crop=(6, 4)))
    assert data.dataset[0][0].shape == (1, 6, 4)


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(5):
        write_png(tmp_path / "flat" / f"{i}.jpg", 10 * i, mode="RGB")
    data = open_data(tmp_path / "flat", input_shape=(3, 16, 16))
    assert data.kind == "images" and not data.labelled
    (x, y), = list(batches(make_loader(data, batch_size=8, workers=0)))
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [-1] * 5


def test_tensor_file(tmp_path):
    path = tmp_path / "d.pt"
    torch.save({"inputs": torch.randn(7, 2, 5, 5), "labels": torch.arange(7) % 3}, path)
    data = open_data(path, input_shape=(2, 5, 5))
    assert data.kind == "tensors" and data.labelled and data.num_labels == 3
    got = list(batches(make_loader(data, batch_size=3)))
    assert [len(x) for x, _ in got] == [3, 3, 1]
    torch.save({"inputs": torch.randn(4, 2, 5, 5)}, path)
    assert not open_data(path, input_shape=(2, 5, 5)).labelled


def test_limit_is_a_fixed_subset_across_classes(folder):
    first = open_data(folder, input_shape=(1, 4, 4), limit=4)
    again = open_data(folder, input_shape=(1, 4, 4), limit=4)
    assert len(first) == 4 and first.dataset.indices == again.dataset.indices
    with pytest.raises(InputError, match="--limit"):
        open_data(folder, input_shape=(1, 4, 4), limit=0)


@pytest.mark.parametrize(
    "make, shape, message",
    [
        (lambda p: p.mkdir(), (3, 8, 8), "holds no images"),
        (lambda p: (p / "cls").mkdir(parents=True), (3, 8, 8), "holds no images"),
        (lambda p: (write_png(p / "a.png", 1), write_png(p / "c" / "b.png", 1)), (3, 8, 8), "both images and sub-folders"),
        (lambda p: (p.mkdir(), (p / "bad.png").write_text("not an image")), (3, 8, 8), "cannot read image .*bad.png"),
        (lambda p: write_png(p / "a.png", 1), (4, 8, 8), "1 or 3 input channels"),
        (lambda p: None, (3, 8, 8), "data not found"),
        (lambda p: write_png(p / "train" / "cls" / "a.png", 1), (3, 8, 8), "holds sub-folders but no images of its own"),
        (lambda p: write_png(p.with_suffix(".png"), 1) or p.with_suffix(".png").rename(p), (3, 8, 8),
         "neither a folder of images nor a .pt file"),
    ],
)
def test_bad_folders(tmp_path, make, shape, message):
    target = tmp_path / "data"
    make(target)
    with pytest.raises(InputError, match=message):
        open_data(target, input_shape=shape)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"inputs": torch.randn(3, 1, 4, 4)}, "inputs have 1 channels, the model takes 3"),
        ({"x": torch.randn(3, 3, 4, 4)}, "expected a dict with 'inputs'"),
        ({"inputs": torch.randn(3, 3, 4)}, "Tensor\\[N, C, H, W\\]"),
        ({"inputs": torch.randn(3, 3, 4, 4), "labels": torch.tensor([0.5, 1, 2])}, "integer Tensor\\[3\\]"),
        ({"inputs": torch.randn(3, 3, 4, 4), "labels": torch.tensor([0, -1, 2])}, "class indices >= 0"),
    ],
)
def test_bad_tensor_files(tmp_path, content, message):
    path = tmp_path / "d.pt"
    torch.save(content, path)
    with pytest.raises(InputError, match=message):
        open_data(path, input_shape=(3, 4, 4))


def test_unreadable_file_and_bad_normalisation(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read data file"):
        open_data(path, input_shape=(3, 4, 4))
    with pytest.raises(InputError, match="--mean: give one value or 3"):
        Preprocessing(mean=(0.1, 0.2)).transform((3, 4, 4))
    with pytest.raises(InputError, match="--std: every value must be positive"):
        Preprocessing(std=(0.0,)).transform((1, 4, 4))


def test_image_broken_after_header_check_fails_in_worker_with_one_line(tmp_path, monkeypatch):
    write_png(tmp_path / "flat" / "a.png", 1)
    data = open_data(tmp_path / "flat", input_shape=(1, 4, 4))
    (tmp_path / "flat" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError) as caught:
        list(batches(make_loader(data, batch_size=1, workers=1)))
    message = str(caught.value)
    assert message.startswith("cannot read image") and "\n" not in message
