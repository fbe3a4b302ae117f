"""``octswap models``: the models octswap can load by name."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from octswap.cli.options import FormatOpt
from octswap.cli.output import Format, Output, TableView, emit

__all__ = ["command"]

#: torchvision's model modules -> the task shown.
_TASKS = {"segmentation": "segmentation", "detection": "detection", "video": "video",
          "optical_flow": "optical flow", "quantization": "quantized"}


def command(
    pattern: Annotated[Optional[str], typer.Argument(
        help="Glob filter, e.g. 'resnet*'; 'timm:*net*' lists timm's models.")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """List the models octswap can load by name: torchvision's, or timm's with a 'timm:' pattern."""
    import fnmatch

    from torchvision.models import get_model_builder

    from octswap.models import convertible_models
    from octswap.timm_models import PREFIX, is_timm_name, list_timm_models

    rows = []
    if pattern is not None and is_timm_name(pattern):
        rows = [{"name": name, "task": "timm"} for name in list_timm_models(pattern.removeprefix(PREFIX))]
    else:
        for name in convertible_models():
            if pattern and not fnmatch.fnmatch(name, pattern):
                continue
            module = get_model_builder(name).__module__
            task = next((label for key, label in _TASKS.items() if f".{key}" in module), "classification")
            rows.append({"name": name, "task": task})
    view = TableView(["name", "task"], [[r["name"], r["task"]] for r in rows], title=f"{len(rows)} models")
    emit(Output(rows, [view]), fmt)
