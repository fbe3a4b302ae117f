"""What a candidate policy costs in accuracy, measured on the user's data without training.

For each unit and alpha, the model is converted with only that unit converted, its
BatchNorm statistics are re-estimated on the data (:func:`octswap.recalibrate_batchnorm`),
and its top-1 **agreement** with the original is measured (:func:`octswap.measure_fidelity`);
the unit's drop is the points of agreement lost (100 * (1 - agreement)). Seconds each, no
training; cached like the latency measurements. Drops measured one unit at a time add up
only approximately (units are coupled through the layers between them), so the tuner
measures the chosen policy whole as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from octswap.batchnorm import recalibrate_batchnorm
from octswap.conversion import convert
from octswap.fidelity import Fidelity, measure_fidelity
from octswap.tuning.cache import MeasurementCache
from octswap.tuning.space import SearchSpace

__all__ = ["AgreementTable"]

logger = logging.getLogger(__name__)


class AgreementTable:
    """Agreement lost per unit and alpha, measured on ``data`` after BatchNorm re-estimation.

    Args:
        model: The original (trained) model.
        space: Its units and re-planning (:class:`~octswap.tuning.space.SearchSpace`).
        data: Yields ``(inputs, labels)`` batches (labels unused; ``octswap.data`` loaders)
            or input tensors; iterated afresh for each measurement.
        cache: Where measurements are kept.
        calibrate_batches: Batches for BatchNorm re-estimation.
        eval_batches: Batches to measure agreement on (None: all of ``data``).
        progress: Called after each new measurement with the number made so far.

    Example:
        >>> table = AgreementTable(model, space, data=loader, cache=MeasurementCache(None, {}, resume=False))  # doctest: +SKIP
        >>> table.drop("layer1.0.conv1", 0.5)   # points of agreement lost                                # doctest: +SKIP
        0.8
    """

    def __init__(self, model: nn.Module, space: SearchSpace, *, data: Iterable[Any], cache: MeasurementCache,
                 calibrate_batches: int = 10, eval_batches: int | None = None,
                 progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.model = model
        self.space = space
        self.data = data
        self.cache = cache
        self.calibrate_batches = calibrate_batches
        self.eval_batches = eval_batches
        self.progress = progress
        self.measured = 0

    def drop(self, unit: str, alpha: float) -> float:
        """Points of agreement lost with only ``unit`` converted at ``alpha`` (0 at alpha 0)."""
        if alpha == 0:
            return 0.0
        key = f"agreement|{unit}|{alpha:g}"
        cached = self.cache.get(key)
        if cached is None:
            cached = self.fidelity({unit: alpha}).agreement
            self.cache.put(key, cached)
            self.measured += 1
            if self.progress is not None:
                self.progress(self.measured)
        return 100.0 * (1.0 - float(cached))

    def fidelity(self, assignment: dict[str, float], converted: nn.Module | None = None) -> Fidelity:
        """The whole policy's fidelity after BatchNorm re-estimation (``converted``: that
        policy's model, already converted; its statistics are re-estimated in place)."""
        if converted is None:
            converted, _ = convert(self.model, self.space.policy_for(assignment), input_shape=self.space.input_shape,
                                   mode=self.space.mode)  # fmt: skip
        recalibrate_batchnorm(converted, self.data, batches=self.calibrate_batches)
        return measure_fidelity(self.model, converted, self.data, stages=(), batches=self.eval_batches)
