"""What :func:`octswap.measure_fidelity` returns: the figures of one comparison, per task.

Every result has a headline ``agreement`` in [0, 1], whose meaning follows the task:

* ``classification``: top-1 agreement (share of samples with the same top class);
* ``segmentation``: pixel agreement (share of pixels with the same class);
* ``detection``: F1 of the converted model's detections against the original's
  (matched at IoU >= 0.5 with the same label, scores >= the threshold);
* ``features``: mean cosine similarity of the outputs (per sample, over every output).

The task's own figures sit beside it (:class:`SegmentationFigures`, :class:`DetectionFigures`);
in JSON they are flat fields of ``fidelity`` next to ``task``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["TASKS", "DetectionFigures", "Fidelity", "OutputDrift", "SegmentationFigures", "StageDrift"]

#: The tasks :func:`octswap.measure_fidelity` recognises (``--task``).
TASKS = ("classification", "segmentation", "detection", "features")

HEADLINE = {
    "classification": "top-1 agreement",
    "segmentation": "pixel agreement",
    "detection": "detection F1 vs original",
    "features": "output cosine similarity",
}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


@dataclass(frozen=True)
class StageDrift:
    """Relative L2 error of one stage's output, converted vs original."""

    name: str
    relative_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "relative_error": round(self.relative_error, 6)}


@dataclass(frozen=True)
class OutputDrift:
    """One model output (a tensor leaf of what ``forward`` returns), converted vs original.

    Attributes:
        name: Its path in the output (``""`` for a plain tensor, ``['out']``, ``[1]``...).
        relative_error: ``sqrt(sum ||c - o||^2 / sum ||o||^2)`` over all samples.
        cosine: Mean over samples of the cosine similarity of the flattened outputs.
    """

    name: str
    relative_error: float
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "relative_error": round(self.relative_error, 6), "cosine": round(self.cosine, 6)}


@dataclass(frozen=True)
class SegmentationFigures:
    """Per-pixel class logits ``N x K x H x W`` (``K = 1``: one binary logit, class = logit > 0).

    Attributes:
        pixel_agreement: Share of pixels whose class is the same in both models.
        miou_original, miou_converted: Mean intersection over union against the masks
            (torchmetrics ``MulticlassJaccardIndex``, macro: classes present in a
            prediction or a mask), ``None`` without masks.
        classes: Classes the model predicts (2 for one binary logit).
        ignore_index: Mask value left out of mIoU.
    """

    pixel_agreement: float
    miou_original: float | None = None
    miou_converted: float | None = None
    classes: int = 0
    ignore_index: int = 255

    def rows(self) -> list[tuple[str, str]]:
        rows = [("pixel agreement", _pct(self.pixel_agreement))]
        if self.miou_original is not None:
            rows += [("mIoU original", _pct(self.miou_original)), ("mIoU converted", _pct(self.miou_converted))]
        return rows


@dataclass(frozen=True)
class DetectionFigures:
    """torchvision-style detections (a list of dicts with ``boxes``, ``scores``, ``labels``).

    The original's detections with ``score >= score_threshold`` are the reference. A
    converted detection (same threshold) matches one of them when the labels are equal
    and the IoU is at least 0.5, greedily by score as in COCO's evaluation.

    Attributes:
        score_threshold: Score from which a detection counts.
        detections_original, detections_converted, matched: Counts over all images.
        precision, recall: ``matched / detections_converted`` and
            ``matched / detections_original``; ``None`` when the count is 0.
        f1: ``2 matched / (detections_original + detections_converted)``; 1 when both are 0.
        map50_vs_original, map_vs_original: mAP@0.5 and mAP@[.5:.95] of the converted
            model's detections (all scores) against the original's (torchmetrics
            ``MeanAveragePrecision``); ``None`` when the original detected nothing.
        map50_original, map50_converted, map_original, map_converted: against the
            annotations, ``None`` without them.
    """

    score_threshold: float
    detections_original: int
    detections_converted: int
    matched: int
    precision: float | None
    recall: float | None
    f1: float
    map50_vs_original: float | None = None
    map_vs_original: float | None = None
    map50_original: float | None = None
    map50_converted: float | None = None
    map_original: float | None = None
    map_converted: float | None = None

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            (f"detections original (score >= {self.score_threshold:g})", str(self.detections_original)),
            ("detections converted", str(self.detections_converted)),
            ("matched (IoU >= 0.5, same label)", str(self.matched)),
            ("precision vs original", _pct(self.precision)),
            ("recall vs original", _pct(self.recall)),
            ("mAP@0.5 vs original", _pct(self.map50_vs_original)),
            ("mAP@[.5:.95] vs original", _pct(self.map_vs_original)),
        ]
        if self.map50_original is not None:
            rows += [("mAP@0.5 original", _pct(self.map50_original)),
                     ("mAP@0.5 converted", _pct(self.map50_converted)),
                     ("mAP@[.5:.95] original", _pct(self.map_original)),
                     ("mAP@[.5:.95] converted", _pct(self.map_converted))]  # fmt: skip
        return rows


