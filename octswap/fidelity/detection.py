"""Detection figures: how many of the original's detections the converted model reproduces,
mAP of the converted model against the original's detections, and with annotations the
mAP@0.5 and mAP@[.5:.95] of both models.

mAP is torchmetrics' ``MeanAveragePrecision`` (COCO's evaluation through pycocotools), an
optional extra (``pip install 'octswap[dense]'``): without it the matching figures are reported
and mAP against the original is left out (logged once); mAP against annotations needs it. Labels are compared as the model gives
them; COCO annotations' category ids are taken as labels unchanged (torchvision's
detectors number COCO's categories by their ids).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.ops import box_iou

from octswap.errors import InputError, MissingExtraError
from octswap.fidelity.result import DetectionFigures

logger = logging.getLogger(__name__)
_WARNED_EMPTY: set[float] = set()  # score thresholds at which "the original detected nothing" was said

__all__ = ["DetectionTally", "match_detections"]

MATCH_IOU = 0.5


def match_detections(original: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor],
                     *, iou: float = MATCH_IOU) -> int:
    """How many of ``converted``'s boxes match one of ``original``'s (same label, IoU >= ``iou``).

    Greedy as COCO's evaluation: converted boxes by falling score, each taking the unmatched
    original box of its label with the highest IoU. Boxes are ``[x1, y1, x2, y2]``.
    """
    boxes_o, labels_o = original["boxes"], original["labels"]
    boxes_c, labels_c = converted["boxes"], converted["labels"]
    if len(boxes_o) == 0 or len(boxes_c) == 0:
        return 0
    overlaps = box_iou(boxes_c.float(), boxes_o.float())
    overlaps[labels_c[:, None] != labels_o[None, :]] = -1.0
    free = torch.ones(len(boxes_o), dtype=torch.bool)
    matched = 0
    for i in torch.argsort(converted["scores"], descending=True).tolist():
        candidates = torch.where(free, overlaps[i], torch.full_like(overlaps[i], -1.0))
        best = int(candidates.argmax())
        if float(candidates[best]) >= iou:
            free[best] = False
            matched += 1
    return matched


def _above(detections: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    keep = detections["scores"] >= threshold
    return {k: detections[k][keep].detach().cpu() for k in ("boxes", "scores", "labels")}


def _mean_ap(*, required: bool = True) -> Any:
    """torchmetrics' ``MeanAveragePrecision``; without the ``dense`` extra ``None`` (logged once)
    unless ``required`` (mAP against annotations the user gave).

    Raises:
        MissingExtraError: ``required`` and torchmetrics or pycocotools is missing.
    """
    try:
        from torchmetrics.detection import MeanAveragePrecision

        # One process measures (rank 0 under torchrun): no sync at compute() (it would deadlock).
        return MeanAveragePrecision(iou_type="bbox", backend="pycocotools", sync_on_compute=False)
    except (ImportError, ModuleNotFoundError) as err:
        message = f"mAP needs torchmetrics and pycocotools ({err}): pip install 'octswap[dense]'"
        if required:
            raise MissingExtraError(message) from None
        if not _warned:
            _warned.append(message)
            logger.warning("%s; reporting matches, precision, recall and F1 without mAP", message)
        return None


_warned: list[str] = []  # the missing-extra warning, once per process


def _map(metric: Any, key: str) -> float | None:
    value = float(metric.compute()[key])
    return None if value < 0 else value


class DetectionTally:
    """Running figures over batches of detections (a list of dicts per batch).

    Args:
        score_threshold: Score from which a detection counts (matching; the original's
            detections used as reference boxes).
    """

    def __init__(self, *, score_threshold: float = 0.5) -> None:
        self.score_threshold = score_threshold
        self.counts = {"original": 0, "converted": 0, "matched": 0}
        self.vs_original = _mean_ap(required=False)
        self.annotated = True  # every image so far has annotations
        self.against: dict[str, Any] = {}

    def add(self, o: Sequence[Mapping[str, torch.Tensor]], c: Sequence[Mapping[str, torch.Tensor]],
            labels: Any) -> None:
        """One batch of detections; ``labels`` a list of ``{"boxes", "labels"}`` per image, or ``-1`` each.

        Raises:
            InputError: the two models returned detections for different numbers of images.
        """
        if len(o) != len(c):
            raise InputError(f"the models returned detections for {len(o)} and {len(c)} images")
        kept_o = [_above(d, self.score_threshold) for d in o]
        kept_c = [_above(d, self.score_threshold) for d in c]
        for a, b in zip(kept_o, kept_c):
            self.counts["original"] += len(a["boxes"])
            self.counts["converted"] += len(b["boxes"])
            self.counts["matched"] += match_detections(a, b)
        everything_c = [_above(d, float("-inf")) for d in c]
        if self.vs_original is not None:
            self.vs_original.update(everything_c, [{"boxes": a["boxes"], "labels": a["labels"]} for a in kept_o])
        targets = labels if isinstance(labels, (list, tuple)) and all(isinstance(t, Mapping) for t in labels) else None
        if targets is None:
            self.annotated = False
        if self.annotated and targets is not None:
            if not self.against:
                self.against = {"original": _mean_ap(), "converted": _mean_ap()}
            truth = [{"boxes": t["boxes"].float().cpu(), "labels": t["labels"].long().cpu()} for t in targets]
            self.against["original"].update([_above(d, float("-inf")) for d in o], truth)
            self.against["converted"].update(everything_c, truth)

    def figures(self) -> dict[str, Any]:
        """:class:`~octswap.fidelity.result.Fidelity` fields of all batches added."""
        n_o, n_c, matched = self.counts["original"], self.counts["converted"], self.counts["matched"]
        if not n_o and self.score_threshold not in _WARNED_EMPTY:  # once per process: healing evaluates often
            _WARNED_EMPTY.add(self.score_threshold)
            logger.warning("the original made no detection with score >= %g on these images, so agreement with it "
                           "says nothing (F1 %s); lower --score-threshold, and the model's own threshold when "
                           "converting (-m box_score_thresh=0.01 for torchvision's R-CNNs, -m score_thresh=0.01 for "
                           "RetinaNet, FCOS and SSD), or give images it detects in",
                           self.score_threshold, "1 as neither detects" if not n_c else "0")
        annotated = self.annotated and bool(self.against)
        figures = DetectionFigures(
            score_threshold=self.score_threshold,
            detections_original=n_o, detections_converted=n_c, matched=matched,
            precision=matched / n_c if n_c else None,
            recall=matched / n_o if n_o else None,
            f1=2 * matched / (n_o + n_c) if n_o + n_c else 1.0,
            map50_vs_original=_map(self.vs_original, "map_50") if n_o and self.vs_original is not None else None,
            map_vs_original=_map(self.vs_original, "map") if n_o and self.vs_original is not None else None,
            map50_original=_map(self.against["original"], "map_50") if annotated else None,
            map50_converted=_map(self.against["converted"], "map_50") if annotated else None,
            map_original=_map(self.against["original"], "map") if annotated else None,
            map_converted=_map(self.against["converted"], "map") if annotated else None,
        )  # fmt: skip
        return {"agreement": figures.f1, "kl": None, "relative_error": None, "detection": figures}
