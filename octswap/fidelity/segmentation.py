"""Segmentation figures: pixel agreement, per-pixel KL, and mIoU of both models with masks.

mIoU is torchmetrics' ``MulticlassJaccardIndex`` (macro average: the mean over the classes
present in a prediction or a mask of intersection / union), an optional extra
(``pip install 'octswap[dense]'``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from octswap.errors import InputError, MissingExtraError
from octswap.fidelity.result import SegmentationFigures

__all__ = ["SegmentationTally", "pixel_classes"]


def pixel_classes(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel classes ``[N, H, W]`` of logits ``[N, K, H, W]`` (``K = 1``: logit > 0)."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def pixel_kl(o: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Sum over pixels of ``KL(original || converted)`` in nats (Bernoulli for ``K = 1``)."""
    if o.shape[1] == 1:
        o, c = torch.cat([torch.zeros_like(o), o], 1), torch.cat([torch.zeros_like(c), c], 1)
    return F.kl_div(F.log_softmax(c, 1), F.log_softmax(o, 1), log_target=True, reduction="sum")


def _jaccard(classes: int, ignore_index: int) -> Any:
    try:
        from torchmetrics.classification import MulticlassJaccardIndex
    except ImportError:
        raise MissingExtraError("mIoU needs torchmetrics: pip install 'octswap[dense]'") from None
    # Measured in one process (rank 0 under torchrun): syncing at compute() would wait for the
    # other ranks, which are not measuring (a deadlock).
    return MulticlassJaccardIndex(num_classes=classes, ignore_index=ignore_index, average="macro",
                                  sync_on_compute=False)  # fmt: skip


class SegmentationTally:
    """Running figures over batches of per-pixel logits ``[N, K, H, W]``.

    Args:
        ignore_index: Mask value left out of mIoU and of the label check.
    """

    def __init__(self, *, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index
        self.pixels = 0
        self.agree = 0
        self.kl_sum = 0.0
        self.classes = 0
        self.masked = True  # every sample so far has a mask
        self.miou: dict[str, Any] = {}

    def add(self, o: torch.Tensor, c: torch.Tensor, labels: Any) -> None:
        """One batch: logits ``o``, ``c``; ``labels`` masks ``[N, H, W]`` or ``-1`` per sample.

        Raises:
            InputError: masks of another size than the logits, or a label beyond the classes.
        """
        if o.shape != c.shape:
            raise InputError(f"the models' logits differ in shape: {tuple(o.shape)} vs {tuple(c.shape)}")
        self.classes = max(2, o.shape[1])
        pred_o, pred_c = pixel_classes(o), pixel_classes(c)
        self.pixels += pred_o.numel()
        self.agree += int((pred_o == pred_c).sum())
        self.kl_sum += float(pixel_kl(o, c))
        masks = labels if isinstance(labels, torch.Tensor) and labels.ndim == 3 else None
        if masks is None:
            self.masked = False
        if self.masked and masks is not None:
            self._add_masks(pred_o, pred_c, masks.to(o.device))

    def _add_masks(self, pred_o: torch.Tensor, pred_c: torch.Tensor, masks: torch.Tensor) -> None:
        if masks.shape != pred_o.shape:
            raise InputError(f"masks are {tuple(masks.shape[1:])} but the model's logits are {tuple(pred_o.shape[1:])} "
                             "(height x width); resize the masks with their images")  # fmt: skip
        valid = masks[masks != self.ignore_index]
        if valid.numel() and (int(valid.max()) >= self.classes or int(valid.min()) < 0):
            bad = int(valid.max()) if int(valid.max()) >= self.classes else int(valid.min())
            raise InputError(f"mask label {bad} is beyond the model's {self.classes} classes "
                             f"(labels 0..{self.classes - 1}, {self.ignore_index} ignored)")  # fmt: skip
        if not self.miou:
            self.miou = {side: _jaccard(self.classes, self.ignore_index) for side in ("original", "converted")}
        self.miou["original"].update(pred_o.cpu(), masks.cpu())
        self.miou["converted"].update(pred_c.cpu(), masks.cpu())

    def figures(self) -> dict[str, Any]:
        """:class:`~octswap.fidelity.result.Fidelity` fields of all batches added."""
        masked = self.masked and bool(self.miou)
        figures = SegmentationFigures(
            pixel_agreement=self.agree / self.pixels,
            miou_original=float(self.miou["original"].compute()) if masked else None,
            miou_converted=float(self.miou["converted"].compute()) if masked else None,
            classes=self.classes,
            ignore_index=self.ignore_index,
        )
        return {"agreement": figures.pixel_agreement, "kl": self.kl_sum / self.pixels, "segmentation": figures}
