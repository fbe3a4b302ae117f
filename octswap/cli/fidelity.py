"""Real data on the command line (``--data``): opening it, and measuring fidelity on it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from octswap.cli.output import TableView, note

if TYPE_CHECKING:
    from torch import nn

    from octswap.data import Data, Preprocessing
    from octswap.fidelity import Fidelity
    from octswap.reporting import Report

__all__ = ["fidelity_view", "measure", "open_samples", "warn_untrained"]


def open_samples(path: Path, shape: tuple[int, int, int], *, model: str | None, weights: str | None,
                 prep: Preprocessing | None, limit: int | None) -> Data:
    """``--data``: a ``.pt`` file as saved, images with the model's own preprocessing unless
    ``--mean/--std/--resize/--crop`` say otherwise."""
    from octswap.data import choose_transform, open_data

    transform = None
    if not path.is_file():
        transform = choose_transform(shape, model_name=model, weights=weights, preprocessing=prep)
    return open_data(path, input_shape=shape, transform=transform, limit=limit)


def measure(original: nn.Module, converted: nn.Module, data: Data, report: Report, *, batch_size: int,
            workers: int | None) -> Fidelity:
    """Fidelity of ``converted`` against ``original`` on ``data``, with drift per report stage."""
    from octswap.data import make_loader
    from octswap.fidelity import measure_fidelity

    loader = make_loader(data, batch_size=batch_size, workers=workers)
    stages = [r.name for r in report.stages if r.name != "(outside stages)"]
    return measure_fidelity(original, converted, loader, stages=stages, data=data.describe())


def warn_untrained(weights: str | None, name: str) -> None:
    if weights is None:
        note(f"note: {name} has random weights (no --weights); the fidelity of an untrained model says little")


def fidelity_view(fidelity: Fidelity, title: str) -> TableView:
    return TableView(["metric", "value"], [[metric, value] for metric, value in fidelity.rows()], title=title)

