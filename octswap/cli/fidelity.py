"""Real data on the command line (``--data``): opening it, and measuring fidelity on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octswap.cli.output import TableView, note
from octswap.errors import InputError

if TYPE_CHECKING:
    from torch import nn

    from octswap.data import Data, Preprocessing
    from octswap.fidelity import Fidelity
    from octswap.reporting import Report

__all__ = ["DenseOptions", "fidelity_view", "measure", "open_samples", "warn_untrained"]


@dataclass(frozen=True)
class DenseOptions:
    """``--task``, ``--annotations``, ``--ignore-index``, ``--score-threshold``."""

    task: str | None = None
    annotations: Path | None = None
    ignore_index: int = 255
    score_threshold: float = 0.5

    @classmethod
    def of(cls, task: Any, annotations: Path | None, ignore_index: int, score_threshold: float,
           data: Path | None) -> DenseOptions:
        """From the options as typer gives them; ``--task``/``--annotations`` need ``--data``."""
        if data is None and (task is not None or annotations is not None):
            raise InputError(f"{'--task' if task is not None else '--annotations'} needs --data")
        return cls(getattr(task, "value", task), annotations, ignore_index, score_threshold)


def open_samples(path: Path, shape: tuple[int, int, int], *, model: str | None, weights: str | None,
                 prep: Preprocessing | None, limit: int | None, original: nn.Module,
                 dense: DenseOptions | None = None) -> tuple[Data, DenseOptions]:
    """``--data`` for ``original`` (:func:`octswap.model_data.open_for_model`): returns the data
    and the options with the task resolved (``--task``, else guessed from its output)."""
    from dataclasses import replace

    from octswap.model_data import open_for_model

    dense = dense or DenseOptions()
    data, task = open_for_model(path, model=original, input_shape=shape, model_name=model, weights=weights,
                                preprocessing=prep, limit=limit, annotations=dense.annotations, task=dense.task)
    return data, replace(dense, task=task)


def measure(original: nn.Module, converted: nn.Module, data: Data, report: Report, *, batch_size: int,
            workers: int | None, dense: DenseOptions | None = None) -> Fidelity:
    """Fidelity of ``converted`` against ``original`` on ``data``, with drift per report stage."""
    from octswap.data import make_loader
    from octswap.fidelity import measure_fidelity

    dense = dense or DenseOptions()
    loader = make_loader(data, batch_size=batch_size, workers=workers)
    stages = [r.name for r in report.stages if r.name != "(outside stages)"]
    return measure_fidelity(original, converted, loader, stages=stages, data=data.describe(), task=dense.task,
                            ignore_index=dense.ignore_index, score_threshold=dense.score_threshold)


def warn_untrained(weights: str | None, name: str) -> None:
    if weights is None:
        note(f"note: {name} has random weights (no --weights); the fidelity of an untrained model says little")


def fidelity_view(fidelity: Fidelity, title: str) -> TableView:
    return TableView(["metric", "value"], [[metric, value] for metric, value in fidelity.rows()], title=title)
