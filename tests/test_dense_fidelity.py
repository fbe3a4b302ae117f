"""Fidelity of segmentation, detection and other outputs: figures against hand-computed ones."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from octswap.errors import InputError
from octswap.fidelity import Fidelity, guess_task, measure_fidelity
from octswap.fidelity.detection import match_detections

pytest.importorskip("torchmetrics")


class Table(nn.Module):
    """A "model" that looks its output up: sample ``i`` is the input filled with ``i``."""

    def __init__(self, outputs: list) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: torch.Tensor):
        rows = [self.outputs[int(v)] for v in x[:, 0, 0, 0]]
        if isinstance(rows[0], torch.Tensor):
            return torch.stack(rows)
        return rows


def inputs(n: int, size: int = 4) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, size, size).contiguous()


# ------------------------------------------------------------------ tasks
@pytest.mark.parametrize("output, task", [
    (torch.zeros(2, 10), "classification"),
    (torch.zeros(2, 5, 32, 32), "segmentation"),
    (torch.zeros(2, 1, 8, 8), "segmentation"),                 # a quarter of the input: binary logits
    (OrderedDict(out=torch.zeros(2, 21, 32, 32), aux=torch.zeros(2, 21, 32, 32)), "segmentation"),
    ((torch.zeros(2, 5, 32, 32), torch.zeros(2, 3)), "segmentation"),
    (torch.zeros(2, 512, 1, 1), "features"),                   # a backbone's last map
    ([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}], "detection"),
    ([{"level0": torch.zeros(3)}], "features"),
])  # fmt: skip
def test_guess_task(output, task):
    assert guess_task(output, (3, 32, 32)) == task


# ------------------------------------------------------------------ segmentation
def miou_by_hand(preds: np.ndarray, masks: np.ndarray, classes: int, ignore: int) -> float:
    """Mean over classes present in a prediction or a mask (ignored pixels left out) of I/U."""
    keep = masks != ignore
    ious = []
    for k in range(classes):
        p, m = (preds == k) & keep, (masks == k) & keep
        union = (p | m).sum()
        if union:
            ious.append((p & m).sum() / union)
    return float(np.mean(ious))


def test_segmentation_figures_equal_hand_computed():
    gen = torch.Generator().manual_seed(0)
    o = torch.randn(3, 4, 5, 6, generator=gen)
    c = o + 0.8 * torch.randn(3, 4, 5, 6, generator=gen)
    masks = torch.randint(0, 4, (3, 5, 6), generator=gen)
    masks[0, 0, :] = 255
    masks[1, :, 0] = 3
    loader = [(inputs(2), masks[:2]), (inputs(3)[2:], masks[2:])]
    fid = measure_fidelity(Table(list(o)), Table(list(c)), loader, stages=())
    assert fid.task == "segmentation" and fid.samples == 3
    po, pc = o.argmax(1).numpy(), c.argmax(1).numpy()
    assert fid.agreement == pytest.approx((po == pc).mean(), abs=1e-9)
    assert fid.segmentation.pixel_agreement == fid.agreement
    # KL per pixel, written out: sum_k p_o log(p_o / p_c), averaged over the 90 pixels.
    p_o, p_c = torch.softmax(o.double(), 1), torch.softmax(c.double(), 1)
    assert fid.kl == pytest.approx(float((p_o * (p_o / p_c).log()).sum(1).mean()), rel=1e-6)
    m = masks.numpy()
    assert fid.segmentation.miou_original == pytest.approx(miou_by_hand(po, m, 4, 255), abs=1e-6)
    assert fid.segmentation.miou_converted == pytest.approx(miou_by_hand(pc, m, 4, 255), abs=1e-6)
    expected_error = math.sqrt(float((c - o).double().pow(2).sum() / o.double().pow(2).sum()))
    assert fid.relative_error == pytest.approx(expected_error, rel=1e-9)
    # JSON: task and the flat segmentation fields, back again.
    data = fid.to_dict()
    assert data["task"] == "segmentation" and data["pixel_agreement"] == pytest.approx(fid.agreement, abs=1e-6)
    assert Fidelity.from_dict(data).segmentation.miou_original == pytest.approx(fid.segmentation.miou_original, abs=1e-6)


def test_binary_logits_and_unlabelled_images():
    o = torch.tensor([[[[1.0, -1.0], [2.0, -3.0]]]])  # [1, 1, 2, 2]: classes 1 0 / 1 0
    c = torch.tensor([[[[0.5, 0.5], [-2.0, -3.0]]]])  # classes 1 1 / 0 0
    fid = measure_fidelity(Table(list(o)), Table(list(c)), [inputs(1)], stages=())
    assert fid.agreement == pytest.approx(0.5)
    assert fid.segmentation.classes == 2 and fid.segmentation.miou_original is None  # no masks
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    kl = sum(sig(a) * math.log(sig(a) / sig(b)) + (1 - sig(a)) * math.log((1 - sig(a)) / (1 - sig(b)))
             for a, b in [(1, .5), (-1, .5), (2, -2), (-3, -3)]) / 4  # fmt: skip
    assert fid.kl == pytest.approx(kl, rel=1e-6)


def test_mask_label_beyond_the_classes():
    o = torch.zeros(1, 3, 2, 2)
    with pytest.raises(InputError, match="mask label 3 is beyond the model's 3 classes"):
        measure_fidelity(Table(list(o)), Table(list(o)), [(inputs(1), torch.tensor([[[0, 3], [1, 255]]]))], stages=())
    with pytest.raises(InputError, match="masks are \\(3, 3\\) but the model's logits are \\(2, 2\\)"):
        measure_fidelity(Table(list(o)), Table(list(o)), [(inputs(1), torch.zeros(1, 3, 3, dtype=torch.long))],
                         stages=())  # fmt: skip


# ------------------------------------------------------------------ detection
def dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}  # fmt: skip


def test_matching_by_hand():
    original = dets([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [1, 1, 2])
    # IoU of [0,0,10,10] with [0,0,10,12] = 100/120 >= .5; with [5,0,15,10] = 50/150 < .5.
    converted = dets([[0, 0, 10, 12], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.6, 0.9, 0.5, 0.4],
                     [1, 1, 2, 2])  # fmt: skip
    # [0,0,10,12] label 1 -> original 0; [5,0,15,10] too little overlap; [20..30] label 2 has no label-2
    # original there; [0,0,10,10] label 2 -> original 2.
    assert match_detections(original, converted) == 2
    # Two converted boxes on one original: the higher score takes it, the other is left.
    twice = dets([[0, 0, 10, 10], [0, 0, 10, 11]], [0.3, 0.8], [1, 1])
    assert match_detections(dets([[0, 0, 10, 10]], [0.9], [1]), twice) == 1
    assert match_detections(dets([], [], []), twice) == 0


def test_detection_figures_by_hand():
    original = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.6], [1, 2]),
                dets([[5, 5, 15, 15], [0, 0, 4, 4]], [0.95, 0.2], [3, 1])]  # the 0.2 box is below the threshold
    converted = [dets([[0, 0, 10, 10], [40, 40, 50, 50]], [0.8, 0.7], [1, 2]),
                 dets([[5, 5, 15, 15]], [0.9], [3])]
    annotations = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])},
                   {"boxes": torch.tensor([[5.0, 5, 15, 15]]), "labels": torch.tensor([3])}]
    fid = measure_fidelity(Table(original), Table(converted), [(inputs(2), annotations)], stages=())
    d = fid.detection
    assert fid.task == "detection" and fid.samples == 2 and fid.relative_error is None and not fid.outputs
    assert (d.detections_original, d.detections_converted, d.matched) == (3, 3, 2)
    assert d.precision == pytest.approx(2 / 3) and d.recall == pytest.approx(2 / 3)
    assert fid.agreement == d.f1 == pytest.approx(2 * 2 / 6)
    # The original finds both annotated objects with its best-scored boxes: AP 1 for each class.
    assert d.map50_original == pytest.approx(1.0) and d.map50_converted == pytest.approx(1.0)
    data = fid.to_dict()
    assert data["task"] == "detection" and data["matched"] == 2 and data["map50_original"] == pytest.approx(1.0)


def test_identical_detections_and_none_at_all(caplog, monkeypatch):
    monkeypatch.setattr("octswap.fidelity.detection._WARNED_EMPTY", set())
    same = [dets([[0, 0, 10, 10]], [0.9], [1])]
    fid = measure_fidelity(Table(same), Table(same), [inputs(1)], stages=())
    assert "made no detection" not in caplog.text
    assert fid.agreement == 1.0 and fid.detection.map50_vs_original == pytest.approx(1.0)
    assert fid.detection.map50_original is None  # no annotations
    empty = [dets([], [], [])]
    fid = measure_fidelity(Table(empty), Table(empty), [inputs(1)], stages=())
    assert fid.agreement == 1.0 and fid.detection.precision is None and fid.detection.map50_vs_original is None
    assert "the original made no detection with score >= 0.5" in caplog.text  # an F1 of 1 that says nothing


def test_detection_without_torchmetrics(monkeypatch):
    """Label-free figures need no extra; mAP against annotations the user gave does."""
    import sys

    from octswap.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "torchmetrics.detection", None)  # import raises ImportError
    original = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 2])]
    converted = [dets([[0, 0, 10, 10]], [0.9], [1])]
    fid = measure_fidelity(Table(original), Table(converted), [inputs(1)], stages=())
    assert fid.detection.matched == 1 and fid.agreement == pytest.approx(2 * 1 / 3)
    assert fid.detection.map50_vs_original is None and fid.detection.map_vs_original is None
    annotations = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    with pytest.raises(MissingExtraError, match="mAP needs torchmetrics"):
        measure_fidelity(Table(original), Table(converted), [(inputs(1), annotations)], stages=())


# ------------------------------------------------------------------ features and tasks given
def test_features_compared_output_by_output():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 5, generator=gen)
    a2, b2 = a + 0.1 * torch.randn(2, 3, 4, generator=gen), -b

    class Two(nn.Module):
        def __init__(self, first, second):
            super().__init__()
            self.first, self.second = first, second

        def forward(self, x):
            return {"maps": self.first[: len(x)], "codes": [self.second[: len(x)]]}

    fid = measure_fidelity(Two(a, b), Two(a2, b2), [inputs(2)], stages=())
    assert fid.task == "features"
    by_name = {o.name: o for o in fid.outputs}
    assert set(by_name) == {"['maps']", "['codes'][0]"}
    cos = torch.nn.functional.cosine_similarity(a.reshape(2, -1).double(), a2.reshape(2, -1).double(), dim=1)
    assert by_name["['maps']"].cosine == pytest.approx(float(cos.mean()), rel=1e-9)
    assert by_name["['codes'][0]"].cosine == pytest.approx(-1.0) and by_name["['codes'][0]"].relative_error == 2.0
    assert fid.agreement == pytest.approx((float(cos.sum()) - 2) / 4)


def test_a_task_that_does_not_fit_the_output():
    same = [dets([[0, 0, 10, 10]], [0.9], [1])]
    with pytest.raises(InputError, match="--task classification needs Tensor\\[N, classes\\]; the original model "
                                         "returns list of 1 dict"):
        measure_fidelity(Table(same), Table(same), [inputs(1)], stages=(), task="classification")
    with pytest.raises(InputError, match="--task must be one of"):
        measure_fidelity(Table(same), Table(same), [inputs(1)], stages=(), task="boxes")
