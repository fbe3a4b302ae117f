"""Classification figures: top-1 agreement, KL, and top-1/top-5 accuracy with labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from octswap.data import UNLABELLED
from octswap.errors import InputError

__all__ = ["ClassificationTally"]


class ClassificationTally:
    """Running sums over batches of logits ``Tensor[N, K]`` (counts of samples)."""

    def __init__(self) -> None:
        self.count = 0
        self.agree = 0
        self.kl_sum = 0.0
        self.classes = 0
        self.labelled = True  # every sample so far has a label
        self.correct = {"original": 0, "converted": 0}
        self.top5 = {"original": 0, "converted": 0}

    def add(self, o: torch.Tensor, c: torch.Tensor, labels: Any) -> None:
        """One batch: logits ``o``, ``c``, ``labels`` ``Tensor[N]`` (``-1``: unknown).

        Raises:
            InputError: the labels are not class indices, or one is out of range.
        """
        self.count += len(o)
        self.classes = o.shape[1]
        self.agree += int((o.argmax(1) == c.argmax(1)).sum())
        log_o, log_c = F.log_softmax(o, dim=1), F.log_softmax(c, dim=1)
        self.kl_sum += float(F.kl_div(log_c, log_o, log_target=True, reduction="sum"))
        if not isinstance(labels, torch.Tensor) or labels.shape != (len(o),):
            raise InputError("classification needs one class label per sample; this data has "
                             f"{type(labels).__name__} labels (masks or boxes? give --task)")  # fmt: skip
        if self.labelled and bool((labels == UNLABELLED).any()):
            self.labelled = False
        if self.labelled:
            self._add_accuracy(o, c, labels.to(o.device))

    def _add_accuracy(self, o: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> None:
        if int(labels.max()) >= o.shape[1]:
            raise InputError(f"label {int(labels.max())} is out of range: the model has {o.shape[1]} outputs")
        k = min(5, o.shape[1])
        for side, logits in (("original", o), ("converted", c)):
            self.correct[side] += int((logits.argmax(1) == labels).sum())
            best = logits.topk(k, dim=1).indices
            self.top5[side] += int((best == labels[:, None]).any(1).sum())

    def figures(self) -> dict[str, Any]:
        """:class:`~octswap.fidelity.result.Fidelity` fields of all batches added."""
        n, labelled = self.count, self.labelled
        top5 = labelled and self.classes >= 5
        return {
            "agreement": self.agree / n,
            "kl": self.kl_sum / n,
            "accuracy_original": self.correct["original"] / n if labelled else None,
            "accuracy_converted": self.correct["converted"] / n if labelled else None,
            "top5_original": self.top5["original"] / n if top5 else None,
            "top5_converted": self.top5["converted"] / n if top5 else None,
        }