@dataclass(frozen=True)
class Fidelity:
    """Converted vs original on one data set (see the module docstring for ``agreement``).

    Attributes:
        samples: Inputs compared.
        agreement: The task's headline agreement, in [0, 1].
        kl: Mean ``KL(original || converted)`` of the class distributions in nats, per
            sample (classification) or per pixel (segmentation); ``None`` otherwise.
        relative_error: Relative L2 error of the logits (classification, segmentation) or
            of all outputs (features); ``None`` for detections.
        accuracy_original, accuracy_converted, top5_original, top5_converted:
            Classification with labels only (top-5 from 5 classes).
        stages: Relative error of each stage's output.
        data: Description of the data.
        task: One of :data:`TASKS`.
        outputs: Each output tensor compared (empty for detections, whose box counts differ).
        segmentation, detection: The task's own figures.
    """

    samples: int
    agreement: float
    kl: float | None
    relative_error: float | None
    accuracy_original: float | None = None
    accuracy_converted: float | None = None
    top5_original: float | None = None
    top5_converted: float | None = None
    stages: tuple[StageDrift, ...] = field(default=())
    data: str = ""
    task: str = "classification"
    outputs: tuple[OutputDrift, ...] = field(default=())
    segmentation: SegmentationFigures | None = None
    detection: DetectionFigures | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the common fields, then the task's own figures as flat fields."""
        out: dict[str, Any] = {
            "task": self.task,
            "data": self.data,
            "samples": self.samples,
            "agreement": _round(self.agreement),
            "accuracy_original": _round(self.accuracy_original),
            "accuracy_converted": _round(self.accuracy_converted),
            "top5_original": _round(self.top5_original),
            "top5_converted": _round(self.top5_converted),
            "kl": _round(self.kl),
            "relative_error": _round(self.relative_error),
        }
        for figures in (self.segmentation, self.detection):
            if figures is not None:
                out.update({k: _round(v) if isinstance(v, float) else v for k, v in asdict(figures).items()})
        out["outputs"] = [o.to_dict() for o in self.outputs]
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fidelity:
        """Inverse of :meth:`to_dict` (also reads dicts written before ``task`` existed)."""
        values = dict(data)
        task = values.setdefault("task", "classification")
        extra: dict[str, Any] = {}
        for key, kind in (("segmentation", SegmentationFigures), ("detection", DetectionFigures)):
            names = {f.name for f in fields(kind)}
            taken = {k: values.pop(k) for k in list(values) if k in names}
            if task == key:
                extra[key] = kind(**taken)
        stages = tuple(StageDrift(**s) for s in values.pop("stages", ()))
        outputs = tuple(OutputDrift(**o) for o in values.pop("outputs", ()))
        return cls(**values, stages=stages, outputs=outputs, **extra)

    def rows(self) -> list[tuple[str, str]]:
        """``(metric, value)`` rows for tables: headline figures, the task's, then per output and stage."""
        rows = [("task", self.task), ("samples", str(self.samples)), (HEADLINE[self.task], _pct(self.agreement))]
        if self.accuracy_original is not None:
            rows += [("top-1 accuracy original", _pct(self.accuracy_original)),
                     ("top-1 accuracy converted", _pct(self.accuracy_converted))]  # fmt: skip
        if self.top5_original is not None:
            rows += [("top-5 accuracy original", _pct(self.top5_original)),
                     ("top-5 accuracy converted", _pct(self.top5_converted))]  # fmt: skip
        if self.segmentation is not None:
            rows += self.segmentation.rows()[1:]  # pixel agreement is the headline
        if self.detection is not None:
            rows += self.detection.rows()
        per = "per pixel" if self.task == "segmentation" else "per sample"
        if self.kl is not None:
            rows.append((f"KL original->converted (nats, {per})", f"{self.kl:.4f}"))
        if self.relative_error is not None:
            rows.append(("output relative error", f"{self.relative_error:.4f}"))
        if len(self.outputs) > 1:
            rows += [(f"output {o.name}", f"rel. error {o.relative_error:.4f}, cosine {o.cosine:.4f}")
                     for o in self.outputs]  # fmt: skip
        rows += [(f"drift {s.name}", f"{s.relative_error:.4f}") for s in self.stages]
        return rows

    def summary(self) -> str:
        """One line: the headline agreement and the task's main figures."""
        text = f"{HEADLINE[self.task]} {self.agreement * 100:.2f}% on {self.samples} samples"
        if self.accuracy_original is not None and self.accuracy_converted is not None:
            text += f"; accuracy {self.accuracy_original * 100:.2f}% -> {self.accuracy_converted * 100:.2f}%"
        seg, det = self.segmentation, self.detection
        if seg is not None and seg.miou_original is not None and seg.miou_converted is not None:
            text += f"; mIoU {seg.miou_original * 100:.2f}% -> {seg.miou_converted * 100:.2f}%"
        if det is not None and det.map50_original is not None and det.map50_converted is not None:
            text += f"; mAP@0.5 {det.map50_original * 100:.2f}% -> {det.map50_converted * 100:.2f}%"
        return text
