"""Fidelity: what a converted model computes compared with its original, on real data.

Both models run in eval mode without gradients over the same batches, and the figures
follow what the model is for (:mod:`octswap.fidelity.tasks` guesses it from the output):

* **classification** (``Tensor[N, K]``): top-1 **agreement**, accuracy of both (top-1, and
  top-5 where ``K >= 5``) with labels, **KL** ``KL(softmax(original) || softmax(converted))``
  per sample in nats;
* **segmentation** (per-pixel logits ``N x K x H x W``): **pixel agreement**, per-pixel KL,
  and with masks the **mIoU** of both models;
* **detection** (lists of dicts with ``boxes``/``scores``/``labels``): the original's
  detections reproduced (precision, recall, F1 at IoU >= 0.5 with the same label),
  **mAP of the converted model against the original's detections**, and with annotations
  **mAP@0.5 and mAP@[.5:.95]** of both;
* **features** (anything else): each output compared.

Every task but detection also reports each output tensor's **relative error**
``sqrt(sum ||c - o||^2 / sum ||o||^2)`` and **cosine similarity**, and every task the
**per-stage drift**: that relative error at the output of each top-level stage (``layer1``
... of a ResNet, ``backbone`` of a detector), so a user sees where the outputs start to
differ and which stage a policy rule should spare.

Random inputs prove nothing for a trained model: measure on samples of the data it was
trained for (:mod:`octswap.data`).
"""

from octswap.fidelity.measuring import measure_fidelity
from octswap.fidelity.result import (
    TASKS,
    DetectionFigures,
    Fidelity,
    OutputDrift,
    SegmentationFigures,
    StageDrift,
)
from octswap.fidelity.tasks import guess_task

__all__ = [
    "TASKS",
    "DetectionFigures",
    "Fidelity",
    "OutputDrift",
    "SegmentationFigures",
    "StageDrift",
    "guess_task",
    "measure_fidelity",
]
