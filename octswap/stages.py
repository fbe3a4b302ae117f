"""Stages: the top-level parts of a model that reports and drift measurements name."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = ["stage_names"]


def stage_names(model: nn.Module, flops_by_module: Mapping[str, int] | None = None) -> list[str]:
    """Top-level children of ``model``; a plain container holding most of the FLOPs is opened
    one level (``features`` of VGG/MobileNet), so the stage rows say something.

    ``flops_by_module`` is :attr:`Cost.by_module` (``""`` holds the total); without it
    containers stay closed.
    """
    flops = flops_by_module or {}
    total = flops.get("", 0)
    names: list[str] = []
    for name, child in model.named_children():
        share = flops.get(name, 0) / total if total else 0
        if isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and share > 0.5:
            names.extend(f"{name}.{sub}" for sub, _ in child.named_children())
        else:
            names.append(name)
    return names
