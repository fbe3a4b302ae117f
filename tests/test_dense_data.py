"""Masks and COCO boxes as data: they follow their images; bad layouts fail in one line (library and CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from octswap.cli import app
from octswap.data import make_loader, open_data
from octswap.errors import InputError
from tests.scenes import write_scenes

pytest.importorskip("pycocotools")

SEGMENTER = "tests.nets:size_checked_segmenter"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes"), 6, height=48, width=64, classes=3)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_masks_follow_their_images(scenes):
    data = open_data(scenes, input_shape=(3, 24, 32))
    assert data.kind == "masks" and len(data) == 6 and data.describe().endswith("(6 samples, masks)")
    image, mask = data.dataset[2]
    assert image.shape == (3, 24, 32) and mask.shape == (24, 32) and mask.dtype == torch.int64
    original = np.array(Image.open(scenes / "masks" / "scene002.png"))
    # Nearest resampling at half size: labels stay labels, and each pixel comes from the full-size mask.
    assert set(mask.unique().tolist()) <= set(np.unique(original).tolist())
    assert (mask.numpy() == original[::2, ::2]).mean() > 0.9
    images, masks = next(iter(make_loader(data, batch_size=4, workers=0)))
    assert images.shape == (4, 3, 24, 32) and masks.shape == (4, 24, 32)


def test_boxes_follow_their_images(scenes):
    data = open_data(scenes / "images", input_shape=(3, 24, 32), annotations=scenes / "instances.json")
    assert data.kind == "coco" and len(data) == 6
    content = json.loads((scenes / "instances.json").read_text())
    first = [a for a in content["annotations"] if a["image_id"] == 1]
    image, target = data.dataset[0]
    x, y, w, h = first[0]["bbox"]
    # Half the size: xywh -> xyxy, halved.
    assert target["boxes"][0].tolist() == pytest.approx([x / 2, y / 2, (x + w) / 2, (y + h) / 2], abs=0.01)
    assert target["labels"].tolist() == [a["category_id"] for a in first]
    # Not normalised: detectors take [0, 1] images.
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    images, targets = next(iter(make_loader(data, batch_size=4, workers=0)))
    assert images.shape == (4, 3, 24, 32) and isinstance(targets, list) and len(targets) == 4


def test_bad_layouts(scenes, tmp_path):
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(bad / "images" / "a.png")
    Image.new("L", (8, 8)).save(bad / "masks" / "b.png")
    unpaired = (r"images/ and masks/ must pair by file stem; 1 image has no mask of the same stem \(a\); "
                r"1 mask has no image of the same stem \(b\)$")
    with pytest.raises(InputError, match=unpaired):
        open_data(bad, input_shape=(3, 8, 8))
    (bad / "masks" / "b.png").unlink()
    Image.new("RGB", (8, 8)).save(bad / "masks" / "a.png")
    with pytest.raises(InputError, match="mask .*a.png is RGB; masks are label maps"):
        open_data(bad, input_shape=(3, 8, 8)).dataset[0]
    content = json.loads((scenes / "instances.json").read_text())
    content["images"][0]["file_name"] = "gone.png"
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(content))
    with pytest.raises(InputError, match="names 1 image missing from .*gone.png"):
        open_data(scenes / "images", input_shape=(3, 8, 8), annotations=missing)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="cannot read annotations"):
        open_data(scenes / "images", input_shape=(3, 8, 8), annotations=tmp_path / "broken.json")


# ------------------------------------------------------------------ command line
def test_report_on_masks_gives_segmentation_fields(scenes):
    # Three object classes and the background: four classes.
    result = run("report", SEGMENTER, "-m", "classes=4", "-s", "32", "-a", "0.5", "--data", scenes, "-f", "json")
    assert result.exit_code == 0, result.output
    fid = json.loads(result.stdout)["fidelity"]
    assert fid["task"] == "segmentation" and fid["samples"] == 6 and fid["classes"] == 4
    assert fid["pixel_agreement"] == fid["agreement"] and 0.0 <= fid["agreement"] <= 1.0
    assert 0.0 <= fid["miou_original"] <= 1.0 and 0.0 <= fid["miou_converted"] <= 1.0
    assert [o["name"] for o in fid["outputs"]] == [""]
    assert {s["name"] for s in fid["stages"]} == {"encoder", "decoder"}


@pytest.mark.parametrize("args, message", [
    (["-m", "classes=2"], "mask label 3 is beyond the model's 2 classes"),
    (["-m", "classes=4", "--task", "detection"], "--task detection needs a list of dicts"),
    (["-m", "classes=4", "--annotations", "instances.json"], "comes with COCO boxes (instances.json), for a detection "
                                                            "model, but tests.nets:size_checked_segmenter is a "
                                                            "segmentation model"),
])  # fmt: skip
def test_dense_input_errors_write_nothing(scenes, tmp_path, args, message):
    args = [scenes / a if a == "instances.json" else a for a in args]
    out = tmp_path / "m.pt"
    data = scenes / "images" if "--annotations" in args else scenes
    result = run("convert", SEGMENTER, "-s", "32", "-a", "0.5", "-o", out, "--data", data, *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("octswap: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output
    assert not out.exists()


def test_annotations_need_data():
    result = run("report", SEGMENTER, "-s", "32", "--annotations", "x.json")
    assert result.exit_code == 2 and "--annotations needs --data" in result.stderr


def test_category_ids_the_detector_cannot_predict_are_refused(scenes):
    result = run("report", "fasterrcnn_mobilenet_v3_large_320_fpn", "-m", "num_classes=3", "-m", "weights_backbone=None",
                 "-m", "min_size=64", "-m", "max_size=64", "-s", "64", "--data", scenes / "images",
                 "--annotations", scenes / "instances.json", "--no-layers")  # fmt: skip
    used = max(a["category_id"] for a in json.loads((scenes / "instances.json").read_text())["annotations"])
    assert used >= 3, "the scenes should use a category beyond the model's"
    assert result.exit_code == 2, result.output
    assert f"instances.json uses category ids up to {used} but" in result.stderr and "num_classes=3" in result.stderr


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.update(bbox=[a["bbox"][0], a["bbox"][1], 0, a["bbox"][3]]), "box(es) without area"),
    (lambda a: a.update(category_id=0), "uses category id 0, which"),
])  # fmt: skip
def test_boxes_without_area_and_the_background_id_are_refused(scenes, tmp_path, change, message):
    content = json.loads((scenes / "instances.json").read_text())
    change(content["annotations"][0])
    (tmp_path / "bad.json").write_text(json.dumps(content))
    result = run("report", "fasterrcnn_mobilenet_v3_large_320_fpn", "-m", "num_classes=4", "-m", "weights_backbone=None",
                 "-m", "min_size=64", "-m", "max_size=64", "-s", "64", "--data", scenes / "images",
                 "--annotations", tmp_path / "bad.json", "--no-layers")  # fmt: skip
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len([line for line in result.stderr.splitlines() if line.startswith("octswap: error:")]) == 1
    assert "Traceback" not in result.output


def test_report_on_a_torchvision_detector_with_annotations(scenes):
    result = run("report", "fasterrcnn_mobilenet_v3_large_320_fpn", "-m", "num_classes=4", "-m", "weights_backbone=None",
                 "-m", "min_size=64", "-m", "max_size=64", "-m", "box_score_thresh=0.0", "-s", "64", "-a", "0.5",
                 "--data", scenes / "images", "--annotations", scenes / "instances.json", "--score-threshold", "0.1",
                 "--no-layers", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    fid = json.loads(result.stdout)["fidelity"]  # pycocotools' own lines went to stderr
    assert fid["task"] == "detection" and fid["samples"] == 6 and fid["score_threshold"] == 0.1
    assert fid["agreement"] == fid["f1"] and fid["matched"] <= min(fid["detections_original"], fid["detections_converted"])
    for key in ("map50_vs_original", "map50_original", "map50_converted", "map_original", "map_converted"):
        assert fid[key] is None or 0.0 <= fid[key] <= 1.0, key
    assert fid["map50_original"] is not None  # annotations given
    # The backbone's maps always compare; rpn/roi_heads only where both found as many boxes (README).
    assert "backbone" in {s["name"] for s in fid["stages"]}
