"""Finding the parts of a model that ``torch.fx`` can trace: graph-mode *regions*.

A segmentation or detection model rarely traces as a whole: smp's ``SegmentationModel``
checks the input size with Python ``if``; torchvision's detectors loop over the images
and post-process per image. Their encoders, backbones, FPNs, decoders and heads trace.
:func:`find_regions` walks the module tree from the top: a module that traces (as the
probe called it: a list of maps, a dict...) and computes what it computed is a region;
otherwise its children are visited, and the module is tried once more with the children
that did not trace whole called as single opaque nodes (as timm's leaf modules are) --
its own code may trace around them. Regions never overlap: a region's opaque children
may hold regions of their own, which are rewritten first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from octswap.errors import ConversionError, UntraceableError, one_line
from octswap.rewrite.calls import Call, holds_conv

__all__ = ["Region", "find_regions", "relative"]

logger = logging.getLogger(__name__)


def relative(name: str, path: str) -> str:
    """``name`` (dotted, in the model) relative to the submodule at ``path`` (``""``: the model)."""
    return name[len(path) + 1 :] if path else name


def _under(name: str, path: str) -> bool:
    return not path or name == path or name.startswith(path + ".")


@dataclass(frozen=True)
class Region:
    """A submodule converted in graph mode on its own: pairs flow inside, merged at its outputs.

    ``path`` is its dotted name (``""``: the whole model); ``opaque`` the submodules
    (dotted names in the model) its graph calls as single nodes; ``stopped`` why the
    module above it was not traced (fx's first line), ``""`` for the whole model.
    """

    path: str
    module_type: str
    opaque: tuple[str, ...] = ()
    stopped: str = ""
    convs: int = field(default=0, compare=False)

    def owns(self, name: str) -> bool:
        """Whether the conv ``name`` (dotted, in the model) is rewritten by this region's graph."""
        return _under(name, self.path) and not any(_under(name, o) for o in self.opaque)

    @property
    def depth(self) -> int:
        return 0 if not self.path else self.path.count(".") + 1

    def opaque_relative(self) -> tuple[str, ...]:
        return tuple(relative(o, self.path) for o in self.opaque)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "module_type": self.module_type, "opaque": list(self.opaque),
                "stopped": self.stopped, "convs": self.convs}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Region:
        return cls(path=data["path"], module_type=data["module_type"], opaque=tuple(data.get("opaque", ())),
                   stopped=data.get("stopped", ""), convs=data.get("convs", 0))  # fmt: skip


def _why(err: ConversionError) -> str:
    return err.detail if isinstance(err, UntraceableError) else one_line(err)


class _Search:
    """One walk of the module tree (see :func:`find_regions`)."""

    def __init__(self, model: nn.Module, calls: Mapping[str, Call]) -> None:
        self.model = model
        self.calls = calls
        self.failures: dict[str, str] = {}  # dotted name -> why it is not a region

    def attempt(self, module: nn.Module, path: str, opaque: tuple[str, ...]) -> str | None:
        """None if ``module`` traces (around ``opaque``) and computes what it computed, else why not."""
        from octswap.rewrite.graph.planning import traced_with_shapes

        call = self.calls.get(path)
        if call is None:
            return "not called by the probe"
        try:
            gm = traced_with_shapes(module, call, opaque=tuple(relative(o, path) for o in opaque), compare=True)
        except ConversionError as err:
            return _why(err)
        modules = dict(gm.named_modules())
        if not any(n.op == "call_module" and isinstance(modules.get(n.target), nn.Conv2d) for n in gm.graph.nodes):
            return "its graph calls no conv"
        return None

    def visit(self, module: nn.Module, path: str) -> tuple[list[Region], bool]:
        """The regions inside ``module``, and whether ``module`` is one region as a whole."""
        why = self.attempt(module, path, ())
        if why is None:
            return [Region(path, type(module).__name__)], True
        self.failures[path] = why
        found: list[Region] = []
        partial: list[str] = []
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d) or not holds_conv(child):
                continue
            child_path = f"{path}.{name}" if path else name
            regions, whole = self.visit(child, child_path)
            found += regions
            if not whole:
                partial.append(child_path)
        if partial:
            # Its own code may trace around the children that do not.
            if self.attempt(module, path, tuple(partial)) is None:
                inside = [r for r in found if any(_under(r.path, p) for p in partial)]
                return [Region(path, type(module).__name__, tuple(partial)), *inside], False
        return found, False


def find_regions(model: nn.Module, calls: Mapping[str, Call]) -> tuple[tuple[Region, ...], dict[str, str]]:
    """The graph-mode regions of ``model``, outermost first, and why each module above them is none.

    Args:
        model: The model (not modified).
        calls: Each conv-holding submodule's recorded call (:func:`~octswap.rewrite.calls.record_calls`).

    Returns:
        The regions (each with ``stopped``: why the module above it did not trace), and
        dotted name -> reason for every module tried that is not a region.
    """
    search = _Search(model, calls)
    regions, _ = search.visit(model, "")
    result = []
    for region in regions:
        parent = region.path.rpartition(".")[0] if region.path else None
        stopped = "" if parent is None else f"{parent or type(model).__name__}: {search.failures.get(parent, '')}"
        result.append(Region(region.path, region.module_type, region.opaque, stopped))
    for region in result:
        logger.debug("graph region %s (%s)", region.path or "<model>", region.stopped)
    return tuple(sorted(result, key=lambda r: r.depth)), search.failures
